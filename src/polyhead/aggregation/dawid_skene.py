"""Dawid-Skene EM and majority vote on a compact label representation.

A problem is a set of *rows* (pixels, items, or label patterns standing for many
pixels) each labelled by some of ``A`` annotators with class ids in ``[0, K)``.
Rows carry a weight (``counts``: how many pixels share the pattern), so a whole
image collection collapses to a few hundred weighted rows; the EM cost is then
independent of the number of pixels.

Conventions: ``confusion[a, c, l]`` is the probability that annotator ``a`` gives
label ``l`` when the true class is ``c`` (rows: truth, columns: given label; each
row sums to 1). ``priors[c]`` is the class prior. Posteriors of rows with no label
at all are all zeros and such rows take no part in the estimates.

Smoothing: ``smoothing`` is a pseudo-count added to every cell of each annotator's
expected count matrix and to every prior count before normalising (the MAP estimate
under a symmetric Dirichlet(1 + smoothing) prior), so an annotator who never used a
class gets a small non-zero probability for it instead of a zero or a NaN. On top of
that every probability is floored at ``EPS`` = 1e-10 before taking logs.
``smoothing=0`` reproduces crowd-kit's ``DawidSkene`` (which only applies that floor);
with ``tol=0`` and the same ``max_iter`` as crowd-kit's ``n_iter`` the two run the
same iterations and their posteriors agree to rounding.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from scipy import sparse

from polyhead.errors import ConfigError, DataError

EPS = 1e-10
Model = Literal["full", "one_coin"]


@dataclass
class DawidSkeneResult:
    """Output of `dawid_skene`: posteriors per row and the fitted parameters."""

    posteriors: np.ndarray
    """float64 ``[N, K]``; all zeros for rows without any label."""
    confusion: np.ndarray
    """float64 ``[A, K, K]``, ``confusion[a, true, given]``, rows sum to 1."""
    priors: np.ndarray
    """float64 ``[K]``, or ``[G, K]`` with per-group priors."""
    log_likelihood: list[float] = field(default_factory=list)
    """Mean log-likelihood per labelled row (weighted by counts) before each M-step."""
    n_iter: int = 0
    converged: bool = False

    @property
    def labels(self) -> np.ndarray:
        """Most probable class per row (lowest class id on exact ties), -1 if unlabelled."""
        out = self.posteriors.argmax(axis=1)
        out[self.posteriors.sum(axis=1) == 0] = -1
        return out


class _Problem:
    """Sparse incidence of (row, annotator, label) triplets with row weights."""

    def __init__(
        self,
        rows: np.ndarray,
        annotators: np.ndarray,
        labels: np.ndarray,
        n_rows: int,
        n_annotators: int,
        n_classes: int,
        counts: np.ndarray | None,
        groups: np.ndarray | None,
    ) -> None:
        k = n_classes
        self.n_rows, self.n_annotators, self.n_classes = n_rows, n_annotators, k
        cols = annotators.astype(np.int64) * k + labels.astype(np.int64)
        ones = np.ones(rows.size, dtype=np.float64)
        # B[r, a * K + l] = 1 when annotator a gave row r label l
        self.incidence = sparse.csr_matrix(
            (ones, (rows.astype(np.int64), cols)), shape=(n_rows, n_annotators * k)
        )
        self.incidence.sum_duplicates()
        self.incidence_t = self.incidence.T.tocsr()
        self.n_labels = np.asarray(self.incidence.sum(axis=1)).ravel()
        self.labelled = self.n_labels > 0
        self.any_unlabelled = not bool(self.labelled.all())
        w = np.ones(n_rows) if counts is None else np.asarray(counts, dtype=np.float64)
        if w.shape != (n_rows,) or np.any(w < 0) or not np.all(np.isfinite(w)):
            raise DataError(f"counts must be {n_rows} finite non-negative weights")
        self.weights = np.where(self.labelled, w, 0.0)
        self.total = float(self.weights.sum())
        if self.total <= 0:
            raise DataError("no labelled row with a positive count: nothing to aggregate")
        if groups is None:
            self.groups = np.zeros(n_rows, dtype=np.int64)
            self.n_groups = 1
        else:
            self.groups = np.asarray(groups, dtype=np.int64)
            if self.groups.shape != (n_rows,) or (n_rows and self.groups.min() < 0):
                raise DataError(f"groups must be {n_rows} non-negative group ids")
            self.n_groups = int(self.groups.max()) + 1 if n_rows else 1

    def votes(self) -> np.ndarray:
        """Number of annotators choosing each class, ``[N, K]``."""
        pick = np.tile(np.eye(self.n_classes), (self.n_annotators, 1))
        return np.asarray(self.incidence @ pick)

    def expected_counts(self, post_t: np.ndarray) -> np.ndarray:
        """``T[a, c, l]``: weighted posterior mass of true class c where a said l.

        Posteriors are passed class-major, ``[K, N]`` (reductions over K are much
        faster on contiguous class rows than on a short inner axis).
        """
        wq = np.ascontiguousarray((post_t * self.weights).T)
        t = self.incidence_t @ wq  # [A*K(given), K(true)]
        return (
            np.asarray(t)
            .reshape(self.n_annotators, self.n_classes, self.n_classes)
            .transpose(0, 2, 1)
        )

    def prior_counts(self, post_t: np.ndarray) -> np.ndarray:
        """Weighted posterior mass per group and class, ``[G, K]`` (posteriors ``[K, N]``)."""
        if self.n_groups == 1:
            return (post_t @ self.weights)[None]
        wq = post_t * self.weights
        return np.stack(
            [np.bincount(self.groups, wq[c], self.n_groups) for c in range(self.n_classes)],
            axis=1,
        )


def _m_step(
    prob: _Problem, post: np.ndarray, model: Model, smoothing: float, used: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Confusion ``[A, K, K]`` and priors ``[G, K]`` from posteriors ``[K, N]``."""
    k = prob.n_classes
    counts = prob.expected_counts(post)
    if model == "one_coin":
        agree = np.trace(counts, axis1=1, axis2=2)
        total = counts.sum(axis=(1, 2))
        skill = (agree + smoothing) / np.maximum(total + 2 * smoothing, EPS)
        off = (1.0 - skill) / max(k - 1, 1)
        conf = np.broadcast_to(off[:, None, None], counts.shape).copy()
        idx = np.arange(k)
        conf[:, idx, idx] = skill[:, None]
        conf = np.clip(conf, EPS, 1.0 - EPS)
    else:
        counts = counts + smoothing
        if smoothing == 0:
            # crowd-kit floors only the labels an annotator used (the others stay 0)
            counts = np.where(used[:, None, :], np.maximum(counts, EPS), counts)
        conf = counts / np.maximum(counts.sum(axis=2, keepdims=True), EPS)
    pc = prob.prior_counts(post) + smoothing
    priors = pc / np.maximum(pc.sum(axis=1, keepdims=True), EPS)
    return conf, priors


def _e_step(prob: _Problem, conf: np.ndarray, priors: np.ndarray) -> tuple[np.ndarray, float]:
    """Posteriors ``[K, N]`` and mean log-likelihood per labelled row."""
    with np.errstate(divide="ignore"):
        log_conf = np.log(conf)  # -inf only for labels an annotator never gave
    flat = log_conf.transpose(0, 2, 1).reshape(-1, prob.n_classes)  # [A*K(given), K(true)]
    flat = np.where(np.isfinite(flat), flat, 0.0)  # those cells are never gathered
    log_prior = np.log(np.maximum(priors, EPS))
    post = np.ascontiguousarray(np.asarray(prob.incidence @ flat).T)
    post += log_prior[0][:, None] if prob.n_groups == 1 else log_prior[prob.groups].T
    top = post.max(axis=0)
    post -= top
    np.exp(post, out=post)
    norm = post.sum(axis=0)
    post /= norm
    if prob.any_unlabelled:
        post[:, ~prob.labelled] = 0.0
    log_z = np.log(norm) + top
    ll = float(prob.weights @ log_z / prob.total)  # weights are 0 on unlabelled rows
    return post, ll


def _check_options(n_classes: int, max_iter: int, tol: float, smoothing: float, model: str) -> None:
    if int(n_classes) < 2:
        raise ConfigError(f"n_classes must be >= 2, got {n_classes}")
    if int(max_iter) < 0:
        raise ConfigError(f"max_iter must be >= 0, got {max_iter}")
    if not tol >= 0:
        raise ConfigError(f"tol must be >= 0 (0 runs exactly max_iter iterations), got {tol}")
    if not smoothing >= 0:
        raise ConfigError(f"smoothing must be >= 0, got {smoothing}")
    if model not in ("full", "one_coin"):
        raise ConfigError(f"model must be 'full' or 'one_coin', got {model!r}")


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


def dawid_skene_sparse(
    rows: np.ndarray,
    annotators: np.ndarray,
    labels: np.ndarray,
    n_classes: int,
    *,
    n_rows: int | None = None,
    n_annotators: int | None = None,
    counts: np.ndarray | None = None,
    groups: np.ndarray | None = None,
    model: Model = "full",
    max_iter: int = 100,
    tol: float = 1e-6,
    smoothing: float = 0.01,
    init: np.ndarray | None = None,
) -> DawidSkeneResult:
    """Dawid-Skene EM on (row, annotator, label) triplets; see `dawid_skene`."""
    _check_options(n_classes, max_iter, tol, smoothing, model)
    rows, annotators, labels = (
        np.asarray(x).astype(np.int64).ravel() for x in (rows, annotators, labels)
    )
    if not rows.size == annotators.size == labels.size:
        raise DataError("rows, annotators and labels must have the same length")
    if labels.size and (labels.min() < 0 or labels.max() >= n_classes):
        raise DataError(f"labels must be class ids in [0, {n_classes})")
    n_rows = int(rows.max()) + 1 if n_rows is None else int(n_rows)
    n_annotators = int(annotators.max()) + 1 if n_annotators is None else int(n_annotators)
    prob = _Problem(rows, annotators, labels, n_rows, n_annotators, n_classes, counts, groups)
    k = int(n_classes)
    used = np.zeros((n_annotators, k), dtype=bool)
    used[annotators, labels] = True
    if init is None:
        votes = prob.votes()
        post = votes / np.maximum(votes.sum(axis=1, keepdims=True), 1.0)
        post = np.ascontiguousarray(post.T)
    else:
        post = np.asarray(init, dtype=np.float64)
        if post.shape != (n_rows, k):
            raise DataError(f"init must be [{n_rows}, {k}], got {post.shape}")
        post = np.ascontiguousarray(np.where(prob.labelled[:, None], post, 0.0).T)
    conf, priors = _m_step(prob, post, model, smoothing, used)
    trace: list[float] = []
    converged = False
    for _ in range(int(max_iter)):
        post, ll = _e_step(prob, conf, priors)
        conf, priors = _m_step(prob, post, model, smoothing, used)
        trace.append(ll)
        if len(trace) > 1 and abs(trace[-1] - trace[-2]) < tol:
            converged = True
            break
    return DawidSkeneResult(
        posteriors=np.ascontiguousarray(post.T),
        confusion=conf,
        priors=priors[0] if groups is None else priors,
        log_likelihood=trace,
        n_iter=len(trace),
        converged=converged,
    )


def dawid_skene(
    labels: np.ndarray,
    n_classes: int,
    *,
    counts: np.ndarray | None = None,
    groups: np.ndarray | None = None,
    missing: int = -1,
    model: Model = "full",
    max_iter: int = 100,
    tol: float = 1e-6,
    smoothing: float = 0.01,
    init: np.ndarray | None = None,
) -> DawidSkeneResult:
    """Dawid-Skene EM on a label matrix ``[N, A]`` (``missing`` = no label).

    ``counts[N]`` weights each row (e.g. the number of pixels sharing a label
    pattern); ``groups[N]`` gives each row a group (e.g. its image) with its own
    class prior. ``model="one_coin"`` ties each annotator's confusion to a single
    accuracy (off-diagonal mass spread evenly). EM starts from majority-vote
    fractions (or ``init``), alternates E and M steps and stops when the mean
    log-likelihood per labelled row changes by less than ``tol`` or after
    ``max_iter`` iterations (``tol=0``: always ``max_iter``).
    """
    rows, anns, labs = _triplets(labels, n_classes, missing)
    return dawid_skene_sparse(
        rows,
        anns,
        labs,
        n_classes,
        n_rows=labels.shape[0],
        n_annotators=labels.shape[1],
        counts=counts,
        groups=groups,
        model=model,
        max_iter=max_iter,
        tol=tol,
        smoothing=smoothing,
        init=init,
    )


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


def confusion_from_posteriors(
    labels: np.ndarray,
    posteriors: np.ndarray,
    n_classes: int,
    *,
    counts: np.ndarray | None = None,
    missing: int = -1,
    smoothing: float = 0.01,
) -> np.ndarray:
    """One M-step: each annotator's confusion ``[A, K, K]`` against given soft labels."""
    rows, anns, labs = _triplets(labels, n_classes, missing)
    prob = _Problem(rows, anns, labs, labels.shape[0], labels.shape[1], n_classes, counts, None)
    used = np.zeros((labels.shape[1], n_classes), dtype=bool)
    used[anns, labs] = True
    post_t = np.ascontiguousarray(np.asarray(posteriors, dtype=np.float64).T)
    conf, _ = _m_step(prob, post_t, "full", smoothing, used)
    return conf
