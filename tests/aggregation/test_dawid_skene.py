"""Dawid-Skene EM core: crowd-kit agreement, recovery of known confusions, majority vote."""

from __future__ import annotations

import numpy as np
import pytest

from polyhead.aggregation import (
    dawid_skene,
    dawid_skene_sparse,
    majority_vote_labels,
    vote_fractions_labels,
)
from polyhead.aggregation.patterns import PatternCodec
from polyhead.errors import ConfigError, DataError

from .conftest import simulate

# crowd-kit 1.4 trips pandas deprecation warnings on every EM step
pytestmark = pytest.mark.filterwarnings("ignore:::crowdkit")


def _crowdkit_frame(labels: np.ndarray):
    pd = pytest.importorskip("pandas")
    rows, anns = np.nonzero(labels >= 0)
    return pd.DataFrame({"task": rows, "worker": anns, "label": labels[rows, anns]})


def _crowdkit_posteriors(model, labels: np.ndarray, k: int) -> np.ndarray:
    probas = model.fit(_crowdkit_frame(labels)).probas_.sort_index()
    assert list(probas.index) == list(range(labels.shape[0]))
    return probas[list(range(k))].to_numpy()


@pytest.mark.parametrize(
    ("seed", "n", "k", "accuracies", "missing", "n_iter"),
    [
        (0, 2000, 3, (0.8, 0.7, 0.6), 0.0, 30),
        (1, 2000, 5, (0.9, 0.6, 0.5, 0.7), 0.3, 30),
        (2, 1500, 6, (0.85, 0.55, 0.4), 0.2, 10),
        (3, 2000, 4, (0.7, 0.7, 0.65, 0.5, 0.9), 0.5, 1),
    ],
)
def test_posteriors_equal_crowdkit_same_iterations(seed, n, k, accuracies, missing, n_iter):
    crowdkit = pytest.importorskip("crowdkit.aggregation")
    _, labels, _, _ = simulate(seed, n, k, accuracies, missing)
    expected = _crowdkit_posteriors(crowdkit.DawidSkene(n_iter=n_iter, tol=-np.inf), labels, k)
    res = dawid_skene(labels, k, smoothing=0.0, tol=0.0, max_iter=n_iter)
    assert res.n_iter == n_iter and not res.converged
    np.testing.assert_allclose(res.posteriors, expected, atol=1e-5, rtol=0)


def test_posteriors_equal_crowdkit_with_its_default_stopping_rule():
    """crowd-kit's defaults (n_iter=100, tol=1e-5 on its ELBO) stop after some iterations;
    polyhead run for that many iterations without smoothing gives the same posteriors."""
    crowdkit = pytest.importorskip("crowdkit.aggregation")
    _, labels, _, _ = simulate(4, 1500, 4, (0.9, 0.8, 0.7), missing=0.2)
    ck = crowdkit.DawidSkene()
    expected = _crowdkit_posteriors(ck, labels, 4)
    n_iter = len(ck.loss_history_)
    assert 1 < n_iter < 100
    res = dawid_skene(labels, 4, smoothing=0.0, tol=0.0, max_iter=n_iter)
    np.testing.assert_allclose(res.posteriors, expected, atol=1e-5, rtol=0)
    np.testing.assert_allclose(
        res.confusion.transpose(0, 2, 1).reshape(-1, 4),
        ck.errors_.sort_index().to_numpy(),
        atol=1e-6,
    )
    np.testing.assert_allclose(res.priors, ck.priors_.sort_index().to_numpy(), atol=1e-6)


def test_one_coin_equals_crowdkit():
    crowdkit = pytest.importorskip("crowdkit.aggregation")
    _, labels, _, _ = simulate(5, 2000, 4, (0.85, 0.65, 0.5), missing=0.2)
    expected = _crowdkit_posteriors(crowdkit.OneCoinDawidSkene(n_iter=20, tol=-np.inf), labels, 4)
    res = dawid_skene(labels, 4, smoothing=0.0, tol=0.0, max_iter=20, model="one_coin")
    np.testing.assert_allclose(res.posteriors, expected, atol=1e-5, rtol=0)


def test_pattern_counts_give_the_same_fit_as_per_pixel_rows():
    _, labels, _, _ = simulate(6, 20000, 4, (0.8, 0.7, 0.6), missing=0.2)
    pixel = dawid_skene(labels, 4, max_iter=50, tol=0.0)
    codec = PatternCodec(4, 3)
    codes = codec.encode(np.where(labels < 0, 4, labels).T.astype(np.uint8))
    uniq, counts = codec.count(codes)
    assert uniq.size <= 5**3
    pattern = dawid_skene(codec.decode(uniq), 4, counts=counts, max_iter=50, tol=0.0)
    np.testing.assert_allclose(pattern.confusion, pixel.confusion, atol=1e-10)
    np.testing.assert_allclose(pattern.priors, pixel.priors, atol=1e-10)
    np.testing.assert_allclose(pattern.log_likelihood, pixel.log_likelihood, atol=1e-10)
    lookup = pattern.posteriors[np.searchsorted(uniq, codes)]
    np.testing.assert_allclose(lookup, pixel.posteriors, atol=1e-10)


def test_recovers_known_confusions_and_beats_majority_vote():
    truth, labels, confs, priors = simulate(11, 200_000, 6, (0.9, 0.7, 0.5))
    codec = PatternCodec(6, 3)  # the pixel path: collapse to label patterns first
    codes = codec.encode(labels.T.astype(np.uint8))
    uniq, counts = codec.count(codes)
    res = dawid_skene(codec.decode(uniq), 6, counts=counts)
    assert res.converged
    assert np.abs(res.confusion - confs).max() < 0.02
    assert np.abs(res.priors - priors).max() < 0.01
    ds_acc = (res.labels[np.searchsorted(uniq, codes)] == truth).mean()
    mv_acc = (majority_vote_labels(labels, 6) == truth).mean()
    assert ds_acc > mv_acc + 0.02, (ds_acc, mv_acc)
    trace = np.array(res.log_likelihood)
    assert np.all(np.diff(trace) > -1e-9)  # EM never decreases the likelihood (up to smoothing)


def test_never_used_class_gives_no_zero_or_nan():
    _, labels, _, _ = simulate(12, 3000, 4, (0.8, 0.7, 0.6))
    labels[labels[:, 2] == 3, 2] = 0  # annotator 2 never says 3
    res = dawid_skene(labels, 4)
    assert np.all(np.isfinite(res.confusion)) and np.all(res.confusion > 0)
    assert np.all(np.isfinite(res.posteriors))
    np.testing.assert_allclose(res.confusion.sum(axis=2), 1.0)
    np.testing.assert_allclose(res.posteriors.sum(axis=1), 1.0)
    # a class nobody ever uses still gets a finite, tiny prior
    _, labels, _, _ = simulate(13, 500, 3, (0.9, 0.8))
    res = dawid_skene(labels, 5)
    assert np.all(np.isfinite(res.posteriors)) and res.priors[3:].max() < 1e-3


def test_unlabelled_rows_get_zero_posteriors_and_no_weight():
    _, labels, _, _ = simulate(14, 1000, 3, (0.8, 0.7))
    more = np.vstack([labels, np.full((10, 2), -1)])
    a, b = dawid_skene(labels, 3), dawid_skene(more, 3)
    assert np.all(b.posteriors[-10:] == 0) and np.all(b.labels[-10:] == -1)
    np.testing.assert_allclose(a.confusion, b.confusion)


def test_per_group_priors():
    rng = np.random.default_rng(15)
    groups = np.repeat([0, 1], 5000)
    p0, p1 = np.array([0.8, 0.1, 0.1]), np.array([0.1, 0.1, 0.8])
    truth = np.concatenate([rng.choice(3, 5000, p=p0), rng.choice(3, 5000, p=p1)])
    labels = np.stack(
        [
            np.where(rng.random(truth.size) < acc, truth, rng.integers(0, 3, truth.size))
            for acc in (0.8, 0.7, 0.6)
        ],
        axis=1,
    )
    res = dawid_skene(labels, 3, groups=groups)
    assert res.priors.shape == (2, 3)
    assert np.abs(res.priors - np.stack([p0, p1])).max() < 0.03
    assert (res.labels == truth).mean() >= (dawid_skene(labels, 3).labels == truth).mean()


def test_sparse_entry_point_matches_dense():
    _, labels, _, _ = simulate(16, 800, 3, (0.8, 0.6, 0.7), missing=0.3)
    rows, anns = np.nonzero(labels >= 0)
    a = dawid_skene(labels, 3, max_iter=20, tol=0)
    b = dawid_skene_sparse(rows, anns, labels[rows, anns], 3, n_rows=800, max_iter=20, tol=0)
    np.testing.assert_allclose(a.posteriors, b.posteriors)


def test_majority_vote_ties_and_fractions():
    labels = np.array([[0, 1, 1], [2, 1, -1], [-1, -1, -1], [3, 2, 1], [1, 1, 0]])
    frac = vote_fractions_labels(labels, 4)
    np.testing.assert_allclose(frac[1], [0, 0.5, 0.5, 0])
    assert np.all(frac[2] == 0)
    # ties -> lowest class id; no label -> -1
    assert majority_vote_labels(labels, 4).tolist() == [1, 1, -1, 1, 1]
    # ties -> first annotator in tie_order whose label is tied
    assert majority_vote_labels(labels, 4, tie_order=[0, 1, 2]).tolist() == [1, 2, -1, 3, 1]
    assert majority_vote_labels(labels, 4, tie_order=[2, 1, 0]).tolist() == [1, 1, -1, 1, 1]


def test_bad_arguments():
    labels = np.array([[0, 1], [1, 1]])
    with pytest.raises(DataError, match="row 1, annotator 0"):
        dawid_skene(np.array([[0, 1], [7, 1]]), 3)
    with pytest.raises(ConfigError, match="tol"):
        dawid_skene(labels, 2, tol=-1)
    with pytest.raises(ConfigError, match="smoothing"):
        dawid_skene(labels, 2, smoothing=-0.1)
    with pytest.raises(ConfigError, match="model"):
        dawid_skene(labels, 2, model="two_coin")
    with pytest.raises(DataError, match="nothing to aggregate"):
        dawid_skene(np.full((3, 2), -1), 2)


@pytest.mark.parametrize(("k", "a"), [(6, 3), (6, 9), (6, 30)])
def test_pattern_codec_round_trip(k, a):
    rng = np.random.default_rng(k * a)
    stack = rng.integers(0, k + 1, (a, 5000)).astype(np.uint8)
    stack[:, :100] = k  # all-missing pixels
    codec = PatternCodec(k, a)
    assert codec.dense == (a == 3) and codec.packed == (a < 30)
    codes = codec.encode(stack)
    uniq, counts = codec.count(codes)
    assert counts.sum() == 5000 and np.all(np.diff(uniq) > 0)
    decoded = codec.decode(codes)
    np.testing.assert_array_equal(decoded.T, np.where(stack == k, -1, stack.astype(np.int64)))
    assert codes[0] == codec.all_missing
    np.testing.assert_array_equal(codec.encode(stack), codes)  # stable ids across passes
