"""The pattern table of a mask data set: pass-1 counts summed, fitted, turned into lookups.

The reduce step of mask aggregation (`polyhead.aggregation.masks`): per-image
``(codes, counts)`` tables are summed (or kept per image for per-image priors), decoded
into one row of labels per pattern (one column per rating slot, the gold slot last), fitted
by Dawid-Skene or the majority vote, and turned into the `LookupTable`s pass 2 reads.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from polyhead.aggregation.dawid_skene import EPS, confusion_from_triplets, dawid_skene_sparse
from polyhead.aggregation.inputs import MaskSet
from polyhead.aggregation.passes import ImageCounts, LookupTable
from polyhead.aggregation.patterns import CountAccumulator, PatternCodec
from polyhead.aggregation.voting import vote_posteriors


def pattern_table(
    codec: PatternCodec, counted: list[ImageCounts], kept_idx: list[int], per_image_prior: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, list[slice]]:
    """``(codes, counts, groups, slices)``: the label patterns to fit, their pixel counts,
    the image of each row (per-image priors only) and the rows each image looks up."""
    if not per_image_prior:
        total = CountAccumulator(codec)
        for i in kept_idx:
            total.add(counted[i].codes, counted[i].counts)
        codes, counts = total.result()
        return codes, counts, None, [slice(None)] * len(kept_idx)
    sizes = [counted[i].codes.size for i in kept_idx]
    ends = np.cumsum(sizes)
    slices = [slice(int(e - n), int(e)) for e, n in zip(ends, sizes, strict=True)]
    codes = np.concatenate([counted[i].codes for i in kept_idx])
    counts = np.concatenate([counted[i].counts for i in kept_idx])
    return codes, counts, np.repeat(np.arange(len(kept_idx)), sizes), slices


@dataclass
class Fit:
    """Posteriors ``[P, K]``, hard labels ``[P]`` and parameters fitted on a pattern table."""

    posteriors: np.ndarray
    hard: np.ndarray
    confusion: np.ndarray
    priors: np.ndarray
    trace: list[float]
    n_iter: int = 0
    converged: bool = True


def _triplets(labels: np.ndarray, slot_annotators: np.ndarray) -> tuple[np.ndarray, ...]:
    rows, slots = np.nonzero(labels >= 0)
    return rows, slot_annotators[slots], labels[rows, slots]


def fit_patterns(
    labels: np.ndarray,
    counts: np.ndarray,
    groups: np.ndarray | None,
    masks: MaskSet,
    n_classes: int,
    method: str,
    options: dict[str, Any],
) -> Fit:
    """Dawid-Skene (or the majority vote) on the decoded pattern table ``labels [P, slots]``."""
    gold = labels[:, -1] if masks.has_gold else None
    ratings = labels[:, :-1] if masks.has_gold else labels
    rows, anns, labs = _triplets(ratings, np.asarray(masks.slot_annotators, np.int64))
    a, k, p = len(masks.annotators), n_classes, labels.shape[0]
    if method == "majority":
        post, hard, _ = vote_posteriors(rows, labs, p, k, gold)
        conf = confusion_from_triplets(
            rows, anns, labs, post, n_annotators=a, counts=counts, smoothing=options["smoothing"]
        )
        priors = (post * counts[:, None]).sum(axis=0) / max(float(counts.sum()), EPS)
        return Fit(post, hard, conf, priors, [])
    res = dawid_skene_sparse(
        rows,
        anns,
        labs,
        k,
        n_rows=p,
        n_annotators=a,
        counts=counts,
        groups=groups,
        gold=gold,
        **options,
    )
    return Fit(
        res.posteriors,
        res.labels,
        res.confusion,
        res.priors,
        res.log_likelihood,
        res.n_iter,
        res.converged,
    )


def lookup_tables(
    fit: Fit, codes: np.ndarray, slices: list[slice], codec: PatternCodec, soft_dtype: str
) -> list[LookupTable]:
    """One table for the data set (shared by every image), or one per image."""
    n_codes = int(codec.n_codes) if codec.packed else None
    if all(sl == slice(None) for sl in slices):
        table = LookupTable.build(codes, fit.posteriors, fit.hard, soft_dtype, n_codes)
        return [table] * len(slices)
    return [
        LookupTable.build(codes[sl], fit.posteriors[sl], fit.hard[sl], soft_dtype, None)
        for sl in slices
    ]
