"""Majority vote on a label matrix, and the label-matrix checks shared with Dawid-Skene."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from polyhead.errors import ConfigError, DataError


def _triplets(labels: np.ndarray, n_classes: int, missing: int) -> tuple[np.ndarray, ...]:
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise DataError(f"labels must be [N, A], got shape {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"labels must be integers, got {labels.dtype}")
    present = labels != missing
    bad = present & ((labels < 0) | (labels >= n_classes))
    if bad.any():
        r, a = np.argwhere(bad)[0]
        raise DataError(
            f"label {labels[r, a]} at row {r}, annotator {a} is not a class id in "
            f"[0, {n_classes}) nor the missing code {missing}"
        )
    rows, anns = np.nonzero(present)
    return rows, anns, labels[rows, anns]


def vote_posteriors(
    rows: np.ndarray,
    labels: np.ndarray,
    n_items: int,
    n_classes: int,
    gold: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Majority vote from ``(item row, label)`` ratings, every rating a vote (repeats
    included); gold items (``gold >= 0``) take their gold class. Returns the vote shares
    ``[N, K]``, the arg-max (``-1`` for items nobody rated) and each item's vote count."""
    votes = np.zeros((n_items, n_classes))
    np.add.at(votes, (rows, labels), 1.0)
    if gold is not None:
        votes[gold >= 0] = np.eye(n_classes)[gold[gold >= 0]]
    total = votes.sum(axis=1)
    post = votes / np.maximum(total, 1.0)[:, None]
    return post, np.where(total > 0, post.argmax(axis=1), -1), total


def vote_fractions_labels(labels: np.ndarray, n_classes: int, *, missing: int = -1) -> np.ndarray:
    """Soft majority vote: share of the annotators choosing each class, ``[N, K]`` float64.

    Rows with no label get all zeros.
    """
    rows, anns, labs = _triplets(labels, n_classes, missing)
    votes = np.zeros((labels.shape[0], n_classes))
    np.add.at(votes, (rows, labs), 1.0)
    return votes / np.maximum(votes.sum(axis=1, keepdims=True), 1.0)


def majority_vote_labels(
    labels: np.ndarray,
    n_classes: int,
    *,
    missing: int = -1,
    tie_order: Sequence[int] | None = None,
) -> np.ndarray:
    """Hard majority vote per row of ``labels [N, A]`` -> int64 ``[N]`` (-1: no label).

    Ties (several classes with the maximal number of votes) go to the lowest class
    id, or, with ``tie_order`` (annotator indices, highest priority first), to the
    label of the first annotator in that order whose label is among the tied classes.
    """
    frac = vote_fractions_labels(labels, n_classes, missing=missing)
    out = frac.argmax(axis=1)
    best = frac.max(axis=1, keepdims=True)
    if tie_order is not None:
        order = [int(a) for a in tie_order]
        if sorted(order) != list(range(labels.shape[1])):
            raise ConfigError(f"tie_order must be a permutation of 0..{labels.shape[1] - 1}")
        tied = ((frac == best) & (best > 0)).sum(axis=1) > 1
        for a in reversed(order):  # the highest-priority annotator writes last
            lab = labels[:, a]
            ok = lab != missing
            hit = np.zeros_like(ok)
            hit[ok] = frac[ok, lab[ok]] == best[ok, 0]
            sel = tied & hit
            out[sel] = lab[sel]
    out[best[:, 0] == 0] = -1
    return out
