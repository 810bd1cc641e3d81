"""EnsembleTeacher statistics against a hand computation, and its constructors."""

import math

import pytest
import torch
from torch import nn

from polyhead.distill.teacher import (
    EnsembleTeacher,
    band_names,
    stack_uncertainty,
)
from polyhead.errors import ConfigError
from polyhead.losses.uncertainty import uncertainty_channels


class Fixed(nn.Module):
    """A fake member returning fixed logits whatever the input."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("logits", logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits.expand(x.shape[0], -1, -1, -1)


def _h(p: list[float]) -> float:
    return -sum(v * math.log(v) for v in p if v > 0)


def test_statistics_match_a_hand_computation():
    # one pixel, K = 2; member probabilities chosen as logits = log(p)
    ps = [[0.9, 0.1], [0.6, 0.4], [0.3, 0.7]]
    members = [Fixed(torch.tensor(p).log().view(1, 2, 1, 1)) for p in ps]
    out = EnsembleTeacher(members)(torch.zeros(1, 3, 1, 1))
    mean = [0.6, 0.4]
    # sample std (ddof = 1) of class 0: values 0.9, 0.6, 0.3 around 0.6
    std0 = math.sqrt((0.09 + 0.0 + 0.09) / 2)
    assert out["probs"].flatten().tolist() == pytest.approx(mean, abs=1e-6)
    assert out["std_per_class"].flatten().tolist() == pytest.approx([std0, std0], abs=1e-6)
    assert out["std_winning"].item() == pytest.approx(std0, abs=1e-6)  # class 0 wins
    assert out["entropy"].item() == pytest.approx(_h(mean), abs=1e-6)
    expected_mi = _h(mean) - sum(_h(p) for p in ps) / 3
    assert out["mutual_information"].item() == pytest.approx(expected_mi, abs=1e-6)
    assert out["std_winning"].shape == (1, 1, 1, 1)


def test_streaming_matches_stacked_statistics_and_population_std():
    torch.manual_seed(0)
    logits = [torch.randn(2, 4, 5, 6) for _ in range(3)]
    teacher = EnsembleTeacher([Fixed(x) for x in logits], ddof=0)
    out = teacher(torch.zeros(2, 3, 5, 6))
    probs = torch.stack([x.softmax(1) for x in logits])
    assert torch.allclose(out["probs"], probs.mean(0), atol=1e-6)
    assert torch.allclose(out["std_per_class"], probs.std(0, unbiased=False), atol=1e-6)
    winner = probs.mean(0).argmax(1, keepdim=True)
    assert torch.allclose(out["std_winning"], probs.std(0, unbiased=False).gather(1, winner))
    stacked = stack_uncertainty(out)
    assert stacked.shape == (2, 3 + 4, 5, 6)
    assert torch.equal(stacked[:, uncertainty_channels("entropy", 4)], out["entropy"])
    assert torch.equal(stacked[:, uncertainty_channels("std_per_class", 4)], out["std_per_class"])
    assert band_names(2) == [
        "std_winning",
        "entropy",
        "mutual_information",
        "std_class_0",
        "std_class_1",
    ]


def test_identical_members_have_no_uncertainty_and_teacher_stays_in_eval():
    x = torch.randn(1, 3, 4, 4)
    net = nn.Sequential(nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3))
    teacher = EnsembleTeacher([net, net])
    teacher.train()
    assert not net.training and not any(p.requires_grad for p in teacher.parameters())
    out = teacher(x)
    assert out["std_per_class"].abs().max() < 1e-6
    assert out["mutual_information"].abs().max() < 1e-5


def test_flip_tta_members_flip_back():
    torch.manual_seed(0)
    net = nn.Conv2d(1, 2, 3, padding=1)  # an asymmetric kernel: not flip-equivariant
    x = torch.randn(1, 1, 6, 6)
    with torch.no_grad():
        out = EnsembleTeacher.flip_tta(net)(x)
        manual = [net(x.flip(d)).flip(d) if d else net(x) for d in [(), (-1,), (-2,), (-2, -1)]]
    probs = torch.stack([m.softmax(1) for m in manual])
    assert torch.allclose(out["probs"], probs.mean(0), atol=1e-6)
    assert torch.allclose(out["std_per_class"], probs.std(0), atol=1e-6)
    assert out["std_per_class"].mean() > 0


def test_mc_dropout_samples_and_needs_dropout():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 1), nn.Dropout2d(0.5), nn.Conv2d(4, 3, 1))
    teacher = EnsembleTeacher.mc_dropout(net, n_samples=4)
    out = teacher(torch.randn(2, 3, 8, 8))
    assert out["std_per_class"].mean() > 0
    with pytest.raises(ConfigError, match="no dropout"):
        EnsembleTeacher.mc_dropout(nn.Conv2d(3, 3, 1))


def test_ensemble_needs_two_members_with_the_same_classes():
    with pytest.raises(ConfigError, match="at least 2"):
        EnsembleTeacher([nn.Conv2d(3, 3, 1)])
    teacher = EnsembleTeacher([nn.Conv2d(3, 3, 1), nn.Conv2d(3, 4, 1)])
    with pytest.raises(ConfigError, match="same classes"):
        teacher(torch.randn(1, 3, 2, 2))
