"""Aggregate annotator masks into soft and hard masks, streaming over images.

Steps of `aggregate_masks`:

1. read and check the CSV and every file header (`polyhead.aggregation.inputs`);
2. pass 1: read each image's masks strip by strip (about 1 M pixels per strip),
   check class ids, encode each pixel's label tuple as a pattern code and count
   patterns (`polyhead.aggregation.patterns`); an error here names the CSV line;
3. fit Dawid-Skene (or majority vote) on the pattern counts of the whole data set;
4. pass 2: re-read the masks and write each pixel's posterior (a table lookup) into
   ``soft/<name>.tif`` (K float32 bands) and its argmax into ``hard/<name>.tif``
   (uint8), with the georeferencing of the image's first mask; then
   ``confusion.json``, ``train.csv``, ``confusion_matrices.png``, ``loglik.png``.

All outputs are staged and moved into ``out_dir`` only when every step succeeded.
Peak memory: one strip of all annotators' masks and its outputs, plus the pattern
table (at most ``(K + 1) ** A`` rows, 343 for K=6 and 3 annotators; see
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
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np

from polyhead.aggregation.dawid_skene import (
    EPS,
    Model,
    confusion_from_posteriors,
    dawid_skene,
    majority_vote_labels,
    vote_fractions_labels,
)
from polyhead.aggregation.inputs import ImageEntry, MaskReader, read_mask_csv
from polyhead.aggregation.outputs import AggregationResult, relative_to, write_report
from polyhead.aggregation.patterns import CountAccumulator, PatternCodec, merge_counts
from polyhead.data import raster_io
from polyhead.errors import ConfigError, DataError
from polyhead.io import AtomicGeoTiff, Staging, geotiff_profile, write_csv

HARD_IGNORE = 255
DEFAULT_SMOOTHING = 0.01
T = TypeVar("T")


def _track(items: list[T], description: str, enabled: bool) -> Iterator[T]:
    if not enabled:
        yield from items
        return
    from rich.console import Console
    from rich.progress import track

    yield from track(items, description=description, console=Console(stderr=True))


def _strips(entry: ImageEntry) -> Iterable[tuple[int, int]]:
    rows = raster_io.strip_rows(entry.height, entry.width)
    for off in range(0, entry.height, rows):
        yield off, min(rows, entry.height - off)


def _check_options(n_classes: int, method: str, ignore_index: int, empty_images: str) -> None:
    if not 2 <= int(n_classes) <= 255:
        raise ConfigError(f"n_classes must be in [2, 255] for uint8 hard masks, got {n_classes}")
    if method not in ("dawid_skene", "majority"):
        raise ConfigError(f"method must be 'dawid_skene' or 'majority', got {method!r}")
    if 0 <= int(ignore_index) < int(n_classes):
        raise ConfigError(f"ignore_index={ignore_index} is a class id (n_classes={n_classes})")
    if empty_images not in ("error", "skip"):
        raise ConfigError(f"empty_images must be 'error' or 'skip', got {empty_images!r}")


@dataclass
class _Counts:
    """Pass-1 result: labelled/unlabelled pixels per image and the pattern counts."""

    labelled: list[int] = field(default_factory=list)
    unlabelled: list[int] = field(default_factory=list)
    total: CountAccumulator | None = None
    """Counts over the whole data set (shared prior)."""
    per_image: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)
    """Per-image ``(codes, counts)``, only kept for per-image priors."""


def _count_patterns(
    entries: list[ImageEntry],
    reader: MaskReader,
    codec: PatternCodec,
    progress: bool,
    per_image: bool,
) -> _Counts:
    """Pass 1: count labelled pattern codes, over the data set or per image."""
    out = _Counts(total=None if per_image else CountAccumulator(codec))
    none = codec.all_missing
    for entry in _track(entries, "aggregate: counting label patterns", progress):
        parts = [
            codec.count(codec.encode(reader.stack(entry, off, h))) for off, h in _strips(entry)
        ]
        codes, counts = merge_counts(parts) if len(parts) > 1 else parts[0]
        keep = codes != none
        out.unlabelled.append(int(counts[~keep].sum()))
        out.labelled.append(int(counts[keep].sum()))
        if out.total is not None:
            out.total.add(codes[keep], counts[keep])
        else:
            out.per_image.append((codes[keep], counts[keep]))
        reader.cache.close()
    return out


def _fit(
    labels: np.ndarray,
    counts: np.ndarray,
    groups: np.ndarray | None,
    n_classes: int,
    method: str,
    options: dict[str, Any],
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, Any]:
    """Posteriors, hard labels, confusion, priors and the DS result (None for majority)."""
    if method == "majority":
        post = vote_fractions_labels(labels, n_classes)
        hard = majority_vote_labels(labels, n_classes)
        conf = confusion_from_posteriors(
            labels, post, n_classes, counts=counts, smoothing=options["smoothing"]
        )
        priors = (post * counts[:, None]).sum(axis=0) / max(float(counts.sum()), EPS)
        return post, hard, conf, priors, None
    res = dawid_skene(labels, n_classes, counts=counts, groups=groups, **options)
    return res.posteriors, res.labels, res.confusion, res.priors, res


def _write_image(
    entry: ImageEntry,
    reader: MaskReader,
    codec: PatternCodec,
    table: tuple[np.ndarray, np.ndarray, np.ndarray],
    soft_path: Path,
    hard_path: Path,
) -> None:
    """Pass 2 for one image: posterior lookup per pixel, written strip by strip."""
    codes_tab, soft_tab, hard_tab = table  # sorted codes, [K, P] float32, [P] uint8
    k = soft_tab.shape[0]
    crs, transform = reader.georef(entry)
    h, w = entry.height, entry.width
    soft_profile = geotiff_profile(h, w, k, "float32", crs, transform)
    hard_profile = geotiff_profile(h, w, 1, "uint8", crs, transform)
    hard_profile["nodata"] = HARD_IGNORE
    for profile in (soft_profile, hard_profile):
        # posteriors take few distinct values: no predictor + fast deflate is 8x quicker
        # than geotiff_profile's predictor=3 and gives 5x smaller files
        profile.update(predictor=1, zlevel=1)
    none = codec.all_missing
    with (
        AtomicGeoTiff(soft_path, soft_profile) as soft_out,
        AtomicGeoTiff(hard_path, hard_profile) as hard_out,
    ):
        for off, rows in _strips(entry):
            codes = codec.encode(reader.stack(entry, off, rows))
            idx = np.minimum(np.searchsorted(codes_tab, codes), max(codes_tab.size - 1, 0))
            found = codes_tab[idx] == codes if codes_tab.size else np.zeros(codes.size, bool)
            if not np.all(found | (codes == none)):
                raise DataError(
                    f"{entry.rows[0].where(reader.csv_path)}: masks of image {entry.key!r} "
                    "changed while aggregating (label pattern unseen in pass 1)"
                )
            soft = soft_tab[:, idx]
            soft[:, ~found] = 0.0
            hard = np.where(found, hard_tab[idx], np.uint8(HARD_IGNORE)).astype(np.uint8)
            soft_out.write(soft.reshape(k, rows, w), off)
            hard_out.write(hard.reshape(1, rows, w), off)
        soft_out.commit()
        hard_out.commit()
    reader.cache.close()


def _labelled_images(
    csv_path: Path, entries: list, counted: Any, empty_images: str
) -> tuple[list[int], list[str]]:
    """Indexes of the images with a labelled pixel, and the keys of those skipped (an image
    without one is an error unless ``empty_images="skip"``)."""
    kept_idx, skipped = [], []
    for i, entry in enumerate(entries):
        if counted.labelled[i] > 0:
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


def _pattern_table(
    counted: Any, kept_idx: list[int], per_image_prior: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, list[slice]]:
    """``(codes, counts, groups, slices)``: the label patterns to fit, their pixel counts,
    the image of each row (per-image priors only) and the rows each image looks up."""
    if not per_image_prior:
        assert counted.total is not None
        codes, counts = counted.total.result()
        return codes, counts, None, [slice(None)] * len(kept_idx)
    tables = [counted.per_image[i] for i in kept_idx]
    sizes = [c.size for c, _ in tables]
    ends = np.cumsum(sizes)
    slices = [slice(int(e - n), int(e)) for e, n in zip(ends, sizes, strict=True)]
    codes = np.concatenate([c for c, _ in tables])
    counts = np.concatenate([n for _, n in tables])
    return codes, counts, np.repeat(np.arange(len(kept_idx)), sizes), slices


def _report_extra(
    settings: Mapping[str, Any],
    model: str,
    codes: np.ndarray,
    counts: np.ndarray,
    counted: Any,
    annotators: Sequence[str],
    per_annotator: np.ndarray,
) -> dict[str, Any]:
    """The run's settings and pixel counts for ``confusion.json``."""
    return {
        "ignore_index": int(settings["ignore_index"]),
        "smoothing": float(settings["smoothing"]),
        "tol": float(settings["tol"]),
        "max_iter": int(settings["max_iter"]),
        "model": model,
        "tie_rule": "hard mask: argmax, ties to the lowest class id",
        "n_patterns": int(codes.size),
        "n_labelled_pixels": int(counts.sum()),
        "n_unlabelled_pixels": int(sum(counted.unlabelled)),
        "labelled_pixels_per_annotator": dict(
            zip(annotators, (int(x) for x in per_annotator), strict=True)
        ),
    }


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
) -> AggregationResult:
    """Aggregate the masks listed in an ``image,annotator,mask`` CSV into ``out_dir``.

    Writes ``soft/<name>.tif``, ``hard/<name>.tif``, ``train.csv``
    (``image,mask,soft_mask``, paths relative to ``out_dir``), ``confusion.json``,
    ``confusion_matrices.png`` and ``loglik.png``; ``<name>`` is the stem of the
    ``image`` value. ``images`` maps ``image`` values to the imagery named in
    ``train.csv`` (a dict or an ``image,path`` CSV; default: the value itself,
    relative to the input CSV). See the module docstring for the details; every
    input problem raises a `DataError` naming the CSV line, and leaves no output.
    """
    start = time.perf_counter()
    _check_options(n_classes, method, ignore_index, empty_images)
    if per_image_prior and method != "dawid_skene":
        raise ConfigError("per_image_prior needs method='dawid_skene'")
    csv_path, out_dir = Path(csv_path), Path(out_dir).resolve()
    k = int(n_classes)
    entries, annotators = read_mask_csv(csv_path, images)
    codec = PatternCodec(k, len(annotators))
    reader = MaskReader(csv_path, len(annotators), k, int(ignore_index))
    counted = _count_patterns(entries, reader, codec, progress, per_image_prior)

    kept_idx, skipped = _labelled_images(csv_path, entries, counted, empty_images)
    kept = [entries[i] for i in kept_idx]
    codes, counts, groups, slices = _pattern_table(counted, kept_idx, per_image_prior)
    labels = codec.decode(codes)
    options = dict(max_iter=max_iter, tol=tol, smoothing=smoothing, model=model)
    post, hard, conf, priors, res = _fit(
        labels, counts.astype(np.float64), groups, k, method, options
    )
    soft_tab = np.ascontiguousarray(post.T.astype(np.float32))
    hard_tab = np.where(hard < 0, HARD_IGNORE, hard).astype(np.uint8)

    trace = res.log_likelihood if res is not None else []
    n_iter, converged = (res.n_iter, res.converged) if res is not None else (0, True)
    per_annotator = ((labels >= 0) * counts[:, None]).sum(axis=0)
    with Staging(out_dir) as stage:
        train_rows, soft_paths, hard_paths = [], [], []
        for g, entry in enumerate(_track(kept, "aggregate: writing masks", progress)):
            sl = slices[g]
            table = (codes[sl], soft_tab[:, sl], hard_tab[sl])
            soft_rel, hard_rel = f"soft/{entry.name}.tif", f"hard/{entry.name}.tif"
            _write_image(entry, reader, codec, table, stage.path(soft_rel), stage.path(hard_rel))
            train_rows.append([relative_to(entry.image_path, out_dir), hard_rel, soft_rel])
            soft_paths.append(out_dir / soft_rel)
            hard_paths.append(out_dir / hard_rel)
        write_csv(stage.path("train.csv"), ("image", "mask", "soft_mask"), train_rows)
        settings = dict(ignore_index=ignore_index, smoothing=smoothing, tol=tol, max_iter=max_iter)
        extra = _report_extra(settings, model, codes, counts, counted, annotators, per_annotator)
        extra.update(images=[e.key for e in kept], skipped_images=skipped)
        priors_out = priors
        if per_image_prior:
            extra["priors_per_image"] = {
                e.key: p for e, p in zip(kept, np.round(priors, 8).tolist(), strict=True)
            }
            weight = np.array([counted.labelled[i] for i in kept_idx], dtype=np.float64)
            priors_global = (priors * weight[:, None]).sum(0)
            priors_out = priors_global / priors_global.sum()
        write_report(stage, method, annotators, conf, priors_out, trace, n_iter, converged, extra)
        stage.commit()
    return AggregationResult(
        out_dir=out_dir,
        method=method,
        annotators=annotators,
        confusion=conf,
        priors=priors,
        log_likelihood=list(trace),
        n_iter=n_iter,
        converged=converged,
        n_patterns=int(codes.size),
        n_labelled=int(counts.sum()),
        n_unlabelled=int(sum(counted.unlabelled)),
        confusion_json=out_dir / "confusion.json",
        outputs=soft_paths,
        hard_masks=hard_paths,
        train_csv=out_dir / "train.csv",
        skipped=skipped,
        seconds=time.perf_counter() - start,
    )
