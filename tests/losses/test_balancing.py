"""Loss balancing across heads, missing targets per head, soft-label confidence weights."""

import math

import pytest
import torch
import torch.nn.functional as F

from polyhead.errors import ConfigError
from polyhead.losses import MultiHeadLoss, SoftLabelLoss
from polyhead.losses.balancing import (
    DynamicWeightAveraging,
    FixedWeights,
    UncertaintyWeighting,
)


def _batch(seed=0, b=2):
    g = torch.Generator().manual_seed(seed)
    outputs = {
        "A": torch.randn(b, 3, 4, 4, generator=g, requires_grad=True),
        "B": torch.randn(b, 3, 4, 4, generator=g, requires_grad=True),
    }
    targets = {
        "hard": torch.randint(0, 3, (b, 4, 4), generator=g),
        "soft": torch.softmax(torch.randn(b, 3, 4, 4, generator=g), 1),
    }
    return outputs, targets


def test_fixed_weights_is_the_weighted_sum():
    outputs, targets = _batch()
    loss = MultiHeadLoss({"A": "hard", "B": "soft"}, weights={"A": 2.0}, consistency_weight=0.5)
    assert isinstance(loss.balancer, FixedWeights)
    total, parts = loss(outputs, targets, epoch=10)
    expected = 2.0 * parts["A"] + parts["B"] + 0.5 * parts["consistency"]
    torch.testing.assert_close(total, expected)
    torch.testing.assert_close(parts["A"], F.cross_entropy(outputs["A"], targets["hard"]))


def test_uncertainty_weighting_form_init_and_clamp():
    outputs, targets = _batch()
    bal = UncertaintyWeighting(init={"A": 0.5, "consistency": -1.0}, max_log_var=3.0)
    loss = MultiHeadLoss({"A": "hard", "B": "soft"}, consistency_weight=1.0, balancing=bal)
    assert bal.terms == ["A", "B", "consistency"]
    total, parts = loss(outputs, targets, epoch=5)
    s = {"A": 0.5, "B": 0.0, "consistency": -1.0}
    expected = sum(math.exp(-s[t]) * parts[t] + s[t] for t in s)
    torch.testing.assert_close(total, expected)
    total.backward()
    # d/ds (exp(-s) L + s) = 1 - exp(-s) L
    grad_a = 1 - math.exp(-0.5) * float(parts["A"].detach())
    assert bal.log_vars["A"].grad.item() == pytest.approx(grad_a, rel=1e-5)
    assert bal.logged() == pytest.approx(s)
    with torch.no_grad():
        bal.log_vars["B"].fill_(100.0)
    assert bal.logged()["B"] == 3.0  # clamped: cannot run away


def test_uncertainty_weighting_rejects_unknown_init_term():
    with pytest.raises(ConfigError, match=r"\['C'\].*terms: \['A', 'B', 'consistency'\]"):
        MultiHeadLoss({"A": "hard", "B": "soft"}, balancing=UncertaintyWeighting(init={"C": 1.0}))


def test_dwa_weights_from_the_last_two_epoch_means():
    bal = DynamicWeightAveraging(temperature=2.0)
    loss = MultiHeadLoss({"A": "hard", "B": "soft"}, consistency_weight=0, balancing=bal)
    outputs, targets = _batch()
    for _ in range(2):  # two epochs of one step each: weights stay 1
        total, parts = loss(outputs, targets)
        torch.testing.assert_close(total, parts["A"] + parts["B"])
        bal.epoch_end()
    # same batch both epochs: ratios 1 -> equal weights
    assert bal.logged() == pytest.approx({"A": 1.0, "B": 1.0})
    bal.history[1] = torch.tensor([1.0, 3.0], dtype=torch.float64)
    bal.history[0] = torch.tensor([2.0, 1.5], dtype=torch.float64)
    r = torch.tensor([0.5, 2.0])
    expected = 2 * torch.softmax(r / 2.0, 0)
    assert list(bal.logged().values()) == pytest.approx(expected.tolist())
    total, parts = loss(outputs, targets)
    torch.testing.assert_close(
        total, float(expected[0]) * parts["A"] + float(expected[1]) * parts["B"]
    )


def test_a_head_without_any_target_in_the_batch_adds_zero_and_others_learn():
    outputs, targets = _batch()
    present = {"soft": torch.tensor([False, False])}
    for balancing in (None, UncertaintyWeighting()):
        loss = MultiHeadLoss({"A": "hard", "B": "soft"}, consistency_weight=0, balancing=balancing)
        total, parts = loss(outputs, targets, present=present)
        assert float(parts["B"].detach()) == 0.0 and torch.isfinite(total)
        for out in outputs.values():
            out.grad = None
        total.backward()
        assert outputs["A"].grad.abs().sum() > 0
        assert outputs["B"].grad is not None and outputs["B"].grad.abs().sum() == 0


def test_a_head_learns_only_from_samples_that_have_its_target():
    outputs, targets = _batch(b=3)
    present = {"soft": torch.tensor([True, False, True])}
    loss = MultiHeadLoss({"A": "hard", "B": "soft"}, consistency_weight=0)
    _, parts = loss(outputs, targets, present=present)
    keep = [0, 2]
    expected = SoftLabelLoss()(outputs["B"][keep], targets["soft"][keep])
    torch.testing.assert_close(parts["B"], expected)
    torch.testing.assert_close(parts["A"], F.cross_entropy(outputs["A"], targets["hard"]))


def test_soft_weight_map_scales_pixels_and_reaches_the_loss():
    outputs, targets = _batch()
    soft = SoftLabelLoss()
    ones = torch.ones(2, 1, 4, 4)
    torch.testing.assert_close(
        soft(outputs["B"], targets["soft"], weight=ones), soft(outputs["B"], targets["soft"])
    )
    half = ones.clone()
    half[..., 2:] = 0
    left = soft(outputs["B"][..., :2], targets["soft"][..., :2])
    torch.testing.assert_close(soft(outputs["B"], targets["soft"], weight=half), left / 2)
    loss = MultiHeadLoss({"A": "hard", "B": "soft"}, consistency_weight=0)
    _, parts = loss(outputs, {**targets, "soft_weight": half})
    torch.testing.assert_close(parts["B"], left / 2)
    with pytest.raises(ValueError, match="weight map"):
        soft(outputs["B"], targets["soft"], weight=torch.ones(2, 1, 3, 4))


def test_uncertainty_init_accepts_target_keys_for_the_first_head_learning_them():
    bal = UncertaintyWeighting(init={"hard": 0.3, "soft": -0.2, "consistency": 0.1})
    MultiHeadLoss({"A": "hard", "B": "soft"}, balancing=bal)  # psmt's names, polyhead's heads
    assert bal.logged() == pytest.approx({"A": 0.3, "B": -0.2, "consistency": 0.1})
