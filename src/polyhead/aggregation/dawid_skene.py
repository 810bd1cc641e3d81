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
expected count matrix and to every prior count before normalising (a symmetric
Dirichlet(1 + smoothing) prior), so a class an annotator never used gets a small non-zero
probability, not a zero or a NaN; every probability is also floored at ``EPS`` = 1e-10
before taking logs. ``smoothing=0`` reproduces crowd-kit's ``DawidSkene`` (which only
applies that floor): with ``tol=0`` and ``max_iter`` = its ``n_iter`` the posteriors agree
to rounding.

Repeated ratings (an annotator labelling a row several times, as observer 1 in Dawid &
Skene 1979) each count as an observation. Gold rows (``gold[r] >= 0``) have their
posterior fixed to the known class in every E-step and so inform the confusion matrices
and priors (semi-supervised EM); ``confusion_prior[a, c, l]`` are pseudo-counts added to
annotator ``a``'s expected counts in every M-step.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from scipy import sparse

from polyhead.aggregation.voting import (  # noqa: F401
    _triplets,
    majority_vote_labels,
    vote_fractions_labels,
)
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
        gold: np.ndarray | None = None,
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
        self.gold = np.full(n_rows, -1, np.int64) if gold is None else np.asarray(gold, np.int64)
        if self.gold.shape != (n_rows,) or np.any(self.gold >= k) or np.any(self.gold < -1):
            raise DataError(f"gold must be {n_rows} class ids in [0, {k}) or -1 (no gold)")
        self.gold_rows = np.flatnonzero(self.gold >= 0)
        self.gold_classes = self.gold[self.gold_rows]
        self.labelled = (self.n_labels > 0) | (self.gold >= 0)
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

    def fix_gold(self, post_t: np.ndarray) -> None:
        """Set the posteriors ``[K, N]`` of gold rows to their known class, in place."""
        if self.gold_rows.size:
            post_t[:, self.gold_rows] = 0.0
            post_t[self.gold_classes, self.gold_rows] = 1.0

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
    prob: _Problem,
    post: np.ndarray,
    model: Model,
    smoothing: float,
    used: np.ndarray,
    confusion_prior: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Confusion ``[A, K, K]`` and priors ``[G, K]`` from posteriors ``[K, N]``."""
    k = prob.n_classes
    counts = prob.expected_counts(post)
    if confusion_prior is not None:
        counts = counts + confusion_prior
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
    gold_joint = post[prob.gold_classes, prob.gold_rows]  # log p(labels, z = gold)
    top = post.max(axis=0)
    post -= top
    np.exp(post, out=post)
    norm = post.sum(axis=0)
    post /= norm
    if prob.any_unlabelled:
        post[:, ~prob.labelled] = 0.0
    log_z = np.log(norm) + top
    if prob.gold_rows.size:
        prob.fix_gold(post)
        log_z[prob.gold_rows] = gold_joint
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


def _check_confusion_prior(prior: np.ndarray | None, a: int, k: int) -> np.ndarray | None:
    if prior is None:
        return None
    prior = np.asarray(prior, dtype=np.float64)
    if prior.shape != (a, k, k) or not np.all(np.isfinite(prior)) or np.any(prior < 0):
        raise ConfigError(
            f"confusion_prior must be [{a}, {k}, {k}] finite non-negative pseudo-counts, "
            f"got shape {prior.shape}"
        )
    return prior


def _initial_posteriors(prob: _Problem, init: np.ndarray | None) -> np.ndarray:
    """Class-major ``[K, N]`` start: ``init``, else the gold rows alone when there are any
    (so that colluding annotators cannot fix the start), else majority-vote fractions."""
    n, k = prob.n_rows, prob.n_classes
    if init is not None:
        post = np.asarray(init, dtype=np.float64)
        if post.shape != (n, k):
            raise DataError(f"init must be [{n}, {k}], got {post.shape}")
        post = np.ascontiguousarray(np.where(prob.labelled[:, None], post, 0.0).T)
    elif prob.gold_rows.size:
        post = np.zeros((k, n))
    else:
        votes = prob.votes()
        post = np.ascontiguousarray((votes / np.maximum(votes.sum(axis=1, keepdims=True), 1.0)).T)
    prob.fix_gold(post)
    return post


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
    gold: np.ndarray | None = None,
    confusion_prior: np.ndarray | None = None,
) -> DawidSkeneResult:
    """Dawid-Skene EM on (row, annotator, label) triplets; see `dawid_skene`.

    A (row, annotator) pair may appear several times: each is one rating."""
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
    prob = _Problem(rows, annotators, labels, n_rows, n_annotators, n_classes, counts, groups, gold)
    k = int(n_classes)
    prior = _check_confusion_prior(confusion_prior, n_annotators, k)
    used = np.zeros((n_annotators, k), dtype=bool)
    used[annotators, labels] = True
    post = _initial_posteriors(prob, init)
    conf, priors = _m_step(prob, post, model, smoothing, used, prior)
    trace: list[float] = []
    converged = False
    for _ in range(int(max_iter)):
        post, ll = _e_step(prob, conf, priors)
        conf, priors = _m_step(prob, post, model, smoothing, used, prior)
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
    gold: np.ndarray | None = None,
    confusion_prior: np.ndarray | None = None,
) -> DawidSkeneResult:
    """Dawid-Skene EM on a label matrix ``[N, A]`` (``missing`` = no label).

    ``counts[N]`` weights each row (e.g. the number of pixels sharing a label
    pattern); ``groups[N]`` gives each row a group (e.g. its image) with its own
    class prior. ``model="one_coin"`` ties each annotator's confusion to a single
    accuracy (off-diagonal mass spread evenly). EM starts from majority-vote
    fractions (or ``init``), alternates E and M steps and stops when the mean
    log-likelihood per labelled row changes by less than ``tol`` or after
    ``max_iter`` iterations (``tol=0``: always ``max_iter``). ``gold[N]`` (class id, -1 =
    unknown) fixes those rows' posteriors; EM then starts from the gold rows alone.
    ``confusion_prior[A, K, K]`` adds pseudo-counts to each annotator's confusion counts.
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
        gold=gold,
        confusion_prior=confusion_prior,
    )


def confusion_from_triplets(
    rows: np.ndarray,
    annotators: np.ndarray,
    labels: np.ndarray,
    posteriors: np.ndarray,
    *,
    n_annotators: int,
    counts: np.ndarray | None = None,
    smoothing: float = 0.01,
) -> np.ndarray:
    """One M-step on (row, annotator, label) triplets against given soft labels ``[N, K]``."""
    post = np.asarray(posteriors, dtype=np.float64)
    n, k = post.shape
    prob = _Problem(rows, annotators, labels, n, n_annotators, k, counts, None)
    used = np.zeros((n_annotators, k), dtype=bool)
    used[annotators, labels] = True
    conf, _ = _m_step(prob, np.ascontiguousarray(post.T), "full", smoothing, used)
    return conf


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
    return confusion_from_triplets(
        rows,
        anns,
        labs,
        posteriors,
        n_annotators=labels.shape[1],
        counts=counts,
        smoothing=smoothing,
    )
