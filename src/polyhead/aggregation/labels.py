"""Aggregate classification labels from an ``item,annotator,label`` CSV.

Labels are integer class ids in ``[0, K)``; an empty cell or ``ignore_index``
means "no label". Output folder: ``labels.csv`` (``item,label,p_0..p_{K-1}``, items
in first-appearance order), ``confusion.json``, ``confusion_matrices.png`` and
``loglik.png`` (Dawid-Skene only), staged and moved into place only on success.
Items whose every row is "no label" raise a `DataError` (``empty_items="error"``)
or are written with ``label`` = ``ignore_index`` and all-zero probabilities
(``empty_items="keep"``, with a warning). Majority-vote ties go to the lowest class id.
"""

from __future__ import annotations

import os
import time
import warnings
from pathlib import Path
from typing import Any, Literal

import numpy as np

from polyhead.aggregation.dawid_skene import (
    Model,
    confusion_from_posteriors,
    dawid_skene_sparse,
    majority_vote_labels,
    vote_fractions_labels,
)
from polyhead.aggregation.inputs import LABEL_COLUMNS, iter_csv
from polyhead.aggregation.outputs import AggregationResult, write_report
from polyhead.errors import ConfigError, DataError
from polyhead.io import Staging, write_csv


def read_label_csv(
    csv_path: str | os.PathLike[str], n_classes: int, ignore_index: int = 255
) -> tuple[list[str], list[str], np.ndarray, np.ndarray, np.ndarray]:
    """Items, annotators and (item, annotator, label) index triplets of a label CSV."""
    csv_path = Path(csv_path)
    items: dict[str, int] = {}
    annotators: dict[str, int] = {}
    seen: dict[tuple[int, int], int] = {}
    rows: list[int] = []
    anns: list[int] = []
    labs: list[int] = []
    for line, cells in iter_csv(csv_path, LABEL_COLUMNS, LABEL_COLUMNS[:2]):
        item = items.setdefault(cells["item"], len(items))
        ann = annotators.setdefault(cells["annotator"], len(annotators))
        raw = cells.get("label", "")
        where = (
            f"{csv_path}, line {line} (item {cells['item']!r}, annotator {cells['annotator']!r})"
        )
        if (item, ann) in seen:
            raise DataError(f"{where}: duplicate of line {seen[item, ann]}")
        seen[item, ann] = line
        if raw == "":
            continue
        try:
            value = float(raw)
        except ValueError:
            value = float("nan")
        if not np.isfinite(value) or value != int(value):
            raise DataError(f"{where}: label {raw!r} is not an integer class id")
        label = int(value)
        if label == ignore_index:
            continue
        if not 0 <= label < n_classes:
            raise DataError(
                f"{where}: label {label} outside [0, {n_classes}) and not ignore_index={ignore_index}"
            )
        rows.append(item)
        anns.append(ann)
        labs.append(label)
    if not items:
        raise DataError(f"{csv_path}: no rows")
    if len(annotators) < 2:
        raise DataError(
            f"{csv_path}: only one annotator ({next(iter(annotators))!r}); aggregation needs "
            "labels from at least two annotators"
        )
    return (
        list(items),
        list(annotators),
        np.asarray(rows, np.int64),
        np.asarray(anns, np.int64),
        np.asarray(labs, np.int64),
    )


def _fit_labels(
    method: str,
    rows: np.ndarray,
    anns: np.ndarray,
    labs: np.ndarray,
    shape: tuple[int, int, int],
    labelled: np.ndarray,
    options: dict[str, Any],
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, tuple[list[float], int, bool]]:
    """``(posteriors, hard labels, confusion, priors, (log-likelihood trace, iterations,
    converged))`` of Dawid-Skene or the majority vote over ``(row, annotator, label)``
    triplets of ``shape = (items, annotators, classes)``."""
    n, a, k = shape
    if method == "dawid_skene":
        res = dawid_skene_sparse(rows, anns, labs, k, n_rows=n, n_annotators=a, **options)
        fit = (res.log_likelihood, res.n_iter, res.converged)
        return res.posteriors, res.labels, res.confusion, res.priors, fit
    dense = np.full((n, a), -1, np.int64)
    dense[rows, anns] = labs
    post = vote_fractions_labels(dense, k)
    hard = majority_vote_labels(dense, k)
    conf = confusion_from_posteriors(dense, post, k, smoothing=options["smoothing"])
    return post, hard, conf, post[labelled].mean(axis=0), ([], 0, True)


def aggregate_labels(
    csv_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    n_classes: int,
    *,
    method: Literal["dawid_skene", "majority"] = "dawid_skene",
    ignore_index: int = 255,
    max_iter: int = 100,
    tol: float = 1e-6,
    smoothing: float = 0.01,
    model: Model = "full",
    empty_items: Literal["error", "keep"] = "error",
) -> AggregationResult:
    """Aggregate an ``item,annotator,label`` CSV into ``out_dir/labels.csv`` + ``confusion.json``."""
    start = time.perf_counter()
    k = int(n_classes)
    if k < 2:
        raise ConfigError(f"n_classes must be >= 2, got {n_classes}")
    if method not in ("dawid_skene", "majority"):
        raise ConfigError(f"method must be 'dawid_skene' or 'majority', got {method!r}")
    if empty_items not in ("error", "keep"):
        raise ConfigError(f"empty_items must be 'error' or 'keep', got {empty_items!r}")
    csv_path, out_dir = Path(csv_path), Path(out_dir).resolve()
    items, annotators, rows, anns, labs = read_label_csv(csv_path, k, ignore_index)
    n, a = len(items), len(annotators)
    labelled = np.bincount(rows, minlength=n) > 0
    if not labelled.all():
        empty = [items[i] for i in np.flatnonzero(~labelled)[:5]]
        msg = f"{csv_path}: {int((~labelled).sum())} item(s) without any label, e.g. {empty}"
        if empty_items == "error":
            raise DataError(msg + "; pass empty_items='keep' to write them unlabelled")
        warnings.warn(
            msg + f"; written with label {ignore_index} and zero probabilities", stacklevel=2
        )

    options = dict(model=model, max_iter=max_iter, tol=tol, smoothing=smoothing)
    post, hard, conf, priors, (trace, n_iter, converged) = _fit_labels(
        method, rows, anns, labs, (n, a, k), labelled, options
    )
    hard = np.where(hard < 0, ignore_index, hard)

    with Staging(out_dir) as stage:
        header = ["item", "label", *(f"p_{c}" for c in range(k))]
        write_csv(
            stage.path("labels.csv"),
            header,
            (
                [it, int(h), *(f"{p:.8g}" for p in ps)]
                for it, h, ps in zip(items, hard, post, strict=True)
            ),
        )
        extra = {
            "ignore_index": int(ignore_index),
            "smoothing": float(smoothing),
            "tol": float(tol),
            "max_iter": int(max_iter),
            "model": model,
            "tie_rule": "argmax, ties to the lowest class id",
            "n_items": n,
            "n_unlabelled_items": int((~labelled).sum()),
            "labels_per_annotator": dict(
                zip(annotators, (int(x) for x in np.bincount(anns, minlength=a)), strict=True)
            ),
        }
        write_report(stage, method, annotators, conf, priors, trace, n_iter, converged, extra)
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
        n_patterns=n,
        n_labelled=int(labelled.sum()),
        n_unlabelled=int((~labelled).sum()),
        confusion_json=out_dir / "confusion.json",
        outputs=[out_dir / "labels.csv"],
        seconds=time.perf_counter() - start,
    )
