import pytest
import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import OmegaConf
from segmentation_models_pytorch.losses._functional import softmax_focal_loss_with_logits
from torch import nn

from polyhead.errors import ConfigError
from polyhead.losses import (
    BoundaryWeightedLoss,
    CombinedLoss,
    CrossEntropyLoss,
    DiceLoss,
    FocalLoss,
    LovaszSoftmaxLoss,
    TverskyLoss,
    class_border_map,
    ensure_ignore_index,
)

K, IGN = 4, 255


def _batch(seed=0, ignore=True):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, K, 8, 9, generator=g)
    target = torch.randint(0, K, (2, 8, 9), generator=g)
    target[target == 3] = 2  # class 3 absent: exercises the absent-class conventions
    target[1, 0, 0] = 3
    if ignore:
        target[0, :3] = IGN
        target[1, :, -2:] = IGN
    return logits, target


def _one_hot(target):
    valid = target != IGN
    oh = F.one_hot(torch.where(valid, target, 0), K).permute(0, 3, 1, 2).float()
    return oh * valid[:, None]


def close(a, b):
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("weight", [None, [1.0, 2.0, 0.5, 3.0]])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_cross_entropy_equals_torch(weight, smoothing):
    logits, target = _batch()
    ours = CrossEntropyLoss(weight=weight, label_smoothing=smoothing, ignore_index=IGN)
    w = None if weight is None else torch.tensor(weight)
    ref = F.cross_entropy(logits, target, weight=w, ignore_index=IGN, label_smoothing=smoothing)
    close(ours(logits, target), ref)
    per_pixel = F.cross_entropy(
        logits, target, weight=w, ignore_index=IGN, label_smoothing=smoothing, reduction="none"
    )
    close(CrossEntropyLoss(weight, IGN, smoothing, reduction="none")(logits, target), per_pixel)
    # soft variant with one-hot targets equals the hard one
    close(ours(logits, _one_hot(target)), ref)


def test_cross_entropy_all_ignored_is_zero_not_nan():
    logits = torch.randn(1, K, 4, 4, requires_grad=True)
    loss = CrossEntropyLoss()(logits, torch.full((1, 4, 4), IGN))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.all(logits.grad == 0)


def test_cross_entropy_vs_smp_soft_cross_entropy():
    smp_ce = smp.losses.SoftCrossEntropyLoss(smooth_factor=0.1, ignore_index=IGN)
    ours = CrossEntropyLoss(label_smoothing=0.1, ignore_index=IGN)
    logits, target = _batch(ignore=False)
    close(ours(logits, target), smp_ce(logits, target))
    # documented difference: with ignored pixels SMP divides by all pixels, we by labelled ones
    logits, target = _batch()
    n_valid, n_all = (target != IGN).sum(), target.numel()
    close(ours(logits, target) * n_valid / n_all, smp_ce(logits, target))


@pytest.mark.parametrize(
    "kwargs", [{}, {"smooth": 1.0}, {"log_loss": True}, {"class_weights": [1.0, 2.0, 0.5, 1.0]}]
)
def test_dice_equals_smp(kwargs):
    logits, target = _batch()
    ref = smp.losses.DiceLoss("multiclass", ignore_index=IGN, **kwargs)(logits, target)
    ours = DiceLoss(ignore_index=IGN, **kwargs)
    close(ours(logits, target), ref)
    close(ours(logits, _one_hot(target)), ref)  # soft Dice with one-hot targets


@pytest.mark.parametrize("kwargs", [{}, {"alpha": 0.3, "beta": 0.7, "gamma": 1.5}])
def test_tversky_equals_smp(kwargs):
    logits, target = _batch()
    ref = smp.losses.TverskyLoss("multiclass", ignore_index=IGN, **kwargs)(logits, target)
    ours = TverskyLoss(ignore_index=IGN, **kwargs)
    close(ours(logits, target), ref)
    close(ours(logits, _one_hot(target)), ref)


def test_soft_dice_is_zero_at_the_soft_target():
    target = torch.softmax(torch.randn(2, K, 6, 6), 1)
    assert DiceLoss()(target.log(), target).item() < 1e-5
    assert DiceLoss()(torch.randn(2, K, 6, 6), target).item() > 0.05


@pytest.mark.parametrize("kwargs", [{}, {"alpha": 0.25}, {"class_weights": [1.0, 2.0, 0.5, 1.0]}])
def test_focal_sigmoid_equals_smp(kwargs):
    logits, target = _batch()
    ref = smp.losses.FocalLoss("multiclass", ignore_index=IGN, **kwargs)(logits, target)
    ours = FocalLoss(mode="sigmoid", ignore_index=IGN, **kwargs)
    close(ours(logits, target), ref)
    close(ours(logits, _one_hot(target)), ref)


def test_focal_softmax_equals_smp_functional_and_cross_entropy():
    logits, target = _batch()
    valid = target != IGN
    flat_logits = logits.permute(0, 2, 3, 1)[valid]  # [P, K], labelled pixels only
    ref = softmax_focal_loss_with_logits(flat_logits, target[valid], gamma=2.0)
    ours = FocalLoss(gamma=2.0, ignore_index=IGN)
    close(ours(logits, target), ref)
    close(ours(logits, _one_hot(target)), ref)
    w = [1.0, 2.0, 0.5, 3.0]
    ce = F.cross_entropy(logits, target, weight=torch.tensor(w), ignore_index=IGN)
    close(FocalLoss(gamma=0.0, class_weights=w)(logits, target), ce)
    with pytest.raises(ConfigError, match="sigmoid"):
        FocalLoss(alpha=0.25)


@pytest.mark.parametrize("per_image", [False, True])
def test_lovasz_equals_smp(per_image):
    logits, target = _batch()
    ref = smp.losses.LovaszLoss("multiclass", per_image=per_image, ignore_index=IGN)
    ours = LovaszSoftmaxLoss(per_image=per_image, ignore_index=IGN)
    close(ours(logits, target), ref(logits, target))
    with pytest.raises(ValueError, match="integer mask"):
        ours(logits, _one_hot(target))


def _hand_mask():
    """12x12: class 0 left of column 6, class 1 right of it; top two rows unlabelled."""
    target = torch.zeros(1, 12, 12, dtype=torch.long)
    target[..., 6:] = 1
    target[:, :2] = IGN
    return target


def test_boundary_weights_are_higher_near_borders():
    target = _hand_mask()
    border = class_border_map(target, num_classes=2, width=2, ignore_index=IGN)
    expected = torch.zeros(1, 12, 12, dtype=torch.bool)
    expected[:, :, 4:8] = True  # within 2 px of the other class
    assert torch.equal(border[:, 2:], expected[:, 2:])  # labelled rows
    # the edge of the unlabelled band and the image edge are no borders
    assert not border[:, 2:, :4].any() and not border[:, 2:, 8:].any()

    loss = BoundaryWeightedLoss(width=2, border_weight=5.0)
    logits = torch.randn(1, 2, 12, 12)
    w = loss.pixel_weights(logits, target)
    assert torch.all(w[:, :2] == 0)
    assert torch.all(w[:, 2:, 4:8] == 5.0) and torch.all(w[:, 2:, :4] == 1.0)
    ce = F.cross_entropy(logits, target, ignore_index=IGN, reduction="none")
    close(loss(logits, target), (w * ce).sum() / w.sum())
    close(loss(logits, _one_hot(target)[:, :2]), loss(logits, target))  # soft targets
    # the same error costs more on the border than inside a region
    good = F.one_hot(torch.where(target == IGN, 0, target), 2).permute(0, 3, 1, 2).float() * 8
    on_border, inside = good.clone(), good.clone()
    on_border[0, :, 5, 5] = on_border[0, :, 5, 5].flip(0)
    inside[0, :, 5, 1] = inside[0, :, 5, 1].flip(0)
    assert loss(on_border, target) > 3 * loss(inside, target)


def test_boundary_loss_rejects_reduced_pixel_loss():
    with pytest.raises(ConfigError, match="reduction='none'"):
        BoundaryWeightedLoss(CrossEntropyLoss())
    focal = BoundaryWeightedLoss(FocalLoss(reduction="none"), ignore_index=7)
    assert focal.pixel_loss.ignore_index == 7


def test_combined_loss_is_the_weighted_sum_and_logs_parts():
    logits, target = _batch()
    ce, dice = CrossEntropyLoss(), DiceLoss()
    combined = CombinedLoss({"ce": (ce, 1.0), "dice": {"loss": dice, "weight": 0.5}})
    close(combined(logits, target), ce(logits, target) + 0.5 * dice(logits, target))
    assert set(combined.last_parts) == {"ce", "dice"}
    close(combined.last_parts["dice"], dice(logits, target))
    listed = CombinedLoss([DiceLoss(), DiceLoss(), {"loss": FocalLoss(), "weight": 2, "name": "f"}])
    assert list(listed.weights.items()) == [("dice", 1.0), ("dice_2", 1.0), ("f", 2.0)]
    with pytest.raises(ConfigError, match="loss entry"):
        CombinedLoss([{"weight": 1.0}])
    with pytest.raises(ConfigError, match="at least one"):
        CombinedLoss([])


def test_combined_loss_from_hydra_yaml_and_ignore_index():
    cfg = OmegaConf.create(
        """
        _target_: polyhead.losses.CombinedLoss
        losses:
          ce: {loss: {_target_: polyhead.losses.CrossEntropyLoss, weight: [1, 2, 1, 1]}, weight: 1.0}
          dice: {loss: {_target_: polyhead.losses.DiceLoss}, weight: 0.5}
          edge:
            loss: {_target_: polyhead.losses.BoundaryWeightedLoss, width: 1}
            weight: 0.2
        """
    )
    loss = instantiate(cfg)
    assert loss.weights == {"ce": 1.0, "dice": 0.5, "edge": 0.2}
    logits, target = _batch()
    parts = [m(logits, target) for m in loss.losses.values()]
    close(loss(logits, target), parts[0] + 0.5 * parts[1] + 0.2 * parts[2])
    # parts disagreeing on ignore_index are pointed at the data's value
    mixed = CombinedLoss([nn.CrossEntropyLoss(), DiceLoss(ignore_index=None)])
    ensure_ignore_index(mixed, 0)
    assert [m.ignore_index for m in mixed.losses.values()] == [0, 0]


LOSSES = {
    "ce": lambda: CrossEntropyLoss(weight=[1.0, 2.0, 1.0, 1.0], label_smoothing=0.1),
    "dice": DiceLoss,
    "tversky": lambda: TverskyLoss(alpha=0.3, beta=0.7),
    "focal": FocalLoss,
    "focal_sigmoid": lambda: FocalLoss(mode="sigmoid", alpha=0.25),
    "lovasz": LovaszSoftmaxLoss,
    "boundary": lambda: BoundaryWeightedLoss(width=1),
    "combined": lambda: CombinedLoss([(CrossEntropyLoss(), 1.0), (DiceLoss(), 1.0)]),
}


@pytest.mark.parametrize("name", list(LOSSES))
def test_loss_decreases_and_ignored_pixels_get_no_gradient(name):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 16, 16)
    target = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long() * 2  # learnable from the input
    target[0, :4] = IGN
    model = nn.Conv2d(3, K, 3, padding=1)
    loss_fn = LOSSES[name]()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    values = []
    for _ in range(6):
        opt.zero_grad()
        loss = loss_fn(model(x), target)
        loss.backward()
        opt.step()
        values.append(loss.item())
    assert values[-1] < values[0], values

    logits = torch.randn(2, K, 16, 16, requires_grad=True)
    loss_fn(logits, target).backward()
    ignored = (target == IGN)[:, None].expand_as(logits)
    assert torch.all(logits.grad[ignored] == 0)
    assert logits.grad[~ignored].abs().sum() > 0
