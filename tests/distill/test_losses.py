"""Distillation losses: KL scaling, the thread recipe's shrinkage, non-collapsing regression."""

import pytest
import torch
import torch.nn.functional as F

from polyhead.distill.losses import DistillationLoss, ThreadRecipeLoss
from polyhead.errors import ConfigError
from polyhead.losses.uncertainty import UncertaintyRegressionLoss, forward_transform, to_uncertainty

B, K, H, W = 2, 4, 8, 8


def _batch(seed: int = 0, unc_channels: int = 3 + K):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, K, H, W, generator=g)
    probs = torch.randn(B, K, H, W, generator=g).softmax(1)
    unc = torch.rand(B, unc_channels, H, W, generator=g) ** 4 * 0.3  # mostly near zero
    hard = torch.randint(0, K, (B, H, W), generator=g)
    return logits, {"soft": probs, "uncertainty": unc, "hard": hard}


def test_kl_is_per_pixel_batchmean_with_temperature_scaling():
    logits, targets = _batch()
    loss = DistillationLoss(uncertainty_weight=0.0)
    _, parts = loss(logits, torch.zeros(B, 1, H, W), targets)
    batchmean = F.kl_div(logits.log_softmax(1), targets["soft"], reduction="batchmean")
    assert parts["kl"].item() == pytest.approx(batchmean.item() / (H * W), rel=1e-5)
    t = 2.0
    _, parts_t = DistillationLoss(temperature=t)(logits, torch.zeros(B, 1, H, W), targets)
    expected = F.kl_div((logits / t).log_softmax(1), targets["soft"], reduction="batchmean")
    assert parts_t["kl"].item() == pytest.approx(expected.item() * t * t / (H * W), rel=1e-5)


def test_thread_kl_is_k_times_hw_smaller_than_batchmean():
    logits, targets = _batch()
    thread = ThreadRecipeLoss(half_targets=False)
    _, parts = thread(logits, torch.zeros(B, K, H, W), targets)
    batchmean = F.kl_div(logits.log_softmax(1), targets["soft"], reduction="batchmean")
    assert parts["kl"].item() == pytest.approx(batchmean.item() / (K * H * W), rel=1e-5)
    _, ours = DistillationLoss()(logits, torch.zeros(B, 1, H, W), targets)
    assert ours["kl"].item() == pytest.approx(parts["kl"].item() * K, rel=1e-5)


def test_thread_recipe_parts_and_total():
    logits, targets = _batch()
    z = torch.randn(B, K, H, W)
    total, parts = ThreadRecipeLoss()(logits, z, targets)
    std = targets["uncertainty"][:, 3:].half().float()
    assert parts["uncertainty"].item() == pytest.approx(
        F.mse_loss(torch.sigmoid(z), std).item(), rel=1e-5
    )
    ce = F.cross_entropy(logits, targets["hard"])
    assert parts["ce"].item() == pytest.approx(ce.item(), rel=1e-5)
    assert total.item() == pytest.approx(
        0.1 * ce.item() + parts["kl"].item() + parts["uncertainty"].item(), rel=1e-5
    )
    with pytest.raises(ConfigError, match="output channel"):
        ThreadRecipeLoss()(logits, torch.zeros(B, 1, H, W), targets)
    _, normalised = ThreadRecipeLoss(normalize=True)(logits, z, targets)
    assert normalised["uncertainty"].item() == pytest.approx(
        parts["uncertainty"].item() / std.var(unbiased=False).item(), rel=1e-4
    )


def test_uncertainty_gradient_survives_mostly_zero_targets():
    target = torch.zeros(B, 1, H, W)
    target[:, :, :2, :2] = 0.05  # 6% of the pixels carry a small uncertainty
    z = torch.zeros(B, 1, H, W, requires_grad=True)  # a collapsed head (predicts 0)
    loss = UncertaintyRegressionLoss()(z, target)
    loss.backward()
    g = z.grad[:, :, :2, :2]
    assert loss.item() > 0.5 and g.abs().min() > 1e-3 and (g < 0).all()
    # the thread's sigmoid + MSE: a saturated head gets next to no gradient
    z2 = torch.full((B, 1, H, W), -8.0, requires_grad=True)
    F.mse_loss(torch.sigmoid(z2), target).backward()
    assert z2.grad.abs().max() < 1e-5 < g.abs().min()


def test_normalisation_makes_the_loss_scale_free():
    target = torch.rand(B, 1, H, W) ** 3 * 0.1
    z = torch.randn(B, 1, H, W)
    loss = UncertaintyRegressionLoss(transform="identity")
    assert loss(z * 0.1, target * 0.1).item() == pytest.approx(loss(z, target).item(), rel=1e-4)


@pytest.mark.parametrize("transform", ["sqrt", "log", "identity"])
def test_transform_inverse(transform):
    u = torch.tensor([0.0, 1e-4, 0.01, 0.2, 0.7])
    back = to_uncertainty(forward_transform(u, transform), transform)
    assert torch.allclose(back, u, atol=1e-6)
    assert (to_uncertainty(torch.tensor([-3.0, -0.5]), transform) >= 0).all()


def test_valid_pixels_and_target_selection():
    logits, targets = _batch()
    targets["soft"][:, :, :, -2:] = 0.0  # padding: no teacher distribution
    z = torch.zeros(B, 1, H, W, requires_grad=True)
    loss = DistillationLoss(uncertainty_target="entropy", ce_weight=0.5, ignore_index=255)
    total, parts = loss(logits, z, targets)
    assert set(parts) == {"kl", "ce", "uncertainty"}
    total.backward()
    assert z.grad[..., -2:].abs().max() == 0 and z.grad[..., :-2].abs().max() > 0
    with pytest.raises(ConfigError, match="uncertainty_target"):
        DistillationLoss(uncertainty_target="variance")
