"""Tests for the device pipeline: tensor normalisation, precision, nodata tiles, threads,
carried band overlaps, and the spread / class-table outputs."""

from __future__ import annotations

import threading
from pathlib import Path

import albumentations as A
import numpy as np
import pytest
import rasterio
import torch
from rasterio.transform import from_origin
from torch import nn

from polyhead.classes import ClassTable
from polyhead.errors import ConfigError
from polyhead.inference import Predictor, n_tiles, predict_array, predict_maps, predict_raster
from polyhead.inference.pipeline import DeviceNormalize, argmax_classes, auto_batch_size
from polyhead.inference.pipeline_threads import BackgroundWriter, Waits, prefetch
from polyhead.inference.pipeline_writers import MapWriters
from polyhead.inference.raster_inputs import NodataMask

C, K, T, OV = 3, 4, 32, 8


def _conv3(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(C, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, K, 3, padding=1))


class _Counting(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner, self.tiles = inner, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.tiles += x.shape[0]
        return self.inner(x)


def _image(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((C, h, w), dtype=np.float32)


def _write(path: Path, image: np.ndarray, **extra) -> Path:
    profile = dict(driver="GTiff", height=image.shape[1], width=image.shape[2])
    profile.update(count=image.shape[0], dtype=image.dtype.name, crs="EPSG:32633", **extra)
    profile["transform"] = from_origin(400000.0, 5100000.0, 10.0, 10.0)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(image)
    return path


def _read(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read()


def _our_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("polyhead-")]


def _kw(**extra) -> dict:
    return dict(tile_size=T, overlap=OV, progress=False, **extra)


def test_albumentations_compose_runs_on_device_and_matches() -> None:
    image = (_image(40, 50) * 255).round()
    mean, std = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)
    compose = A.Compose([A.Normalize(mean=mean, std=std, max_pixel_value=255.0)])
    norm = DeviceNormalize(compose, C, torch.device("cpu"))
    assert norm.on_device
    tile = torch.from_numpy(image[None, :, :32, :32].copy())
    ref = compose(image=image[:, :32, :32].transpose(1, 2, 0).copy())["image"]
    np.testing.assert_allclose(norm(tile)[0].numpy(), ref.transpose(2, 0, 1), atol=1e-6)
    assert not DeviceNormalize(lambda t: t / 255, C, torch.device("cpu")).on_device
    model = _conv3()
    fn = predict_array(model, image, normalize=lambda t: (t / 255 - mean) / std, **_kw())
    dev = predict_array(model, image, normalize=compose, **_kw())
    np.testing.assert_allclose(dev, fn, atol=1e-5)


@pytest.mark.parametrize("overlap", [8, 24])  # 24 > stride 8: a carry spans several bands
def test_each_tile_once_across_bands_matches_one_band(tmp_path: Path, overlap: int) -> None:
    image = _image(70, 133, seed=5)
    src = _write(tmp_path / "in.tif", image)
    ref = predict_array(_conv3(1), image, tile_size=T, overlap=overlap, batch_size=3)
    for block in (1, 50, 4096):
        model = _Counting(_conv3(1))
        res = predict_raster(
            model, src, tmp_path / f"b{block}.tif", overlap=overlap, batch_size=3,
            write_probabilities=True, block_size=block, tile_size=T, progress=False,
        )  # fmt: skip
        assert model.tiles == res.n_tiles_run == res.n_tiles == n_tiles(70, 133, T, overlap)
        np.testing.assert_allclose(_read(res.probabilities_path), ref, atol=1e-6)


def test_precision_channels_last_and_auto_batch() -> None:
    image, model = _image(60, 70), _conv3()
    ref = predict_array(model, image, **_kw())
    auto = predict_array(model, image, batch_size=None, channels_last=True, **_kw())
    np.testing.assert_allclose(auto, ref, atol=1e-6)
    assert model[0].weight.is_contiguous()  # memory format restored
    bf16 = predict_array(model, image, precision="bf16", **_kw())
    assert 0 < np.abs(bf16 - ref).max() < 0.05
    with pytest.raises(ConfigError, match="fp16.*CUDA"):
        predict_array(model, image, precision="fp16", **_kw())
    with pytest.raises(ConfigError, match="precision"):
        predict_array(model, image, precision="fp8", **_kw())
    with pytest.raises(ConfigError, match="batch_size"):
        predict_array(model, image, batch_size=0, **_kw())
    assert auto_batch_size(model, torch.device("cpu"), (C, T, T), "fp32", False) == 4


def test_nodata_tiles_are_not_run(tmp_path: Path) -> None:
    image = (_image(64, 88, seed=2) * 200 + 1).astype(np.uint8)
    image[:, :32, :56] = 0  # nodata 0: tiles (0, 0) and (0, 24) are nodata only
    image[:, 40, 70] = 0  # one lone nodata pixel
    src = _write(tmp_path / "in.tif", image, nodata=0)
    model = _Counting(_conv3())
    res = predict_raster(model, src, tmp_path / "o.tif", write_probabilities=True, **_kw())
    assert (res.n_tiles, res.n_tiles_nodata, res.n_tiles_run, model.tiles) == (12, 2, 10, 10)
    bad = (image == 0).all(axis=0)
    classes, proba = _read(res.class_map_path)[0], _read(res.probabilities_path)
    assert (classes[bad] == 255).all() and (classes[~bad] < K).all()
    assert np.isnan(proba[:, bad]).all() and np.isfinite(proba[:, ~bad]).all()
    ref = predict_array(_conv3(), image.astype(np.float32), **_kw())  # nodata read as 0
    np.testing.assert_allclose(proba[:, ~bad], ref[:, ~bad], atol=1e-6)


class _SpreadPredictor(Predictor):
    """A predictor that also returns a ``spread`` map (the first band, squared)."""

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {**super().forward(x), "spread": x[:, :1] ** 2}


def test_spread_map_and_class_table_written(tmp_path: Path) -> None:
    image = _image(50, 70, seed=3)
    src = _write(tmp_path / "in.tif", image)
    predictor = _SpreadPredictor(_conv3())
    table = ClassTable.from_config(["water", {"name": "trees", "color": [0, 128, 0]}], K)
    res = predict_raster(
        predictor, src, tmp_path / "p.tif", write_probabilities=True, classes=table, **_kw()
    )
    assert res.spread_path == tmp_path / "p_spread.tif"
    ref = predict_maps(predictor, image, tile_size=T, overlap=OV)["spread"]
    with rasterio.open(res.spread_path) as f:
        assert (f.dtypes[0], f.descriptions, np.isnan(f.nodata)) == ("float32", ("spread",), True)
        np.testing.assert_allclose(f.read(), ref, atol=1e-6)
    np.testing.assert_allclose(ref[0], image[0] ** 2, atol=1e-5)
    with rasterio.open(res.probabilities_path) as f:
        assert f.descriptions == ("water", "trees", "class_2", "class_3")
    with rasterio.open(res.class_map_path) as f:
        cmap = f.colormap(1)
        assert cmap[1] == (0, 128, 0, 255) and cmap[2] == (*table.colors[2], 255)
    plain = predict_raster(_conv3(), src, tmp_path / "q.tif", **_kw())
    assert plain.spread_path is None and not (tmp_path / "q_spread.tif").exists()
    with rasterio.open(plain.class_map_path) as f:
        assert f.colormap(1)[0] == (*ClassTable.default(K).colors[0], 255)
    with pytest.raises(ConfigError, match="names 2 classes"):
        predict_raster(_conv3(), src, tmp_path / "r.tif", classes=ClassTable.default(2), **_kw())
    assert not list(tmp_path.glob("r*")) and not list(tmp_path.glob(".r*"))


def test_reader_and_writer_errors_reach_the_caller(tmp_path: Path, monkeypatch) -> None:
    src = _write(tmp_path / "in.tif", _image(100, 70))
    read, calls = NodataMask.read, []

    def failing_read(self, *args):
        calls.append(args)
        if len(calls) == 3:
            raise OSError("disk gone")
        return read(self, *args)

    monkeypatch.setattr(NodataMask, "read", failing_read)
    with pytest.raises(OSError, match="disk gone"):
        predict_raster(_conv3(), src, tmp_path / "o.tif", write_probabilities=True, **_kw())
    monkeypatch.setattr(NodataMask, "read", read)
    write, writes = MapWriters.write, []

    def failing_write(self, *args, **kwargs):
        writes.append(args)
        if len(writes) == 2:
            raise RuntimeError("write failed")
        return write(self, *args, **kwargs)

    monkeypatch.setattr(MapWriters, "write", failing_write)
    with pytest.raises(RuntimeError, match="write failed"):
        predict_raster(_conv3(), src, tmp_path / "o.tif", write_probabilities=True, **_kw())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.tif"]
    assert not _our_threads()  # no reader or writer thread left behind


def test_prefetch_and_background_writer() -> None:
    def items():
        yield from range(3)
        raise ValueError("bad item")

    got = []
    with pytest.raises(ValueError, match="bad item"):
        for item in prefetch(items(), depth=1):
            got.append(item)
    assert got == [0, 1, 2]
    endless = prefetch(iter(range(10**9)), depth=2)
    assert next(endless) == 0
    endless.close()  # stops the thread
    seen: list[int] = []
    writer = BackgroundWriter(seen.append, depth=1)
    for i in range(5):
        writer.put(i)
    writer.close()
    assert seen == list(range(5))
    assert not _our_threads()


def test_argmax_classes_matches_numpy_first_on_ties() -> None:
    proba = torch.from_numpy(np.random.default_rng(0).random((5, 7, 9), dtype=np.float32))
    proba[:, 0, 0] = 0.2  # a five-way tie: the first class wins, like numpy
    proba[3, 1, 1] = proba[1, 1, 1] = 2.0
    got = argmax_classes(proba)
    assert got.dtype == torch.uint8 and got.shape == (1, 7, 9)
    np.testing.assert_array_equal(got[0].numpy(), proba.numpy().argmax(axis=0))
    assert got[0, 0, 0] == 0 and got[0, 1, 1] == 1


@pytest.mark.parametrize("k", [1, 2, 3, 4, 6, 7, 13])
def test_argmax_classes_any_class_count_with_ties(k: int) -> None:
    rng = np.random.default_rng(k)
    proba = torch.from_numpy(rng.integers(0, 3, (k, 11, 13)).astype(np.float32))  # many ties
    np.testing.assert_array_equal(argmax_classes(proba)[0].numpy(), proba.numpy().argmax(0))


class _BatchSizes(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner, self.sizes = inner, []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.sizes.append(x.shape[0])
        return self.inner(x)


@pytest.mark.parametrize("batch", [5, 16])
def test_full_batches_across_strips(tmp_path: Path, batch: int) -> None:
    image = _image(100, 70, seed=6)  # 4 strips of 3 tiles
    ref = predict_array(_conv3(2), image, tile_size=T, overlap=OV, batch_size=1)
    model = _BatchSizes(_conv3(2))
    got = predict_array(model, image, tile_size=T, overlap=OV, batch_size=batch)
    assert model.sizes == ([5, 5, 2] if batch == 5 else [12])
    np.testing.assert_allclose(got, ref, atol=1e-6)
    src = _write(tmp_path / "in.tif", image)  # 3 bands of 1 tile column: deep accumulators
    model = _BatchSizes(_conv3(2))
    res = predict_raster(model, src, tmp_path / "o.tif", write_probabilities=True,
                         batch_size=batch, block_size=1, **_kw())  # fmt: skip
    assert sum(model.sizes) == 12 and max(model.sizes) <= batch
    np.testing.assert_allclose(_read(res.probabilities_path), ref, atol=1e-6)


def test_train_and_eval_modes_are_restored() -> None:
    model = _conv3().eval()
    predict_array(model, _image(40, 40), **_kw())  # wrapped in a fresh (train-mode) Predictor
    assert not any(m.training for m in model.modules())
    model.train()
    predict_array(model, _image(40, 40), **_kw())
    assert all(m.training for m in model.modules())


def test_waits_count_the_time_spent_on_a_slow_reader_and_writer(tmp_path) -> None:
    import time

    def slow_items():
        for i in range(3):
            time.sleep(0.05)
            yield i

    waits = Waits()
    assert list(prefetch(slow_items(), depth=1, waits=waits)) == [0, 1, 2]
    assert 0.1 <= waits.read < 1.0 and waits.write == 0.0

    writer = BackgroundWriter(lambda _: time.sleep(0.05), depth=1, waits=waits)
    for i in range(3):
        writer.put(i)
    writer.close()  # queue of 1: the puts and the close wait for the slow writes
    assert waits.write >= 0.1

    image = np.random.default_rng(0).random((3, 40, 40), dtype=np.float32)
    with rasterio.open(
        tmp_path / "in.tif", "w", driver="GTiff", width=40, height=40, count=3, dtype="float32"
    ) as dst:
        dst.write(image)
    res = predict_raster(nn.Conv2d(3, 2, 1), tmp_path / "in.tif", tmp_path / "c.tif",
                         tile_size=32, overlap=8, progress=False)  # fmt: skip
    assert res.waits is not None and min(res.waits.read, res.waits.write, res.waits.commit) >= 0
    assert res.waits.commit > 0


def test_auto_batch_size_probes_once_per_predictor_and_setting(monkeypatch) -> None:
    """On CUDA the probe (a forward and two synchronisations) runs once per predictor,
    device, tile shape and precision; the files of a run share its answer."""
    from polyhead.inference import pipeline

    probes = []

    def probe(maps_fn, device, shape, precision, channels_last):
        probes.append((maps_fn, shape, precision))
        return 16 + len(probes)

    monkeypatch.setattr(pipeline, "_probe_batch_size", probe)
    cuda = torch.device("cuda")
    a, b = nn.Conv2d(3, 2, 1), nn.Conv2d(3, 2, 1)
    assert auto_batch_size(a, cuda, (3, 512, 512), "fp32", False) == 17
    assert auto_batch_size(a, cuda, (3, 512, 512), "fp32", False) == 17  # no second probe
    assert auto_batch_size(a, cuda, (3, 512, 512), "bf16", False) == 18
    assert auto_batch_size(b, cuda, (3, 512, 512), "fp32", False) == 19
    assert len(probes) == 3
    assert auto_batch_size(a, torch.device("cpu"), (3, 512, 512), "fp32", False) == 4
