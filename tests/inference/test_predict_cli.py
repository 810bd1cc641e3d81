"""`polyhead predict`'s wiring: processes, precision, class table and vector options reach
`predict_files` and `predict_raster`; options a predict function lacks fail clearly."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from rasterio.transform import from_origin
from torch import nn

import polyhead.inference.predict as predict_module
from polyhead.classes import ClassTable
from polyhead.cli import build_parser, main
from polyhead.errors import ConfigError
from polyhead.inference.predict import predict_files, vector_writer


def _tif(path: Path, size: int = 48) -> Path:
    data = np.random.default_rng(0).integers(0, 250, (3, size, size)).astype(np.uint8)
    profile = dict(driver="GTiff", height=size, width=size, count=3, dtype="uint8")
    profile.update(crs="EPSG:32631", transform=from_origin(500000, 4000000, 1.0, 1.0))
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    return path


@pytest.fixture
def ckpt(tmp_path: Path) -> Path:
    """A 3x3 conv, 3 bands -> 3 classes, whose config names two of its classes."""
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 3, 3, padding=1)
    spec = {"_target_": "torch.nn.Conv2d", "in_channels": 3, "out_channels": 3}
    spec.update(kernel_size=3, padding=1)
    config = {
        "model": spec,
        "num_classes": 3,
        "data": {"classes": ["water", {"name": "forest", "color": "#00ff00"}]},
    }
    state = {f"model.{k}": v for k, v in conv.state_dict().items()}
    path = tmp_path / "conv.ckpt"
    torch.save({"polyhead_config": config, "state_dict": state}, path)
    return path


def test_predict_parser_defaults_and_choices(capsys) -> None:
    args = build_parser().parse_args(["predict", "m.ckpt", "x.tif", "-o", "out"])
    assert (args.devices, args.num_nodes, args.accelerator) == (1, 1, "auto")
    assert (args.precision, args.channels_last, args.batch_size) == (
        "fp32",
        False,
        None,
    )  # batch: auto
    assert (args.vector, args.min_area, args.simplify) == (None, 0.0, 0.0)
    assert (args.io_threads, args.overviews) == (None, False)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["predict", "m", "x", "-o", "o", "--precision", "fp8"])
    assert "invalid choice: 'fp8'" in capsys.readouterr().err


def test_cli_options_reach_predict_files(tmp_path: Path, ckpt: Path, monkeypatch) -> None:
    seen = {}

    def fake(model, inputs, output, **kwargs):
        seen.update(kwargs)
        return [Path(output) / "x_classes.tif"]

    monkeypatch.setattr(predict_module, "predict_files", fake)
    image = _tif(tmp_path / "x.tif")
    argv = ["predict", str(ckpt), str(image), "-o", str(tmp_path / "out"), "--devices", "2"]
    argv += ["--num-nodes", "3", "--accelerator", "cpu", "--precision", "bf16"]
    argv += ["--channels-last", "--tta", "flips", "--io-threads", "3", "--overviews"]
    argv += ["--probabilities", "--probabilities-dtype", "uint8", "--skip-existing"]
    assert main(argv) == 0
    assert {k: seen[k] for k in ("devices", "num_nodes", "accelerator", "device")} == {
        "devices": 2,
        "num_nodes": 3,
        "accelerator": "cpu",
        "device": "cpu",
    }
    assert (seen["precision"], seen["channels_last"], seen["tta"]) == ("bf16", True, "flips")
    assert (seen["batch_size"], seen["vector"]) == (None, None)  # batch: chosen for the device
    assert (seen["io_threads"], seen["overviews"]) == (3, True)
    assert (seen["write_probabilities"], seen["probabilities_dtype"]) == (True, "uint8")
    assert seen["skip_existing"] is True
    table = seen["classes"]
    assert table.names == ("water", "forest", "class_2")
    assert table.colors[1] == (0, 255, 0) and table == ClassTable.from_config(
        ["water", {"name": "forest", "color": [0, 255, 0]}], 3
    )


def test_vector_output_fails_before_any_work_when_the_module_is_missing(
    tmp_path: Path, ckpt: Path, monkeypatch, capsys
) -> None:
    monkeypatch.setitem(sys.modules, "polyhead.inference.vector", None)  # import fails
    with pytest.raises(ConfigError, match="vector output needs polyhead.inference.vector"):
        vector_writer("gpkg", None, 0.0, 0.0)
    with pytest.raises(ConfigError, match="vector output must be 'gpkg', got 'shp'"):
        vector_writer("shp", None, 0.0, 0.0)
    out = tmp_path / "out"
    argv = ["predict", str(ckpt), str(_tif(tmp_path / "x.tif")), "-o", str(out), "--vector"]
    assert main([*argv, "gpkg"]) == 2
    assert "vector output needs" in capsys.readouterr().err and not out.exists()


def test_bad_io_threads_fail_before_the_checkpoint_is_read(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    out = tmp_path / "out"
    argv = ["predict", str(tmp_path / "missing.ckpt"), str(_tif(tmp_path / "x.tif")), "-o"]
    assert main([*argv, str(out), "--io-threads", "0"]) == 2
    assert "--io-threads must be at least 1, got 0" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize("workers", [0, 1])
def test_vector_polygons_written_beside_each_class_map(
    tmp_path: Path, ckpt: Path, workers: int
) -> None:
    """At once, or by a worker process while the next image is predicted."""
    import pyogrio
    import shapely

    from polyhead.checkpoint import load_checkpoint

    images = [_tif(tmp_path / "x.tif"), _tif(tmp_path / "y.tif")]
    out = tmp_path / "out"
    written = predict_files(
        load_checkpoint(ckpt).model,
        images,
        out,
        tile_size=32,
        overlap=8,
        progress=False,
        vector="gpkg",
        classes=ClassTable.default(3),
        vector_workers=workers,
    )
    assert written == [out / "x_classes.tif", out / "y_classes.tif"]
    for class_map in written:
        _, _, geometry, _ = pyogrio.raw.read(class_map.with_suffix(".gpkg"))
        with rasterio.open(class_map) as src:  # the polygons tile the whole map (1 m pixels)
            area = shapely.area(shapely.from_wkb(geometry)).sum()
            assert area == pytest.approx(src.width * src.height)


def test_cli_predict_one_process_writes_class_maps(tmp_path: Path, ckpt: Path, capsys) -> None:
    image = _tif(tmp_path / "x.tif")
    out = tmp_path / "out"
    argv = ["predict", str(ckpt), str(image), "-o", str(out), "--tile-size", "32"]
    assert main([*argv, "--overlap", "8", "--devices", "1", "--accelerator", "cpu"]) == 0
    assert "wrote 1 class maps" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["x_classes.tif"]
    with rasterio.open(out / "x_classes.tif") as src:
        assert src.shape == (48, 48) and src.read().max() < 3
    before = (out / "x_classes.tif").stat().st_mtime_ns
    assert main([*argv, "--overlap", "8", "--skip-existing"]) == 0
    assert "wrote 0 class maps to" in (msg := capsys.readouterr().out) and "1 already" in msg
    assert (out / "x_classes.tif").stat().st_mtime_ns == before  # not written again


def test_cli_predict_preview_beside_each_class_map(tmp_path: Path, ckpt: Path) -> None:
    image = _tif(tmp_path / "x.tif")
    out = tmp_path / "out"
    argv = ["predict", str(ckpt), str(image), "-o", str(out), "--tile-size", "32", "--preview"]
    assert main([*argv, "--overlap", "8"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["x_classes.tif", "x_preview.png"]
    from PIL import Image

    with Image.open(out / "x_preview.png") as png:
        assert png.size[0] > 100 and png.size[1] > 50
