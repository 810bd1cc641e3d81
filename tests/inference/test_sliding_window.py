"""Tests for sliding-window inference over arrays and GeoTIFFs."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from rasterio.transform import Affine
from torch import nn

from polyhead.errors import ConfigError, DataError
from polyhead.inference import (
    Predictor,
    blend_window,
    n_tiles,
    predict_array,
    predict_maps,
    predict_raster,
    tile_starts,
)
from polyhead.inference.raster_inputs import GDAL_CACHE_BYTES
from polyhead.inference.tiling import band_layout, n_tiles_run, tiles_per_band

C, K, T, OV = 3, 4, 32, 8
TRANSFORM = Affine(10.0, 0.0, 400000.0, 0.0, -10.0, 5100000.0)


def _pointwise(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Conv2d(C, K, 1)


def _conv3(seed: int = 0) -> nn.Module:
    """Two zero-padded 3x3 convs: receptive-field radius 2."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(C, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, K, 3, padding=1))


def _whole(model: nn.Module, image: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return torch.softmax(model(torch.from_numpy(image[None].astype(np.float32))), 1)[0].numpy()


def _image(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((C, h, w), dtype=np.float32)


def _write(path: Path, image: np.ndarray) -> Path:
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        height=image.shape[1],
        width=image.shape[2],
        count=image.shape[0],
        dtype=image.dtype.name,
        crs="EPSG:32633",
        transform=TRANSFORM,
    ) as dst:
        dst.write(image)
    return path


def _read(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read()


def _safe(h: int, w: int, r: int) -> np.ndarray:
    """Pixels whose every covering tile sees them at least ``r`` px from an inner tile edge."""
    ok = np.ones((h, w), bool)
    for y0 in tile_starts(h, T, OV):
        for x0 in tile_starts(w, T, OV):
            cover = np.zeros((h, w), bool)
            cover[y0 : y0 + T, x0 : x0 + T] = True
            top, left = (r if y0 > 0 else 0), (r if x0 > 0 else 0)
            bottom, right = (r if y0 + T < h else 0), (r if x0 + T < w else 0)
            safe = np.zeros((h, w), bool)
            safe[y0 + top : y0 + T - bottom, x0 + left : x0 + T - right] = True
            ok &= ~cover | safe
    return ok


def test_tile_starts_and_windows() -> None:
    assert tile_starts(100, 32, 8) == [0, 24, 48, 68]
    assert tile_starts(70, 32, 8) == [0, 24, 38]
    assert tile_starts(32, 32, 8) == [0] and tile_starts(20, 32, 8) == [0]
    assert tile_starts(64, 32, 0) == [0, 32]
    for blend in ("gaussian", "linear", "none"):
        w = blend_window(32, 8, blend)
        assert w.shape == (32, 32) and w.min() > 0 and w.max() == pytest.approx(1.0)
        np.testing.assert_allclose(w, w.T)


def test_georeferencing_copied(tmp_path: Path) -> None:
    src = _write(tmp_path / "in.tif", _image(100, 70))
    res = predict_raster(
        _conv3(),
        src,
        tmp_path / "out" / "pred.tif",
        tile_size=T,
        overlap=OV,
        batch_size=3,
        progress=False,
    )
    assert res.shape == (100, 70) and res.n_classes == K and res.n_tiles == 12
    assert res.class_map_path == tmp_path / "out" / "pred.tif" and res.probabilities_path is None
    with rasterio.open(res.class_map_path) as out:
        assert (out.count, out.dtypes[0], out.height, out.width) == (1, "uint8", 100, 70)
        assert out.crs.to_epsg() == 32633 and out.transform == TRANSFORM
        assert out.profile["tiled"] and out.profile["compress"] == "deflate"
        assert out.read().max() < K


@pytest.mark.parametrize("blend", ["gaussian", "linear", "none"])
def test_pointwise_model_matches_whole_image(blend: str) -> None:
    image, model = _image(100, 70), _pointwise()
    proba = predict_array(model, image, tile_size=T, overlap=OV, batch_size=2, blend=blend)
    assert proba.shape == (K, 100, 70) and proba.dtype == np.float32
    np.testing.assert_allclose(proba, _whole(model, image), atol=1e-5)


def test_conv_model_matches_whole_image_in_tile_interiors() -> None:
    image, model = _image(100, 70), _conv3()
    proba = predict_array(model, image, tile_size=T, overlap=OV, batch_size=4)
    ref = _whole(model, image)
    safe = _safe(100, 70, r=2)
    assert safe.mean() > 0.5
    np.testing.assert_allclose(proba[:, safe], ref[:, safe], atol=1e-5)
    assert np.abs(proba - ref)[:, ~safe].max() > 1e-4  # near tile seams it does differ
    np.testing.assert_allclose(proba.sum(axis=0), 1.0, atol=1e-5)


def test_batch_size_does_not_matter() -> None:
    image, model = _image(60, 90), _conv3(1)
    a = predict_array(model, image, tile_size=T, overlap=OV, batch_size=1)
    b = predict_array(model, image, tile_size=T, overlap=OV, batch_size=7)
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_raster_smaller_than_tile(tmp_path: Path) -> None:
    image = _image(20, 25)
    src = _write(tmp_path / "small.tif", image)
    res = predict_raster(
        _pointwise(),
        src,
        tmp_path / "small_pred.tif",
        tile_size=T,
        overlap=OV,
        write_probabilities=True,
        progress=False,
    )
    assert res.n_tiles == 1 and res.shape == (20, 25)
    np.testing.assert_allclose(
        _read(res.probabilities_path), _whole(_pointwise(), image), atol=1e-5
    )
    assert _read(res.class_map_path).shape == (1, 20, 25)
    # a 3x3 model differs from whole-image inference only next to the padded edges
    model = _conv3()
    proba = predict_array(model, image, tile_size=T, overlap=OV)
    np.testing.assert_allclose(proba[:, :-2, :-2], _whole(model, image)[:, :-2, :-2], atol=1e-5)
    # one-pixel-wide rasters too
    assert predict_array(model, _image(1, 40), tile_size=T, overlap=OV).shape == (K, 1, 40)


class _FailingModel(nn.Module):
    def __init__(self, fail_at: int) -> None:
        super().__init__()
        self.inner, self.calls, self.fail_at = _pointwise(), 0, fail_at

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls == self.fail_at:
            raise RuntimeError("boom")
        return self.inner(x)


def test_no_partial_output_on_failure(tmp_path: Path) -> None:
    src = _write(tmp_path / "in.tif", _image(100, 70))
    model = _FailingModel(fail_at=5)  # 2 batches per strip: fails in strip 3, rows already written
    with pytest.raises(RuntimeError, match="boom"):
        predict_raster(
            model,
            src,
            tmp_path / "pred.tif",
            tile_size=T,
            overlap=OV,
            batch_size=2,
            write_probabilities=True,
            progress=False,
        )
    assert model.calls == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.tif"]
    assert model.training  # train mode restored


def test_probabilities_file(tmp_path: Path) -> None:
    src = _write(tmp_path / "in.tif", _image(100, 70))
    res = predict_raster(
        _conv3(),
        src,
        tmp_path / "pred.tif",
        tile_size=T,
        overlap=OV,
        write_probabilities=True,
        progress=False,
    )
    assert res.probabilities_path == tmp_path / "pred_proba.tif"
    with rasterio.open(res.probabilities_path) as f:
        assert (f.count, f.dtypes[0]) == (K, "float32")
        assert f.crs.to_epsg() == 32633 and f.transform == TRANSFORM
        proba = f.read()
    np.testing.assert_allclose(proba.sum(axis=0), 1.0, atol=1e-5)
    np.testing.assert_array_equal(_read(res.class_map_path)[0], proba.argmax(axis=0))
    res8 = predict_raster(
        _conv3(),
        src,
        tmp_path / "pred8.tif",
        tile_size=T,
        overlap=OV,
        write_probabilities=True,
        probabilities_path=tmp_path / "p8.tif",
        probabilities_dtype="uint8",
        progress=False,
    )
    p8 = _read(res8.probabilities_path)
    assert p8.dtype == np.uint8 and p8.shape == (K, 100, 70)
    assert np.all(np.abs(p8.sum(axis=0, dtype=np.int32) - 255) <= K)


def test_normalize_callable_and_albumentations(tmp_path: Path) -> None:
    import albumentations as A

    image, model = (_image(40, 50) * 255).round(), _pointwise()
    mean, std = np.array([0.4, 0.5, 0.6]), np.array([0.2, 0.25, 0.3])
    ref = _whole(
        model, ((image / 255 - mean[:, None, None]) / std[:, None, None]).astype(np.float32)
    )
    fn = predict_array(
        model, image, tile_size=T, overlap=OV, normalize=lambda t: (t / 255 - mean) / std
    )
    alb = predict_array(
        model,
        image,
        tile_size=T,
        overlap=OV,
        normalize=A.Normalize(mean=mean, std=std, max_pixel_value=255.0),
    )
    np.testing.assert_allclose(fn, ref, atol=1e-5)
    np.testing.assert_allclose(alb, ref, atol=1e-5)


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
def test_png_input_multihead_output_and_progress(tmp_path: Path) -> None:
    image = (_image(50, 40) * 255).astype(np.uint8)
    png = tmp_path / "in.png"
    with rasterio.open(png, "w", driver="PNG", height=50, width=40, count=C, dtype="uint8") as d:
        d.write(image)

    model = _TwoHeads()
    res = predict_raster(
        Predictor(model, head="b"),
        png,
        tmp_path / "png_pred.tif",
        tile_size=T,
        overlap=OV,
        progress=True,
    )
    assert res.n_classes == 2
    with rasterio.open(res.class_map_path) as out:
        assert out.crs is None and out.shape == (50, 40)
    with pytest.raises(ConfigError, match="logits tensor"):  # a dict needs a head
        predict_array(_DictOutput(), image, tile_size=T, overlap=OV)


class _Head(nn.Module):
    """A head of the polyhead contract: a role, a class-map flag, an activation."""

    def __init__(self, role: str) -> None:
        super().__init__()
        self.role, self.class_map = role, role != "uncertainty"

    def activate(self, raw: torch.Tensor) -> torch.Tensor:
        return raw.clamp_min(0.0) if self.role == "uncertainty" else torch.softmax(raw, 1)


class _TwoHeads(nn.Module):
    """Heads ``a`` (K classes) and ``b`` (2 classes) of one pointwise model; ``u`` a map of
    its own (x^2 of the first band), like a distilled student's uncertainty head."""

    inference_head = "a"

    def __init__(self) -> None:
        super().__init__()
        self.net = _pointwise()
        self.heads = nn.ModuleDict(
            {"a": _Head("hard"), "b": _Head("hard"), "u": _Head("uncertainty")}
        )

    def heads_for(self, selection: str) -> list[str]:
        return [selection]

    def class_logits(self, outputs, selection: str) -> torch.Tensor:
        return outputs[selection]

    def class_probabilities(self, outputs, selection: str) -> torch.Tensor:
        return torch.softmax(outputs[selection], dim=1)

    def forward_heads(self, x: torch.Tensor, heads=None) -> dict[str, torch.Tensor]:
        out = {"a": self.net(x), "b": self.net(x)[:, :2], "u": x[:, :1] ** 2}
        return {k: out[k] for k in (heads or out)}


class _DictOutput(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = _pointwise()

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"a": self.a(x), "b": self.a(x)[:, :2]}


def test_bad_arguments(tmp_path: Path) -> None:
    src = _write(tmp_path / "in.tif", _image(40, 40))
    with pytest.raises(ConfigError, match="multiple of 32"):
        predict_raster(_pointwise(), src, tmp_path / "o.tif", tile_size=48, progress=False)
    with pytest.raises(ConfigError, match="overlap"):
        predict_array(_pointwise(), _image(40, 40), tile_size=32, overlap=32)
    with pytest.raises(ConfigError, match="blend"):
        predict_array(_pointwise(), _image(40, 40), tile_size=32, overlap=8, blend="cosine")
    with pytest.raises(ConfigError, match="probabilities_dtype"):
        predict_raster(
            _pointwise(),
            src,
            tmp_path / "o.tif",
            tile_size=32,
            overlap=8,
            probabilities_dtype="float16",
            progress=False,
        )
    with pytest.raises(ConfigError, match="differ"):
        predict_raster(_pointwise(), src, src, tile_size=32, overlap=8, progress=False)
    with pytest.raises(DataError):
        predict_raster(
            _pointwise(), tmp_path / "missing.tif", tmp_path / "o.tif", tile_size=32, overlap=8
        )
    with pytest.raises(ConfigError, match="output must be"):
        predict_array(nn.Conv2d(C, K, 3), _image(40, 40), tile_size=32, overlap=8)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.tif"]


def test_peak_memory_does_not_grow_with_height(tmp_path: Path) -> None:
    peaks = []
    # 320 rows already fill the read-ahead and write-behind queues (a fixed few blocks)
    for h in (320, 1280):
        src = _write(tmp_path / f"h{h}.tif", _image(h, 64))
        tracemalloc.start()
        predict_raster(
            _pointwise(),
            src,
            tmp_path / f"p{h}.tif",
            tile_size=T,
            overlap=OV,
            write_probabilities=True,
            progress=False,
        )
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    # 4x the rows: growth well under a quarter of what [K, H, W] float32 maps would add
    assert peaks[1] - peaks[0] < K * (1280 - 320) * 64 * 4 / 4, peaks
    # a whole [K, H, W] float32 array for the tall raster would be far larger
    assert peaks[1] < K * 1280 * 64 * 4 / 2, peaks


def test_band_layout() -> None:
    # stride 24: 256 / gcd(24, 256) = 32 tile columns put a border on a 256-px block
    assert tiles_per_band(32, 8, 64) == 2 and tiles_per_band(32, 8, 1) == 1
    assert tiles_per_band(32, 8, 800) == 32 and tiles_per_band(32, 8, 1000) == 32
    assert tiles_per_band(512, 64, 4096) == 8  # 8 x 448 = 3584 = 14 x 256
    xs = tile_starts(133, 32, 8)
    assert xs == [0, 24, 48, 72, 96, 101]
    assert band_layout(133, 32, 8, 64) == [
        (0, 48, [0, 24]),
        (48, 96, [48, 72]),
        (96, 133, [96, 101]),
    ]
    assert band_layout(133, 32, 8, 4096) == [(0, 133, xs)]
    assert band_layout(20, 32, 8, 4096) == [(0, 20, [0])]
    # every tile of the grid in exactly one band
    assert n_tiles_run(100, 133, 32, 8, 64) == n_tiles(100, 133, 32, 8) == 4 * 6
    with pytest.raises(ConfigError, match="block_size"):
        band_layout(100, 32, 8, 0)


class _Counting(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner, self.tiles = inner, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.tiles += x.shape[0]
        return self.inner(x)


def test_bands_match_one_band_and_predict_array(tmp_path: Path) -> None:
    image = _image(101, 133, seed=3)  # odd sizes; 4 x 6 tiles, last ones shifted
    src = _write(tmp_path / "in.tif", image)
    ref = predict_array(_conv3(2), image, tile_size=T, overlap=OV, batch_size=3)
    outs = {}
    for block in (4096, 64, 40):  # 1, 3 and 6 bands
        model = _Counting(_conv3(2))
        res = predict_raster(
            model,
            src,
            tmp_path / f"b{block}.tif",
            tile_size=T,
            overlap=OV,
            batch_size=3,
            write_probabilities=True,
            write_uncertainty=True,
            progress=False,
            block_size=block,
        )
        assert res.n_tiles == 24 and res.n_tiles_run == model.tiles
        assert res.n_tiles_run == n_tiles_run(101, 133, T, OV, block)
        outs[block] = [_read(p) for p in (res.class_map_path, res.probabilities_path)]
        outs[block].append(_read(res.uncertainty_path))
    assert outs[4096][0].shape == (1, 101, 133) and outs[40][1].shape == (K, 101, 133)
    np.testing.assert_allclose(outs[4096][1], ref, atol=1e-6)
    for block in (64, 40):
        np.testing.assert_array_equal(outs[block][0], outs[4096][0])
        np.testing.assert_allclose(outs[block][1], outs[4096][1], atol=1e-6)
        np.testing.assert_allclose(outs[block][2], outs[4096][2], atol=1e-6)
        np.testing.assert_allclose(outs[block][1], ref, atol=1e-6)


def test_peak_memory_does_not_grow_with_width(tmp_path: Path) -> None:
    peaks = []
    for w in (96, 960):
        src = _write(tmp_path / f"w{w}.tif", _image(64, w))
        tracemalloc.start()
        predict_raster(
            _pointwise(),
            src,
            tmp_path / f"p{w}.tif",
            tile_size=T,
            overlap=OV,
            write_probabilities=True,
            progress=False,
            block_size=64,
        )
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    # full-width strips of K float32 probabilities would add at least K * T * 864 * 4 bytes
    assert peaks[1] - peaks[0] < K * T * (960 - 96) * 4 / 4, peaks


def test_gdal_cache_capped_while_predicting(tmp_path: Path, monkeypatch) -> None:
    from rasterio.env import get_gdal_config

    class Probe(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner, self.seen = _pointwise(), []

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.seen.append(get_gdal_config("GDAL_CACHEMAX"))
            return self.inner(x)

    monkeypatch.delenv("GDAL_CACHEMAX", raising=False)
    src, model = _write(tmp_path / "in.tif", _image(40, 40)), Probe()
    predict_raster(model, src, tmp_path / "o.tif", tile_size=T, overlap=OV, progress=False)
    assert model.seen and {int(v) for v in model.seen} == {GDAL_CACHE_BYTES}
    model.seen.clear()
    with rasterio.Env(GDAL_CACHEMAX=32 * 2**20):  # the user's setting wins
        predict_raster(model, src, tmp_path / "o.tif", tile_size=T, overlap=OV, progress=False)
    assert model.seen and {int(v) for v in model.seen} == {32 * 2**20}


def test_own_uncertainty_head_is_blended_and_written(tmp_path: Path) -> None:
    image = _image(70, 90, seed=4)
    src = _write(tmp_path / "in.tif", image)
    model = Predictor(_TwoHeads(), uncertainty=True)
    maps = predict_maps(model, image, tile_size=T, overlap=OV)
    ref = np.concatenate([maps["probabilities"], maps["uncertainty"]])
    assert ref.shape == (K + 1, 70, 90)
    np.testing.assert_allclose(
        ref[:K], predict_array(model.model.net, image, tile_size=T, overlap=OV), atol=1e-6
    )  # blending probabilities is linear
    for block in (4096, 40):
        res = predict_raster(
            model,
            src,
            tmp_path / f"b{block}.tif",
            tile_size=T,
            overlap=OV,
            write_probabilities=True,
            write_uncertainty=True,
            progress=False,
            block_size=block,
        )
        assert res.n_classes == K
        np.testing.assert_allclose(_read(res.probabilities_path), ref[:K], atol=1e-6)
        np.testing.assert_array_equal(_read(res.class_map_path)[0], ref[:K].argmax(axis=0))
        np.testing.assert_allclose(_read(res.uncertainty_path)[0], ref[K], atol=1e-6)
    # the own band is blended like the probabilities: equal to x^2 where tiles see the same x
    np.testing.assert_allclose(ref[K], image[0] ** 2, atol=1e-5)
