"""Aggregate classification labels from an ``item,annotator,label`` CSV.

Labels are integer class ids in ``[0, K)``; an empty cell or ``ignore_index``
means "no label". An annotator may rate an item several times (several rows): every
rating counts, as in Dawid & Skene (1979). ``gold`` (an ``item,label`` CSV or a mapping)
fixes the class of some items; ``priors`` adds pseudo-counts to the confusion matrices
(`polyhead.aggregation.priors`). Output folder: ``labels.csv`` (``item,label,p_0..p_{K-1}``, items
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
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np

from polyhead.aggregation.dawid_skene import Model, confusion_from_triplets, dawid_skene_sparse
from polyhead.aggregation.inputs import LABEL_COLUMNS, iter_csv
from polyhead.aggregation.outputs import AggregationResult, write_report
from polyhead.aggregation.priors import load_annotator_priors
from polyhead.aggregation.voting import vote_posteriors
from polyhead.errors import ConfigError, DataError
from polyhead.io import Staging, write_csv


def read_label_csv(
    csv_path: str | os.PathLike[str], n_classes: int, ignore_index: int = 255
) -> tuple[list[str], list[str], np.ndarray, np.ndarray, np.ndarray]:
    """Items, annotators and (item, annotator, label) index triplets of a label CSV."""
    csv_path = Path(csv_path)
    items: dict[str, int] = {}
    annotators: dict[str, int] = {}
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
    pairs = np.asarray(rows, np.int64) * max(len(annotators), 1) + np.asarray(anns, np.int64)
    if len(annotators) < 2 and np.unique(pairs).size == pairs.size:
        raise DataError(
            f"{csv_path}: only one annotator ({next(iter(annotators))!r}); aggregation needs "
            "labels from at least two annotators (or repeated ratings)"
        )
    return (
        list(items),
        list(annotators),
        np.asarray(rows, np.int64),
        np.asarray(anns, np.int64),
        np.asarray(labs, np.int64),
    )


def _class_id(raw: str, n_classes: int, where: str) -> int:
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not np.isfinite(value) or value != int(value) or not 0 <= value < n_classes:
        raise DataError(f"{where}: label {raw!r} is not a class id in [0, {n_classes})")
    return int(value)


def read_gold_labels(
    gold: str | os.PathLike[str] | Mapping[str, int], items: list[str], n_classes: int
) -> np.ndarray:
    """Known class per item (``-1``: unknown) from an ``item,label`` CSV or a mapping."""
    index = {it: i for i, it in enumerate(items)}
    out = np.full(len(items), -1, np.int64)
    if isinstance(gold, Mapping):
        entries = [(f"gold item {k!r}", str(k), str(v)) for k, v in gold.items()]
    else:
        path = Path(gold)
        entries = [
            (f"{path}, line {line}", cells["item"], cells["label"])
            for line, cells in iter_csv(path, ("item", "label"))
        ]
    for where, item, raw in entries:
        if item not in index:
            raise DataError(f"{where}: item {item!r} is not in the annotations CSV")
        label = _class_id(raw, n_classes, where)
        if out[index[item]] not in (-1, label):
            raise DataError(f"{where}: item {item!r} has two different gold labels")
        out[index[item]] = label
    return out


def _fit_labels(
    method: str,
    triplets: tuple[np.ndarray, np.ndarray, np.ndarray],
    shape: tuple[int, int, int],
    gold: np.ndarray | None,
    options: dict[str, Any],
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, tuple[list[float], int, bool]]:
    """``(posteriors, hard labels, confusion, priors, (log-likelihood trace, iterations,
    converged))`` of Dawid-Skene or the majority vote over ``(row, annotator, label)``
    triplets of ``shape = (items, annotators, classes)``."""
    rows, anns, labs = triplets
    n, a, k = shape
    if method == "dawid_skene":
        res = dawid_skene_sparse(
            rows, anns, labs, k, n_rows=n, n_annotators=a, gold=gold, **options
        )
        fit = (res.log_likelihood, res.n_iter, res.converged)
        return res.posteriors, res.labels, res.confusion, res.priors, fit
    post, hard, total = vote_posteriors(rows, labs, n, k, gold)
    conf = confusion_from_triplets(
        rows, anns, labs, post, n_annotators=a, smoothing=options["smoothing"]
    )
    return post, hard, conf, post[total > 0].mean(axis=0), ([], 0, True)


def _check_empty(
    csv_path: Path, items: list[str], labelled: np.ndarray, empty_items: str, ignore_index: int
) -> None:
    """Items without any label: an error, or a warning with ``empty_items="keep"``."""
    if labelled.all():
        return
    empty = [items[i] for i in np.flatnonzero(~labelled)[:5]]
    msg = f"{csv_path}: {int((~labelled).sum())} item(s) without any label, e.g. {empty}"
    if empty_items == "error":
        raise DataError(msg + "; pass empty_items='keep' to write them unlabelled")
    warnings.warn(msg + f"; written with label {ignore_index} and zero probabilities", stacklevel=3)


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
    gold: str | os.PathLike[str] | Mapping[str, int] | None = None,
    priors: str | os.PathLike[str] | Mapping[str, Any] | None = None,
    class_names: list[str] | None = None,
) -> AggregationResult:
    """Aggregate an ``item,annotator,label`` CSV into ``out_dir/labels.csv`` + ``confusion.json``.

    ``gold``: ``item,label`` CSV (or mapping) of known classes; ``priors``: annotator priors
    file (or mapping, see `polyhead.aggregation.priors`); ``class_names`` label the figure.
    """
    start = time.perf_counter()
    k = int(n_classes)
    if k < 2:
        raise ConfigError(f"n_classes must be >= 2, got {n_classes}")
    if method not in ("dawid_skene", "majority"):
        raise ConfigError(f"method must be 'dawid_skene' or 'majority', got {method!r}")
    if empty_items not in ("error", "keep"):
        raise ConfigError(f"empty_items must be 'error' or 'keep', got {empty_items!r}")
    csv_path, out_dir = Path(csv_path), Path(out_dir).resolve()
    if priors is not None and method != "dawid_skene":
        raise ConfigError("annotator priors need method='dawid_skene'")
    items, annotators, rows, anns, labs = read_label_csv(csv_path, k, ignore_index)
    n, a = len(items), len(annotators)
    gold_ids = None if gold is None else read_gold_labels(gold, items, k)
    labelled = np.bincount(rows, minlength=n) > 0
    if gold_ids is not None:
        labelled |= gold_ids >= 0
    _check_empty(csv_path, items, labelled, empty_items, ignore_index)
    options: dict[str, Any] = dict(model=model, max_iter=max_iter, tol=tol, smoothing=smoothing)
    if priors is not None:
        options["confusion_prior"] = load_annotator_priors(priors, annotators, k)
    post, hard, conf, class_prior, (trace, n_iter, converged) = _fit_labels(
        method, (rows, anns, labs), (n, a, k), gold_ids, options
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
            **dict(ignore_index=int(ignore_index), smoothing=float(smoothing), tol=float(tol)),
            **dict(max_iter=int(max_iter), model=model),
            "tie_rule": "argmax, ties to the lowest class id",
            "n_items": n,
            "n_unlabelled_items": int((~labelled).sum()),
            "n_gold_items": 0 if gold_ids is None else int((gold_ids >= 0).sum()),
            "labels_per_annotator": dict(
                zip(annotators, (int(x) for x in np.bincount(anns, minlength=a)), strict=True)
            ),
        }
        report = (method, annotators, conf, class_prior, trace, n_iter, converged, extra)
        write_report(stage, *report, class_names=class_names)
        stage.commit()
    return AggregationResult(
        out_dir=out_dir,
        method=method,
        annotators=annotators,
        confusion=conf,
        priors=class_prior,
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
