"""The predictor's spread map: D4 and MC-dropout passes, their mean and per-pixel std."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from polyhead.errors import ConfigError
from polyhead.inference import Predictor, predict_maps
from polyhead.inference.tta import Augmentation

C, K = 3, 4


def _x(h: int = 32, w: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.rand(2, C, h, w, generator=torch.Generator().manual_seed(seed))


def _conv(seed: int = 0) -> nn.Module:
    """Not D4-equivariant: asymmetric 3x3 kernels."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(C, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, K, 3, padding=1))


class _Dropping(nn.Module):
    """Conv, batch norm and dropout: MC-dropout must sample the dropout only."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.conv = nn.Conv2d(C, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.drop = nn.Dropout2d(0.5)
        self.out = nn.Conv2d(8, K, 1)
        self.bn_modes: list[bool] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn(self.conv(x))
        self.bn_modes.append(self.bn.training)
        return self.out(self.drop(torch.relu(y)))


@pytest.mark.parametrize("size", [(32, 32), (24, 40)])
def test_d4_of_an_equivariant_model_is_exactly_the_plain_prediction(size) -> None:
    torch.manual_seed(0)
    model = nn.Conv2d(C, K, 1)  # pointwise: commutes with every flip and turn
    x = _x(*size)
    with torch.no_grad():
        plain = Predictor(model)(x)
        d4 = Predictor(model, tta="d4")(x)
    assert set(plain) == {"probabilities"}
    assert set(d4) == {"probabilities", "spread"}
    assert torch.equal(d4["probabilities"], plain["probabilities"])
    assert d4["spread"].shape == (2, 1, *size) and d4["spread"].dtype == torch.float32
    assert torch.equal(d4["spread"], torch.zeros(2, 1, *size))


def test_d4_mean_and_spread_equal_a_hand_computed_reference() -> None:
    model, x = _conv(), _x()
    turns = [lambda t: t, lambda t: t.flip(-1)]
    views = []
    with torch.no_grad():
        for k in range(4):
            for flip in turns:
                xv = torch.rot90(flip(x), k, dims=(-2, -1))
                views.append(flip(torch.rot90(torch.softmax(model(xv), 1), -k, dims=(-2, -1))))
        out = Predictor(model, tta="d4")(x)
    stack = torch.stack(views)
    mean = stack.mean(0)
    winner = mean.argmax(1, keepdim=True)
    std = stack.std(0).gather(1, winner)
    torch.testing.assert_close(out["probabilities"], mean, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(out["spread"], std, atol=1e-6, rtol=1e-5)
    assert out["spread"].max() > 1e-3  # the model is not equivariant


def test_mc_dropout_samples_dropout_only_and_is_seeded() -> None:
    model = _Dropping()
    running = model.bn.running_mean.clone()
    x = _x()
    rng = torch.get_rng_state()
    with torch.no_grad():
        model.eval()
        first = Predictor(model, tta="mc-dropout=8+seed=3")(x)
        again = Predictor(model, tta="mc-dropout=8+seed=3")(x)
        other = Predictor(model, tta="mc-dropout=8+seed=4")(x)
        plain = Predictor(model)(x)
    assert torch.equal(torch.get_rng_state(), rng)  # a seeded run leaves the global RNG alone
    assert first["spread"].min() >= 0 and first["spread"].mean() > 1e-3
    assert torch.equal(first["spread"], again["spread"])
    assert torch.equal(first["probabilities"], again["probabilities"])
    assert not torch.equal(first["spread"], other["spread"])
    assert not torch.allclose(first["probabilities"], plain["probabilities"])
    assert model.bn_modes and not any(model.bn_modes)  # batch norm stayed in eval
    assert torch.equal(model.bn.running_mean, running)
    assert not model.drop.training  # restored after the passes


def test_mc_dropout_draws_new_masks_for_each_batch() -> None:
    predictor = Predictor(_Dropping().eval(), tta="mc-dropout=4+seed=0")
    x = _x()
    with torch.no_grad():
        a, b = predictor(x)["probabilities"], predictor(x)["probabilities"]
    assert not torch.equal(a, b)


def test_d4_and_mc_dropout_compose() -> None:
    predictor = Predictor(_Dropping().eval(), tta="d4+mc-dropout=2+seed=0")
    assert predictor.n_passes == 16
    with torch.no_grad():
        out = predictor(_x())
    assert out["spread"].shape == (2, 1, 32, 32) and out["spread"].mean() > 1e-3


def test_mc_dropout_without_dropout_names_the_model() -> None:
    with pytest.raises(ConfigError, match="Sequential has no dropout layer"):
        Predictor(_conv(), tta="mc-dropout=8")
    with pytest.raises(ConfigError, match="at least 2 passes"):
        Predictor(_conv(), spread=True)


def test_spread_can_be_switched_off_and_on() -> None:
    model, x = _conv(), _x()
    with torch.no_grad():
        off = Predictor(model, tta="d4", spread=False)(x)
        on = Predictor(model, tta="d4")(x)
        flips = Predictor(model, tta="flips")(x)  # outputs as before: no spread unless asked
        flips_spread = Predictor(model, tta="flips", spread=True)(x)
    assert set(off) == {"probabilities"} and set(flips) == {"probabilities"}
    torch.testing.assert_close(off["probabilities"], on["probabilities"], atol=1e-6, rtol=1e-5)
    four = torch.stack(
        [torch.softmax(model(x.flip(d)), 1).flip(d) for d in ([], [-1], [-2], [-2, -1])]
    )
    std = four.std(0).gather(1, four.mean(0).argmax(1, keepdim=True))
    torch.testing.assert_close(flips_spread["spread"], std, atol=1e-6, rtol=1e-5)


def test_spread_goes_through_the_sliding_window() -> None:
    torch.manual_seed(0)
    model = nn.Conv2d(C, K, 1)
    image = np.random.default_rng(0).random((C, 80, 72), dtype=np.float32)
    maps = predict_maps(Predictor(model, tta="d4"), image, tile_size=32, overlap=8)
    assert maps["spread"].shape == (1, 80, 72)
    np.testing.assert_allclose(maps["spread"], 0.0, atol=1e-7)


@pytest.mark.parametrize("flip", ["none", "h"])
@pytest.mark.parametrize("rot", [0, 1, 2, 3])
def test_each_d4_element_undoes_itself(flip: str, rot: int) -> None:
    view = Augmentation(flip, rot=rot)
    for x in (_x(16, 16), _x(12, 20)):
        y = view.apply(x)
        assert y.shape[-2:] == (x.shape[-2:] if rot % 2 == 0 else x.shape[-2:][::-1])
        assert torch.equal(view.undo(y, tuple(x.shape[-2:])), x)
