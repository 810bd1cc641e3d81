"""The study's metrics against hand-computed values."""

import math

import pytest
import torch

from polyhead.errors import DataError
from polyhead.inference.calibration import reliability
from polyhead.study.metrics import (
    bins_to_curve,
    brier,
    confusion_matrix,
    evaluate,
    kl_divergence,
    miou,
    nll,
)


def test_nll_of_class_ids_and_of_soft_references():
    probs = torch.tensor([[0.5, 0.5], [0.9, 0.1]])
    assert nll(probs, torch.tensor([0, 1])) == pytest.approx((math.log(2) + math.log(10)) / 2)
    # cross-entropy from a soft reference: -(0.5 ln 0.5 + 0.5 ln 0.5) = ln 2
    assert nll(probs[:1], torch.tensor([[0.5, 0.5]])) == pytest.approx(math.log(2))


def test_nll_floors_a_zero_probability_instead_of_inf():
    assert nll(torch.tensor([[1.0, 0.0]]), torch.tensor([1])) == pytest.approx(-math.log(1e-12))


def test_brier_one_hot_and_soft():
    probs = torch.tensor([[0.7, 0.3]])
    assert brier(probs, torch.tensor([0])) == pytest.approx(0.3**2 + 0.3**2)
    assert brier(probs, torch.tensor([[0.5, 0.5]])) == pytest.approx(0.2**2 + 0.2**2)


def test_kl_divergence_hand_computed_and_zero_at_equality():
    q, p = torch.tensor([[0.5, 0.5]]), torch.tensor([[0.25, 0.75]])
    expected = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    assert kl_divergence(q, p) == pytest.approx(expected)
    assert kl_divergence(q, q) == pytest.approx(0.0, abs=1e-12)
    # a one-hot reference (0 log 0 = 0): KL is the NLL of its class
    assert kl_divergence(torch.tensor([[0.0, 1.0]]), p) == pytest.approx(-math.log(0.75))


def test_miou_averages_classes_present_in_target_or_prediction():
    pred = torch.tensor([0, 0, 0, 1, 1, 1])
    target = torch.tensor([0, 0, 0, 0, 1, 1])
    conf = confusion_matrix(pred, target, 3)  # class 2: absent from both
    assert conf.tolist() == [[3, 1, 0], [0, 2, 0], [0, 0, 0]]
    assert miou(conf) == pytest.approx((3 / 4 + 2 / 3) / 2)


def test_mismatched_shapes_are_refused():
    with pytest.raises(DataError, match="does not match"):
        nll(torch.full((3, 2), 0.5), torch.tensor([0, 1]))


def test_evaluate_a_perfect_prediction():
    truth = torch.zeros(2, 8, 8, dtype=torch.long)
    truth[:, :, 4:] = 1
    probs = torch.nn.functional.one_hot(truth, 2).permute(0, 3, 1, 2).float()
    out, bins = evaluate(probs, truth)
    assert out == pytest.approx(
        {"miou": 1.0, "accuracy": 1.0, "ece": 0.0, "nll": 0.0, "brier": 0.0, "boundary_f1": 1.0}
    )
    soft, _ = evaluate(probs, probs)
    assert soft["kl"] == pytest.approx(0.0) and soft["miou"] == 1.0
    assert bins[0].sum() == truth.numel()


def test_evaluate_uniform_probabilities():
    truth = torch.zeros(1, 4, 4, dtype=torch.long)
    probs = torch.full((1, 2, 4, 4), 0.5)  # arg-max: the lowest class, here always right
    out, bins = evaluate(probs, truth)
    assert out["accuracy"] == 1.0
    assert out["ece"] == pytest.approx(0.5)
    assert out["nll"] == pytest.approx(math.log(2))
    assert out["brier"] == pytest.approx(0.5)
    conf, acc, count, ece = bins_to_curve(bins.numpy())
    assert ece == pytest.approx(0.5)
    assert count.sum() == 16


def test_bins_to_curve_gives_the_reliability_ece():
    gen = torch.Generator().manual_seed(0)
    probs = torch.softmax(3 * torch.randn(1, 4, 16, 16, generator=gen), 1)
    truth = torch.randint(0, 4, (1, 16, 16), generator=gen)
    out, bins = evaluate(probs, truth)
    flat = probs.permute(0, 2, 3, 1).reshape(-1, 4)
    expected = reliability(flat, truth.reshape(-1)).ece
    assert bins_to_curve(bins.numpy())[3] == pytest.approx(expected)
    assert out["ece"] == pytest.approx(expected)
