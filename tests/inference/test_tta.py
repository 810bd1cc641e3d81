"""Tests for test-time augmentation (flips, scales) and its use in sliding-window inference."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
import torch.nn.functional as F
from rasterio.transform import Affine
from torch import nn

from polyhead.errors import ConfigError
from polyhead.inference import (
    Predictor,
    TTAModel,
    build_tta,
    predict_array,
    predict_raster,
    tta_from_config,
)
from polyhead.inference.tta import scaled_size

C, K = 3, 4


def _conv(seed: int = 0) -> nn.Module:
    """Not flip-equivariant: asymmetric 3x3 kernels."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(C, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, K, 3, padding=1))


def _x(h: int = 24, w: int = 40, seed: int = 0) -> torch.Tensor:
    return torch.rand(2, C, h, w, generator=torch.Generator().manual_seed(seed))


def test_flips_of_a_pointwise_model_change_nothing() -> None:
    torch.manual_seed(0)
    model = nn.Conv2d(C, K, 1)
    x = _x()
    with torch.no_grad():
        plain = torch.softmax(model(x), 1)
        tta = torch.softmax(TTAModel(model)(x), 1)
    torch.testing.assert_close(tta, plain, atol=1e-6, rtol=1e-5)


def test_flips_equal_hand_computed_average() -> None:
    model, x = _conv(), _x()
    with torch.no_grad():
        out = TTAModel(model, flips=("none", "h", "v", "hv"))(x)
        expected = (
            torch.softmax(model(x), 1)
            + torch.softmax(model(x.flip(-1)), 1).flip(-1)
            + torch.softmax(model(x.flip(-2)), 1).flip(-2)
            + torch.softmax(model(x.flip(-2, -1)), 1).flip(-2, -1)
        ) / 4
        plain = torch.softmax(model(x), 1)
    assert out.shape == (2, K, 24, 40)
    torch.testing.assert_close(out.exp(), expected, atol=1e-6, rtol=1e-5)
    # log-probabilities: a softmax downstream gives back the average exactly
    torch.testing.assert_close(torch.softmax(out, 1), expected, atol=1e-6, rtol=1e-5)
    assert (expected - plain).abs().max() > 1e-3  # the model is not flip-equivariant


@pytest.mark.parametrize("scale", [0.7, 1.3])
def test_scales_at_odd_ratios(scale: float) -> None:
    model, x = _conv(1), _x(50, 70)
    assert (scaled_size(50, scale), scaled_size(70, scale)) == (
        (32, 64) if scale == 0.7 else (64, 96)
    )
    size = (scaled_size(50, scale, 16), scaled_size(70, scale, 16))
    with torch.no_grad():
        out = TTAModel(model, flips=("none",), scales=(1.0, scale), size_divisor=16)(x)
        small = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        back = F.interpolate(model(small), size=(50, 70), mode="bilinear", align_corners=False)
        expected = (torch.softmax(model(x), 1) + torch.softmax(back, 1)) / 2
    assert out.shape == (2, K, 50, 70) and torch.isfinite(out).all()
    torch.testing.assert_close(out.exp(), expected, atol=1e-6, rtol=1e-5)


def test_a_head_of_a_dict_model_through_the_predictor() -> None:
    base = _conv()

    class Heads(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.base = base

        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            return {"A": self.base(x), "B": -self.base(x)}

    x = _x()
    with torch.no_grad():
        torch.testing.assert_close(  # the one prediction path: a head of a multi-head model
            Predictor(_AsPolyhead(Heads()), head="A", tta="flips")(x)["probabilities"],
            TTAModel(base)(x).exp(),
            atol=1e-6,
            rtol=1e-5,
        )
        with pytest.raises(ConfigError, match="Predictor"):
            TTAModel(Heads())(x)


class _AsPolyhead(nn.Module):
    """A dict-returning network under the polyhead model contract (heads picked by name)."""

    inference_head = "A"

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net, self.heads = net, {}

    def heads_for(self, selection: str) -> list[str]:
        return [selection]

    def class_logits(self, outputs, selection: str) -> torch.Tensor:
        return outputs[selection]

    def class_probabilities(self, outputs, selection: str) -> torch.Tensor:
        return torch.softmax(outputs[selection], dim=1)

    def forward_heads(self, x: torch.Tensor, heads=None) -> dict[str, torch.Tensor]:
        return self.net(x)


def _flipped_probs(model: nn.Module, x: torch.Tensor, dims: tuple[int, ...]) -> np.ndarray:
    if not dims:
        return torch.softmax(model(x), 1)[0].numpy()
    return torch.softmax(model(x.flip(dims)), 1).flip(dims)[0].numpy()


def test_works_with_predict_array_and_raster(tmp_path: Path) -> None:
    """One 64 px tile: blended probabilities are exactly the TTA average."""
    model = _conv(2)
    image = np.random.default_rng(0).random((C, 64, 64), dtype=np.float32)
    tta = TTAModel(model, flips=("none", "h", "v", "hv"))
    x = torch.from_numpy(image[None])
    with torch.no_grad():
        expected = torch.softmax(tta(x), 1)[0].numpy()
        hand = np.mean([_flipped_probs(model, x, d) for d in ((), (-1,), (-2,), (-2, -1))], 0)
    np.testing.assert_allclose(expected, hand, atol=1e-6)
    probs = predict_array(tta, image, tile_size=64, overlap=0)
    np.testing.assert_allclose(probs, hand, atol=1e-5)
    path = tmp_path / "in.tif"
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        height=64,
        width=64,
        count=C,
        dtype="float32",
        crs="EPSG:32633",
        transform=Affine(10, 0, 4e5, 0, -10, 5e6),
    ) as dst:
        dst.write(image)
    result = predict_raster(
        tta,
        path,
        tmp_path / "out.tif",
        tile_size=64,
        overlap=0,
        write_probabilities=True,
        progress=False,
    )
    with rasterio.open(result.probabilities_path) as src:
        np.testing.assert_allclose(src.read(), hand, atol=1e-5)
    with rasterio.open(result.class_map_path) as src:
        assert (src.read(1) == hand.argmax(0)).all()


def test_build_tta_parses_specs() -> None:
    assert build_tta("flips") == {"flips": ("none", "h", "v", "hv"), "scales": (1.0,)}
    assert build_tta("flips+scales=0.75,1,1.25") == {
        "flips": ("none", "h", "v", "hv"),
        "scales": (0.75, 1.0, 1.25),
    }
    assert build_tta("hflip+scales") == {"flips": ("none", "h"), "scales": (0.75, 1.0, 1.25)}
    assert build_tta("flips=v + size_divisor=16") == {
        "flips": ("none", "v"),
        "scales": (1.0,),
        "size_divisor": 16,
    }
    assert build_tta("none") == {"flips": ("none",), "scales": (1.0,)}
    for bad in ("", "rotate", "scales=a,b", "flips=x", "scales=0", "size_divisor=x"):
        with pytest.raises(ConfigError):
            build_tta(bad)


def test_tta_from_config() -> None:
    assert tta_from_config(None) is None and tta_from_config("none") is None
    assert tta_from_config({"enabled": False}) is None
    assert tta_from_config("vflip") == {"flips": ("none", "v"), "scales": (1.0,)}
    assert tta_from_config({"flips": ["none", "h"], "scales": [1, 1.5]}) == {
        "flips": ("none", "h"),
        "scales": (1.0, 1.5),
        "size_divisor": 32,
    }
    kwargs = tta_from_config({"flips": True, "scales": 1})
    assert kwargs is not None and TTAModel(nn.Identity(), **kwargs).n_passes == 4
    for bad in ({"flip": ["h"]}, {"scales": []}, {"flips": ["z"]}, 3):
        with pytest.raises(ConfigError):
            tta_from_config(bad)  # type: ignore[arg-type]


def test_d4_views_are_the_eight_symmetries_of_the_square() -> None:
    x = _x(16, 16)
    kwargs = build_tta("d4")
    assert kwargs == {"flips": ("none", "h"), "rotations": (0, 1, 2, 3), "scales": (1.0,)}
    views = [v.apply(x) for v in TTAModel(nn.Identity(), **kwargs).views]
    t = x.transpose(-2, -1)
    expected = [
        x,
        x.flip(-1),
        x.flip(-2),
        x.flip(-2, -1),
        t,
        t.flip(-1),
        t.flip(-2),
        t.flip(-2, -1),
    ]
    for want in expected:  # each symmetry exactly once
        assert sum(torch.equal(v, want) for v in views) == 1


def test_d4_tta_model_equals_hand_computed_average() -> None:
    model, x = _conv(3), _x(32, 48)  # non-square: turned views are 48 x 32
    with torch.no_grad():
        out = TTAModel(model, **build_tta("d4"))(x).exp()
        views = [
            torch.rot90(
                torch.softmax(model(torch.rot90(flip(x), k, dims=(-2, -1))), 1), -k, (-2, -1)
            )
            for k in range(4)
            for flip in (lambda t: t, lambda t: t.flip(-1))
        ]
        views = [v if i % 2 == 0 else v.flip(-1) for i, v in enumerate(views)]
    torch.testing.assert_close(out, torch.stack(views).mean(0), atol=1e-6, rtol=1e-5)


def test_build_tta_parses_d4_and_mc_dropout() -> None:
    assert build_tta("mc-dropout=4") == {"flips": ("none",), "scales": (1.0,), "mc_dropout": 4}
    assert build_tta("mc_dropout")["mc_dropout"] == 8
    assert build_tta("d4+mc-dropout=2+seed=5+scales=1,1.5") == {
        "flips": ("none", "h"),
        "rotations": (0, 1, 2, 3),
        "scales": (1.0, 1.5),
        "mc_dropout": 2,
        "seed": 5,
    }
    for bad, match in (
        ("d4+flips", "d4 already holds every flip"),
        ("mc-dropout=1", "samples >= 2"),
        ("mc-dropout=x", "mc-dropout must be an integer"),
        ("seed=3", "add mc-dropout"),
        ("d4=2", "unknown TTA part"),
    ):
        with pytest.raises(ConfigError, match=match):
            build_tta(bad)
    assert tta_from_config({"flips": ["none", "h"], "rotations": [0, 1, 2, 3], "mc_dropout": 3})[
        "rotations"
    ] == (0, 1, 2, 3)
    for bad in ({"rotations": [4]}, {"mc_dropout": 1}, {"mc_dropout": 2.5}):
        with pytest.raises(ConfigError):
            tta_from_config(bad)


def test_tta_model_mc_dropout_needs_dropout_and_is_seeded() -> None:
    with pytest.raises(ConfigError, match="Sequential has no dropout layer"):
        TTAModel(_conv(), **build_tta("mc-dropout=4"))
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(C, 8, 3, padding=1), nn.Dropout(0.5), nn.Conv2d(8, K, 1))
    x = _x()
    with torch.no_grad():
        a = TTAModel(net.eval(), **build_tta("mc-dropout=4+seed=1"))(x)
        b = TTAModel(net.eval(), **build_tta("mc-dropout=4+seed=1"))(x)
        plain = torch.log_softmax(net(x), 1)
    assert torch.equal(a, b) and not torch.allclose(a, plain, atol=1e-3)
    assert not net[1].training
