"""predict options for large areas: GDAL threads (io_threads), overviews, uint8 probabilities
and resuming (skip_existing)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from rasterio.env import get_gdal_config
from rasterio.transform import from_origin
from torch import nn

from polyhead.errors import ConfigError, PolyheadError
from polyhead.inference import pipeline_writers, predict_raster, raster_inputs
from polyhead.inference.pipeline import auto_io_threads
from polyhead.inference.predict import predict_files
from polyhead.inference.raster_inputs import gdal_env

C, K = 3, 4


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(C, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, K, 3, padding=1))


def _deflate_raster(path: Path, size: int = 96) -> Path:
    """A deflate-compressed, 16-px-tiled input: each read spans several blocks."""
    image = (np.random.default_rng(0).random((C, size, size)) * 255).astype(np.uint8)
    profile = dict(
        driver="GTiff", height=size, width=size, count=C, dtype="uint8", crs="EPSG:32633",
        transform=from_origin(400000.0, 5100000.0, 10.0, 10.0), tiled=True, blockxsize=16,
        blockysize=16, compress="deflate",
    )  # fmt: skip
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(image)
    return path


def test_auto_io_threads_by_device(monkeypatch) -> None:
    cuda = torch.device("cuda")
    assert auto_io_threads(None, torch.device("cpu")) == 1
    assert auto_io_threads(3, torch.device("cpu")) == 3
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(16)), raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert auto_io_threads(None, cuda) == 16
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")  # 4 GPU processes share the machine
    assert auto_io_threads(None, cuda) == 4
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "32")
    assert auto_io_threads(None, cuda) == 1


@pytest.mark.parametrize("bad", [0, -2, 1.5, True, "4"])
def test_bad_io_threads_are_refused(bad) -> None:
    with pytest.raises(ConfigError, match="io_threads must be an integer >= 1"):
        auto_io_threads(bad, torch.device("cpu"))


def test_gdal_env_sets_threads_and_keeps_the_users(monkeypatch) -> None:
    monkeypatch.delenv("GDAL_NUM_THREADS", raising=False)
    with gdal_env(1):
        assert get_gdal_config("GDAL_NUM_THREADS") is None
    with gdal_env(3):
        assert get_gdal_config("GDAL_NUM_THREADS") == 3  # rasterio reads numbers back
    with rasterio.Env(GDAL_NUM_THREADS="2"), gdal_env(6):
        assert get_gdal_config("GDAL_NUM_THREADS") == 2


def test_threads_reach_the_reader_and_writer_and_outputs_are_unchanged(
    tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.delenv("GDAL_NUM_THREADS", raising=False)
    image = _deflate_raster(tmp_path / "in.tif")
    seen: dict[str, list] = {"read": [], "write": []}
    read, write = raster_inputs.NodataMask.read, pipeline_writers.MapWriters.write

    def reading(self, *args):
        seen["read"].append(get_gdal_config("GDAL_NUM_THREADS"))
        return read(self, *args)

    def writing(self, *args, **kwargs):
        seen["write"].append(get_gdal_config("GDAL_NUM_THREADS"))
        return write(self, *args, **kwargs)

    monkeypatch.setattr(raster_inputs.NodataMask, "read", reading)
    monkeypatch.setattr(pipeline_writers.MapWriters, "write", writing)
    outs = {}
    for threads in (1, 3):
        seen["read"].clear(), seen["write"].clear()
        outs[threads] = predict_raster(
            _model(), image, tmp_path / f"t{threads}.tif", tile_size=32, overlap=8,
            block_size=48, write_probabilities=True, progress=False, io_threads=threads,
        )  # fmt: skip
        want = None if threads == 1 else threads
        assert seen["read"] and set(seen["read"]) == {want}
        assert seen["write"] and set(seen["write"]) == {want}
    assert get_gdal_config("GDAL_NUM_THREADS") is None  # restored afterwards
    for key in ("class_map_path", "probabilities_path"):
        with rasterio.open(getattr(outs[1], key)) as a, rasterio.open(getattr(outs[3], key)) as b:
            np.testing.assert_array_equal(a.read(), b.read())
            assert repr(a.profile) == repr(b.profile)  # nodata NaN != NaN


def test_predict_files_refuses_bad_options_before_writing(tmp_path: Path) -> None:
    image = _deflate_raster(tmp_path / "in.tif", size=32)
    model = _model()
    model.in_channels = C
    with pytest.raises(PolyheadError, match="io_threads"):
        predict_files(model, [image], tmp_path / "out", io_threads=0, progress=False)
    with pytest.raises(PolyheadError, match="probabilities_dtype must be one of"):
        predict_files(model, [image], tmp_path / "out", probabilities_dtype="f16", progress=False)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("crf", [False, True])
def test_uint8_probabilities_reach_every_path(tmp_path: Path, crf: bool) -> None:
    image = _deflate_raster(tmp_path / "in.tif", size=48)
    model = _model()
    model.in_channels = C
    kw = dict(tile_size=32, overlap=8, write_probabilities=True, progress=False, crf=crf)
    predict_files(model, [image], tmp_path / "f", **kw)
    predict_files(model, [image], tmp_path / "u", probabilities_dtype="uint8", **kw)
    with (
        rasterio.open(tmp_path / "f" / "in_proba.tif") as f,
        rasterio.open(tmp_path / "u" / "in_proba.tif") as u,
    ):
        assert (f.dtypes[0], u.dtypes[0]) == ("float32", "uint8")
        np.testing.assert_array_equal(u.read(), np.clip(np.rint(f.read() * 255), 0, 255))


def test_overviews_in_every_output_and_in_row_block_parts(tmp_path: Path) -> None:

    from functools import partial

    from polyhead.inference import distributed
    from polyhead.inference.predict import _predict_one

    image = _deflate_raster(tmp_path / "in.tif", size=600)
    opts = dict(tile_size=64, overlap=16, progress=False, write_probabilities=True)
    plain = predict_raster(_model(), image, tmp_path / "plain.tif", **opts)
    res = predict_raster(_model(), image, tmp_path / "ovr.tif", overviews=True, **opts)
    for key in ("class_map_path", "probabilities_path"):
        with rasterio.open(getattr(res, key)) as a, rasterio.open(getattr(plain, key)) as b:
            assert a.overviews(1) == [2, 4] and b.overviews(1) == []
            np.testing.assert_array_equal(a.read(), b.read())
    with rasterio.open(res.class_map_path) as src:
        assert src.tags(ns="rio_overview")["resampling"] == "mode"
    options = {**opts, "overviews": True}
    parts = distributed.plan_parts([(image, 600, 600)], 2, 64, 16)
    out = tmp_path / "parts"
    for part in parts:
        predict_one = partial(_predict_one, predict_raster, _model(), options)
        for path in distributed.predict_part(part, predict_one, out, 64, 16):
            with rasterio.open(path) as src:
                assert src.overviews(1) == [2, 4], path  # 600 columns: two levels
    mosaics = distributed.write_mosaics(parts, out)
    with rasterio.open(mosaics["classes"]) as vrt, rasterio.open(res.class_map_path) as whole:
        assert vrt.overviews(1) == [2, 4]  # declared by the VRT, read from the parts'
        np.testing.assert_array_equal(vrt.read(), whole.read())


def test_skip_existing_predicts_only_the_images_with_missing_outputs(tmp_path: Path) -> None:
    from polyhead.inference.resume import finished_outputs

    images = [_deflate_raster(tmp_path / f"{name}.tif", size=40) for name in ("a", "b", "c")]
    out = tmp_path / "out"

    class Counting(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner, self.tiles, self.in_channels = _model(), 0, C

        def forward(self, x):
            self.tiles += x.shape[0]
            return self.inner(x)

    kw = dict(tile_size=32, overlap=8, write_probabilities=True, progress=False)
    first = Counting()
    written = predict_files(first, images, out, **kw)
    (out / "b_proba.tif").unlink()  # b lacks an output: predicted again
    kept = (out / "a_classes.tif").stat().st_mtime_ns
    assert sorted(finished_outputs(images, out, write_probabilities=True)) == [images[0], images[2]]
    assert finished_outputs(images, out, write_uncertainty=True) == {}
    again = Counting()
    assert predict_files(again, images, out, skip_existing=True, **kw) == written
    assert again.tiles == first.tiles // 3  # one image of three
    assert (out / "b_proba.tif").is_file()
    assert (out / "a_classes.tif").stat().st_mtime_ns == kept
    (out / "a_classes.tif").rename(out / "a_classes.vrt")  # a split raster's mosaic counts
    assert finished_outputs(images[:1], out, write_probabilities=False) == {
        images[0]: out / "a_classes.vrt"
    }
    none = Counting()
    assert predict_files(none, images[1:], out, skip_existing=True, **kw) == written[1:]
    assert none.tiles == 0


def test_rows_writes_only_those_rows_of_the_whole_prediction(tmp_path: Path) -> None:
    image = _deflate_raster(tmp_path / "in.tif", size=96)
    opts = dict(tile_size=32, overlap=8, write_probabilities=True, progress=False)
    whole = predict_raster(_model(), image, tmp_path / "whole.tif", **opts)
    part = predict_raster(_model(), image, tmp_path / "part.tif", rows=(17, 70), **opts)
    assert part.shape == (53, 96)
    for key in ("class_map_path", "probabilities_path"):
        with rasterio.open(getattr(whole, key)) as a, rasterio.open(getattr(part, key)) as b:
            np.testing.assert_array_equal(b.read(), a.read()[:, 17:70])
            assert b.transform == a.transform * a.transform.translation(0, 17)
            assert b.crs == a.crs
    with pytest.raises(ConfigError, match=r"rows must satisfy 0 <= r0 < r1 <= 96, got \(50, 50\)"):
        predict_raster(_model(), image, tmp_path / "bad.tif", rows=(50, 50), **opts)
    assert not (tmp_path / "bad.tif").exists()


def test_skip_existing_predicts_again_what_another_model_or_option_wrote(tmp_path: Path) -> None:
    """Every raster carries the run's tag; an output of other weights, another overlap or
    another class table is not taken for this run's."""
    from polyhead.classes import ClassTable
    from polyhead.inference.resume import RUN_TAG, finished_outputs, read_run_tag

    images = [_deflate_raster(tmp_path / f"{name}.tif", size=40) for name in ("a", "b")]
    out = tmp_path / "out"
    kw = dict(tile_size=32, overlap=8, write_probabilities=True, progress=False)
    predict_files(_model(), images, out, **kw)
    tag = read_run_tag(out / "a_classes.tif")
    assert tag and read_run_tag(out / "a_proba.tif") == tag
    assert sorted(finished_outputs(images, out, True, tag=tag)) == images
    assert finished_outputs(images, out, True, tag="other") == {}

    def skipped(model: nn.Module, **options) -> list[Path]:
        seen: list[Path] = []
        predict_files(model, images, out, skip_existing=True, on_skipped=seen.extend, **options)
        return seen

    assert skipped(_model(), **kw) == images  # the same run: nothing to do
    other = _model()
    with torch.no_grad():
        other[0].bias.add_(1.0)
    assert skipped(other, **kw) == []  # other weights: predicted again, with their tag
    assert read_run_tag(out / "a_classes.tif") not in (None, tag)
    assert skipped(other, **kw) == images
    assert skipped(other, **{**kw, "overlap": 4}) == []
    table = ClassTable(tuple(f"c{k}" for k in range(K)), ((0, 0, 0),) * K)
    assert skipped(other, **{**kw, "overlap": 4}, classes=table) == []
    with rasterio.open(out / "b_classes.tif") as src:
        assert RUN_TAG in src.tags()


def test_run_tag_follows_weights_and_options_not_the_objects() -> None:
    import albumentations as A

    from polyhead.classes import ClassTable
    from polyhead.inference.resume import run_tag

    def norm(mean: float) -> A.Compose:
        return A.Compose([A.Normalize(mean=(mean,) * 3, std=(0.5,) * 3)])

    table = ClassTable.default(K)
    options = dict(tile_size=32, normalize=norm(0.5), classes=table, head=None)
    first = run_tag(_model(), options)
    assert run_tag(_model(), {**options, "normalize": norm(0.5)}) == first  # equal, new objects
    assert run_tag(_model(), {**options, "normalize": norm(0.4)}) != first
    assert run_tag(_model(), {**options, "classes": ClassTable.default(K + 1)}) != first
    assert run_tag(_model(), {**options, "tile_size": 64}) != first
    changed = _model()
    with torch.no_grad():
        changed[2].weight[0, 0, 0, 0] += 1e-3
    assert run_tag(changed, options) != first
