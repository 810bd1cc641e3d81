import math

import pytest
import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F
from torch import nn

from polyhead.losses import HeadConsistencyLoss, MultiHeadLoss, SoftLabelLoss, ensure_ignore_index


def test_soft_label_kl_equals_torch_batchmean_per_pixel():
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 5, 6)
    target = torch.softmax(torch.randn(2, 4, 5, 6), 1)
    ref = F.kl_div(
        F.log_softmax(logits, 1).permute(0, 2, 3, 1).reshape(-1, 4),
        target.permute(0, 2, 3, 1).reshape(-1, 4),
        reduction="batchmean",
    )
    torch.testing.assert_close(SoftLabelLoss("kl")(logits, target), ref)
    # with one-hot targets, soft CE is ordinary cross-entropy
    hard = torch.randint(0, 4, (2, 5, 6))
    onehot = F.one_hot(hard, 4).permute(0, 3, 1, 2).float()
    torch.testing.assert_close(SoftLabelLoss("ce")(logits, onehot), F.cross_entropy(logits, hard))


def test_soft_label_skips_unlabelled_pixels_and_scales_temperature():
    logits = torch.randn(1, 3, 4, 4)
    target = torch.softmax(torch.randn(1, 3, 4, 4), 1)
    padded = target.clone()
    padded[..., 2:] = 0  # no distribution: padding
    loss = SoftLabelLoss("kl")
    torch.testing.assert_close(loss(logits, padded), loss(logits[..., :2], target[..., :2]))
    t = SoftLabelLoss("kl", temperature=2.0)(logits, target)
    torch.testing.assert_close(t, SoftLabelLoss("kl")(logits / 2, target) * 4)


def test_consistency_is_js_and_symmetric():
    a, b = torch.randn(1, 3, 2, 2), torch.randn(1, 3, 2, 2)
    p, q = a.softmax(1), b.softmax(1)
    m = (p + q) / 2
    js = 0.5 * ((p * (p / m).log()).sum(1) + (q * (q / m).log()).sum(1)).mean()
    torch.testing.assert_close(HeadConsistencyLoss("js")(a, b), js)
    assert HeadConsistencyLoss("js")(a, a).abs() < 1e-6
    assert HeadConsistencyLoss("js")(a * 50, -a * 50) <= math.log(2) + 1e-5
    skl = HeadConsistencyLoss("symmetric_kl")
    torch.testing.assert_close(skl(a, b), skl(b, a))


def test_multihead_loss_routes_targets_and_warms_up():
    torch.manual_seed(0)
    outputs = {"A": torch.randn(2, 3, 4, 4, requires_grad=True), "B": torch.randn(2, 3, 4, 4)}
    hard = torch.randint(0, 3, (2, 4, 4))
    hard[0, 0, 0] = 255
    soft = torch.softmax(torch.randn(2, 3, 4, 4), 1)
    dice = smp.losses.DiceLoss("multiclass")  # ignore_index left at None
    loss = MultiHeadLoss(
        {"A": "hard", "B": "soft"},
        hard_loss=dice,
        consistency_weight=0.5,
        consistency_warmup_epochs=2,
    )
    assert dice.ignore_index == 255
    total0, parts = loss(outputs, {"hard": hard, "soft": soft}, epoch=0)
    torch.testing.assert_close(total0, parts["A"] + parts["B"])
    total1, parts = loss(outputs, {"hard": hard, "soft": soft}, epoch=1)
    torch.testing.assert_close(total1, parts["A"] + parts["B"] + 0.25 * parts["consistency"])
    torch.testing.assert_close(parts["A"], dice(outputs["A"], hard))
    total1.backward()
    assert outputs["A"].grad is not None
    with pytest.raises(KeyError, match="soft_labels: true"):
        loss(outputs, {"hard": hard})


def test_ensure_ignore_index_leaves_explicit_values():
    ce = ensure_ignore_index(nn.CrossEntropyLoss(), 255)
    assert ce.ignore_index == 255
    assert ensure_ignore_index(nn.CrossEntropyLoss(ignore_index=7), 255).ignore_index == 7
