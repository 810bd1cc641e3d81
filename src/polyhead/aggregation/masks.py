"""Aggregate annotator masks into soft and hard masks, streaming over images.

Steps of `aggregate_masks` (a map-reduce over images, `polyhead.aggregation.passes`):

1. read and check the CSV and every file header (`polyhead.aggregation.inputs`);
2. pass 1 (map): read each image's masks strip by strip (about 1 M pixels per strip),
   check class ids, encode each pixel's label tuple as a pattern code and count
   patterns (`polyhead.aggregation.patterns`); an error here names the CSV line;
3. reduce: sum the tables, fit Dawid-Skene (or majority vote) on the pattern counts;
4. pass 2 (map): each pixel's posterior (a table lookup) into ``soft/<name>.tif`` (K
   float32 bands, or uint8 = probability x 255) and its argmax into ``hard/<name>.tif``
   (uint8), with the georeferencing of the image's first mask; then ``confusion.json``,
   ``train.csv``, ``confusion_matrices.png``, ``loglik.png``.

The maps run in threads here or as Dask tasks (``scheduler=``, `polyhead.aggregation.runner`);
both give identical outputs. Locally, pass 1 keeps each image's pixel codes (2 bytes a
pixel while there are at most 65536 patterns) of the images that fit in ``cache_mb``, so
that pass 2 need not decode their masks again.

Repeated ratings (an annotator with several masks of one image) each count as one rating;
a gold mask (``gold_mask`` column or ``gold=``) fixes the posterior of its labelled pixels
and ``priors=`` adds pseudo-counts to the confusion matrices.

All outputs are staged and moved into ``out_dir`` only when every step succeeded.
Peak memory: one strip of all annotators' masks and its outputs per worker thread, the
cached codes, plus the pattern table (at most ``(K + 1) ** A`` rows, 343 for K=6 and 3 annotators; see
`polyhead.aggregation.patterns` for many annotators). ``per_image_prior=True`` keeps
one such table per image (images x distinct patterns per image).

Annotators may label different subsets of images: an annotator without a mask for
an image counts as "no label" on all its pixels, like ``ignore_index`` pixels. An
image labelled by a single annotator is fine as long as the CSV as a whole has two.

Pixels nobody labelled (every annotator has ``ignore_index`` there, or did not
label the image) get hard mask 255 and all-zero soft mask. An image with no
labelled pixel at all raises a `DataError` (``empty_images="error"``, default) or
is left out of every output with a warning (``empty_images="skip"``).

Majority vote: soft mask = vote fractions; hard mask ties go to the lowest class
id; the confusion matrices in ``confusion.json`` are each annotator's labels
against the soft vote.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from functools import partial
from pathlib import Path
from typing import Any, Literal

import numpy as np

from polyhead.aggregation.dawid_skene import Model
from polyhead.aggregation.inputs import ImageEntry, MaskSet, read_mask_csv
from polyhead.aggregation.outputs import AggregationResult, relative_to, write_report
from polyhead.aggregation.passes import (
    HARD_IGNORE,
    SOFT_DTYPES,
    ImageCounts,
    LookupTable,
    PassContext,
    count_image,
    write_image,
)
from polyhead.aggregation.patterns import PatternCodec
from polyhead.aggregation.priors import load_annotator_priors
from polyhead.aggregation.runner import LocalRunner, make_runner
from polyhead.aggregation.table import Fit, fit_patterns, lookup_tables, pattern_table
from polyhead.errors import ConfigError, DataError
from polyhead.io import Staging, write_csv

DEFAULT_SMOOTHING = 0.01
__all__ = ["HARD_IGNORE", "aggregate_masks"]


def _check_options(
    n_classes: int, method: str, ignore_index: int, empty_images: str, soft_dtype: str
) -> None:
    if not 2 <= int(n_classes) <= 255:
        raise ConfigError(f"n_classes must be in [2, 255] for uint8 hard masks, got {n_classes}")
    if method not in ("dawid_skene", "majority"):
        raise ConfigError(f"method must be 'dawid_skene' or 'majority', got {method!r}")
    if 0 <= int(ignore_index) < int(n_classes):
        raise ConfigError(f"ignore_index={ignore_index} is a class id (n_classes={n_classes})")
    if empty_images not in ("error", "skip"):
        raise ConfigError(f"empty_images must be 'error' or 'skip', got {empty_images!r}")
    if soft_dtype not in SOFT_DTYPES:
        raise ConfigError(f"soft_dtype must be one of {SOFT_DTYPES}, got {soft_dtype!r}")


def _labelled_images(
    csv_path: Path, entries: list[ImageEntry], counted: list[ImageCounts], empty_images: str
) -> tuple[list[int], list[str]]:
    """Indexes of the images with a labelled pixel, and the keys of those skipped (an image
    without one is an error unless ``empty_images="skip"``)."""
    kept_idx, skipped = [], []
    for i, entry in enumerate(entries):
        if counted[i].labelled > 0:
            kept_idx.append(i)
            continue
        lines = ", ".join(str(r.line) for r in entry.rows)
        msg = f"{csv_path}, line(s) {lines}: image {entry.key!r} has no labelled pixel"
        if empty_images == "error":
            raise DataError(
                msg + " (every mask is ignore_index); pass empty_images='skip' to drop it"
            )
        warnings.warn(msg + "; skipped", stacklevel=3)
        skipped.append(entry.key)
    if not kept_idx:
        raise DataError(f"{csv_path}: no image has a labelled pixel")
    return kept_idx, skipped


def _report_extra(
    settings: Mapping[str, Any],
    codes: np.ndarray,
    counts: np.ndarray,
    counted: list[ImageCounts],
    annotators: Sequence[str],
    per_annotator: np.ndarray,
) -> dict[str, Any]:
    """The run's settings and pixel counts for ``confusion.json``."""
    return {
        **settings,
        "tie_rule": "hard mask: argmax, ties to the lowest class id",
        "n_patterns": int(codes.size),
        "n_labelled_pixels": int(counts.sum()),
        "n_unlabelled_pixels": int(sum(c.unlabelled for c in counted)),
        "labelled_pixels_per_annotator": dict(
            zip(annotators, (int(x) for x in per_annotator), strict=True)
        ),
    }


def _keep_codes(
    entries: list[ImageEntry], codec: PatternCodec, cache_mb: float, runner: Any
) -> list[bool]:
    """Which images' pixel codes pass 1 keeps for pass 2: local runs only, images in CSV
    order while their codes fit in ``cache_mb`` (the others are read again in pass 2)."""
    if not isinstance(runner, LocalRunner) or not codec.packed:
        return [False] * len(entries)
    per_pixel = 2 if codec.n_codes <= 1 << 16 else 4 if codec.n_codes <= 1 << 31 else 8
    used = np.cumsum([e.height * e.width * per_pixel for e in entries])
    return (used <= cache_mb * 2**20).tolist()


def _write_outputs(
    stage: Staging,
    runner: Any,
    ctx: PassContext,
    codec: PatternCodec,
    kept: list[ImageEntry],
    tables: list[LookupTable],
    cached: list[np.ndarray | None],
    georefs: list[tuple[Any, Any]],
    soft_dtype: str,
) -> list[tuple[str, str]]:
    """Pass 2 over the kept images; returns each image's (soft, hard) path in ``out_dir``."""
    rel = [(f"soft/{e.name}.tif", f"hard/{e.name}.tif") for e in kept]
    shared = all(t is tables[0] for t in tables)  # one table for the data set
    jobs = [
        (entry, None if shared else table, (stage.path(s), stage.path(h)), codes, georef)
        for entry, table, (s, h), codes, georef in zip(
            kept, tables, rel, cached, georefs, strict=True
        )
    ]
    for path in ("soft", "hard"):
        stage.path(path).mkdir(parents=True, exist_ok=True)
    runner.map(
        partial(_pass2, ctx, codec, soft_dtype),
        jobs,
        "aggregate: writing masks",
        table=tables[0] if shared else None,
    )
    return rel


def _write_all(
    out_dir: Path,
    runner: Any,
    how: tuple[PassContext, PatternCodec, str],
    kept: list[ImageEntry],
    per_image: tuple[list[LookupTable], list[np.ndarray | None], list[tuple[Any, Any]]],
    report: tuple,
    class_names: Sequence[str] | None,
) -> list[tuple[str, str]]:
    """Pass 2, the report and ``train.csv``, staged and moved into ``out_dir`` together."""
    ctx, codec, soft_dtype = how
    with Staging(out_dir) as stage, ThreadPoolExecutor(1) as background:
        # the report (matplotlib: import and drawing) is Python-bound, pass 2 mostly
        # GDAL and numpy: drawing it meanwhile hides most of its second
        drawn = background.submit(write_report, stage, *report, class_names=class_names)
        try:
            rel = _write_outputs(stage, runner, ctx, codec, kept, *per_image, soft_dtype)
        except BaseException:
            drawn.cancel()
            wait([drawn])  # the report must not write into a folder being removed
            raise
        drawn.result()
        train_rows = [
            [relative_to(e.image_path, out_dir), h, s] for e, (s, h) in zip(kept, rel, strict=True)
        ]
        write_csv(stage.path("train.csv"), ("image", "mask", "soft_mask"), train_rows)
        stage.commit()
    return rel


def _pass2(
    ctx: PassContext, codec: PatternCodec, soft_dtype: str, job: tuple, table: Any = None
) -> None:
    entry, own_table, paths, codes, georef = job
    write_image(ctx, codec, entry, own_table or table, paths, soft_dtype, codes, georef)


def _pass1(ctx: PassContext, codec: PatternCodec, job: tuple[ImageEntry, bool]) -> ImageCounts:
    return count_image(ctx, codec, *job)


def aggregate_masks(
    csv_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    n_classes: int,
    *,
    method: Literal["dawid_skene", "majority"] = "dawid_skene",
    ignore_index: int = 255,
    max_iter: int = 100,
    tol: float = 1e-6,
    smoothing: float = DEFAULT_SMOOTHING,
    model: Model = "full",
    per_image_prior: bool = False,
    images: str | os.PathLike[str] | Mapping[str, str] | None = None,
    empty_images: Literal["error", "skip"] = "error",
    progress: bool = True,
    gold: str | os.PathLike[str] | Mapping[str, str] | None = None,
    priors: str | os.PathLike[str] | Mapping[str, Any] | None = None,
    class_names: Sequence[str] | None = None,
    soft_dtype: Literal["float32", "uint8"] = "float32",
    scheduler: str | None = None,
    workers: int | None = None,
    cache_mb: float = 128.0,
) -> AggregationResult:
    """Aggregate the masks listed in an ``image,annotator,mask`` CSV into ``out_dir``.

    Writes ``soft/<name>.tif``, ``hard/<name>.tif``, ``train.csv``
    (``image,mask,soft_mask``, paths relative to ``out_dir``), ``confusion.json``,
    ``confusion_matrices.png`` and ``loglik.png``; ``<name>`` is the stem of the
    ``image`` value. ``images`` maps ``image`` values to the imagery named in
    ``train.csv`` (a dict or an ``image,path`` CSV; default: the value itself,
    relative to the input CSV). ``gold``: ``image,gold_mask`` CSV or mapping (or a
    ``gold_mask`` column); ``priors``: annotator priors (`polyhead.aggregation.priors`).
    ``scheduler``: Dask scheduler address or ``local:N``; ``workers``: threads of a local
    run. See the module docstring; every input problem raises a `DataError` naming the CSV
    line, and leaves no output.
    """
    start = time.perf_counter()
    _check_options(n_classes, method, ignore_index, empty_images, soft_dtype)
    if (per_image_prior or priors is not None) and method != "dawid_skene":
        raise ConfigError("per_image_prior and priors need method='dawid_skene'")
    csv_path, out_dir, k = Path(csv_path), Path(out_dir).resolve(), int(n_classes)
    masks = read_mask_csv(csv_path, images, gold)
    options: dict[str, Any] = dict(max_iter=max_iter, tol=tol, smoothing=smoothing, model=model)
    if priors is not None:
        options["confusion_prior"] = load_annotator_priors(priors, masks.annotators, k)
    codec = PatternCodec(k, masks.n_slots)
    if scheduler and not codec.packed:
        raise ConfigError(
            f"{masks.n_slots} rating slots with {k} classes: too many label patterns for "
            "a distributed run (codes must fit in 62 bits); run without scheduler"
        )
    ctx = PassContext(csv_path, masks.n_slots, k, int(ignore_index))
    runner = make_runner(scheduler, 1 if not codec.packed else workers, progress)
    try:
        keep = _keep_codes(masks.entries, codec, cache_mb, runner)
        jobs = list(zip(masks.entries, keep, strict=True))
        counted = runner.map(
            partial(_pass1, ctx, codec), jobs, "aggregate: counting label patterns"
        )
        kept_idx, skipped = _labelled_images(csv_path, masks.entries, counted, empty_images)
        kept = [masks.entries[i] for i in kept_idx]
        codes, counts, groups, slices = pattern_table(codec, counted, kept_idx, per_image_prior)
        labels = codec.decode(codes)
        fit = fit_patterns(labels, counts.astype(np.float64), groups, masks, k, method, options)
        tables = lookup_tables(fit, codes, slices, codec, soft_dtype)
        cached = [counted[i].pixel_codes for i in kept_idx]
        georefs = [counted[i].georef for i in kept_idx]
        for i in kept_idx:
            counted[i].pixel_codes = None  # pass 2 owns them now
        settings = dict(ignore_index=int(ignore_index), smoothing=float(smoothing), tol=float(tol))
        settings.update(max_iter=int(max_iter), model=model, soft_dtype=soft_dtype)
        extra = _summary(
            masks, fit, labels, codes, counts, counted, kept, kept_idx, skipped, settings
        )
        priors_out = extra.pop("_priors")
        report = (method, masks.annotators, fit.confusion, priors_out, fit.trace, fit.n_iter)
        report += (fit.converged, extra)
        rel = _write_all(
            out_dir, runner, (ctx, codec, soft_dtype), kept, (tables, cached, georefs),
            report, class_names,
        )  # fmt: skip
    finally:
        runner.close()
    return AggregationResult(
        out_dir=out_dir,
        method=method,
        annotators=masks.annotators,
        confusion=fit.confusion,
        priors=fit.priors,
        log_likelihood=list(fit.trace),
        n_iter=fit.n_iter,
        converged=fit.converged,
        n_patterns=int(codes.size),
        n_labelled=int(counts.sum()),
        n_unlabelled=int(sum(c.unlabelled for c in counted)),
        confusion_json=out_dir / "confusion.json",
        outputs=[out_dir / s for s, _ in rel],
        hard_masks=[out_dir / h for _, h in rel],
        train_csv=out_dir / "train.csv",
        skipped=skipped,
        seconds=time.perf_counter() - start,
    )


def _summary(
    masks: MaskSet,
    fit: Fit,
    labels: np.ndarray,
    codes: np.ndarray,
    counts: np.ndarray,
    counted: list[ImageCounts],
    kept: list[ImageEntry],
    kept_idx: list[int],
    skipped: list[str],
    settings: dict[str, Any],
) -> dict[str, Any]:
    """``confusion.json`` extras; ``_priors`` is the data set's class prior to report."""
    slots = np.asarray(masks.slot_annotators, np.int64)
    per_slot = ((labels[:, : slots.size] >= 0) * counts[:, None]).sum(axis=0)
    per_annotator = np.bincount(slots, weights=per_slot, minlength=len(masks.annotators))
    extra = _report_extra(settings, codes, counts, counted, masks.annotators, per_annotator)
    extra.update(
        images=[e.key for e in kept],
        skipped_images=skipped,
        n_rating_slots=int(slots.size),
        n_gold_pixels=int(counts[labels[:, -1] >= 0].sum()) if masks.has_gold else 0,
    )
    extra["_priors"] = fit.priors
    if fit.priors.ndim == 2:
        extra["priors_per_image"] = {
            e.key: p for e, p in zip(kept, np.round(fit.priors, 8).tolist(), strict=True)
        }
        weight = np.array([counted[i].labelled for i in kept_idx], dtype=np.float64)
        total = (fit.priors * weight[:, None]).sum(0)
        extra["_priors"] = total / total.sum()
    return extra
