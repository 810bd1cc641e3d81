"""Prediction split over processes: the plan, row blocks equal to the whole raster, VRT mosaics,
and two gloo processes writing what one process writes."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from rasterio.transform import from_origin
from torch import nn

from polyhead.checkpoint import load_checkpoint
from polyhead.errors import ConfigError, PolyheadError
from polyhead.inference import distributed
from polyhead.inference.distributed import (
    Part,
    assign,
    context_rows,
    plan_parts,
    predict_part,
    row_cuts,
    write_mosaics,
)
from polyhead.inference.predict import predict_files
from polyhead.inference.rasters import predict_raster
from polyhead.inference.tiling import tile_starts
from polyhead.inference.vrt import write_window_vrt

REPO = Path(__file__).resolve().parents[2]
TILE, OVERLAP = 32, 8
CRS = "EPSG:32631"


def _tif(path: Path, height: int, width: int, seed: int, nodata: bool = False) -> Path:
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 250, (3, height, width)).astype(np.uint8)
    profile = dict(driver="GTiff", height=height, width=width, count=3, dtype="uint8", crs=CRS)
    profile["transform"] = from_origin(500000 + seed, 4000000, 2.0, 2.0)
    if nodata:
        data[:, 40:47, 10:30] = 255
        profile["nodata"] = 255
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    return path


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    """A 5x5 conv (its output depends on the tile grid through the zero padding)."""
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 5, padding=2)
    path = tmp_path_factory.mktemp("model") / "conv.ckpt"
    spec = {"_target_": "torch.nn.Conv2d", "in_channels": 3, "out_channels": 4}
    spec.update(kernel_size=5, padding=2)
    state = {f"model.{k}": v for k, v in conv.state_dict().items()}
    torch.save({"polyhead_config": {"model": spec}, "state_dict": state}, path)
    return path


def _read(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read()


# --- the plan ---------------------------------------------------------------------------------


def test_row_cuts_fall_on_tile_ends_and_context_starts_on_a_tile() -> None:
    # tiles of 32 with stride 24 over 150 rows: starts 0, 24, ..., 96, 118
    ys = tile_starts(150, TILE, OVERLAP)
    assert ys == [0, 24, 48, 72, 96, 118]
    assert row_cuts(150, 3, TILE, OVERLAP) == [0, 56, 104, 150]  # ends nearest 50 and 100
    assert context_rows(150, 56, 104, TILE, OVERLAP) == (48, 128)  # tiles 48, 72, 96
    assert context_rows(150, 104, 150, TILE, OVERLAP) == (96, 150)
    assert context_rows(150, 0, 56, TILE, OVERLAP) == (0, 80)
    assert row_cuts(20, 4, TILE, OVERLAP) == [0, 20]  # one tile: nothing to cut


def test_plan_splits_large_rasters_and_balances_pixels() -> None:
    sizes = [(Path("a.tif"), 40, 40), (Path("b.tif"), 40, 40), (Path("big.tif"), 150, 70)]
    parts = plan_parts(sizes, 2, TILE, OVERLAP)
    # total 13700 px, share 6850: big (10500) gets ceil(10500 * 2 / 13700) = 2 blocks
    assert [(p.image.name, p.row0, p.row1) for p in parts] == [
        ("a.tif", 0, 40),
        ("b.tif", 0, 40),
        ("big.tif", 0, 80),
        ("big.tif", 80, 150),
    ]
    ranks = assign(parts, 2)
    assert [[(p.image.name, p.index) for p in r] for r in ranks] == [
        [("b.tif", 0), ("big.tif", 0)],
        [("a.tif", 0), ("big.tif", 1)],
    ]  # largest first to the least loaded: big 0 (5600), big 1 (4900), a, b
    assert [sum(p.pixels for p in r) for r in ranks] == [5600 + 1600, 4900 + 1600]
    assert plan_parts(sizes, 2, TILE, OVERLAP, split=False) == [
        Part(Path(n), 0, 1, 0, h, w) for n, h, w in sizes
    ]
    one = plan_parts([(Path("x.tif"), 150, 70)], 4, TILE, OVERLAP)  # fewer rasters than ranks
    assert [(p.row0, p.row1) for p in one] == [(0, 32), (0 + 32, 80), (80, 104), (104, 150)]
    assert [p.stem() for p in one] == [f"x_part-000{i}" for i in range(4)]


def test_launch_refuses_bad_counts() -> None:
    with pytest.raises(ConfigError, match="devices must be an integer >= 1, got 0"):
        distributed.launch(devices=0)
    with pytest.raises(ConfigError, match="accelerator must be one of"):
        distributed.launch(accelerator="tpu")
    assert distributed.launch().world_size == 1
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="cannot start 2 x 1 processes: No supported gpu"):
            distributed.launch(devices=2, accelerator="gpu")


# --- row blocks equal the whole raster --------------------------------------------------------


def test_window_vrt_reads_as_the_rows_with_their_nodata(tmp_path: Path) -> None:
    image = _tif(tmp_path / "in.tif", 150, 70, 1, nodata=True)
    vrt = write_window_vrt(image, tmp_path / "w.vrt", 30, 90)
    with rasterio.open(vrt) as win, rasterio.open(image) as src:
        assert win.shape == (60, 70) and win.nodata == 255
        np.testing.assert_array_equal(win.read(), src.read()[:, 30:90])
        np.testing.assert_array_equal(win.read_masks(1), src.read_masks(1)[30:90])
        assert win.transform == src.window_transform(rasterio.windows.Window(0, 30, 70, 60))


def test_row_blocks_and_their_mosaic_equal_the_whole_prediction(tmp_path: Path, ckpt) -> None:
    model = load_checkpoint(ckpt).model
    image = _tif(tmp_path / "in" / "big.tif", 150, 70, 2, nodata=True)
    opts = dict(tile_size=TILE, overlap=OVERLAP, progress=False, write_probabilities=True)
    opts["tags"] = {"POLYHEAD_RUN": "abc"}
    whole = predict_raster(model, image, tmp_path / "whole" / "big_classes.tif", **opts)

    def predict_one(src: Path, out: Path, stem: str, **rows):
        proba = out / f"{stem}_proba.tif"
        return predict_raster(
            model, src, out / f"{stem}_classes.tif", probabilities_path=proba, **opts, **rows
        )

    out = tmp_path / "parts"
    out.mkdir()
    parts = plan_parts([(image, 150, 70)], 3, TILE, OVERLAP)
    assert len(parts) == 3
    for part in parts:
        written = predict_part(part, predict_one, out, TILE, OVERLAP)
        assert [p.name for p in written] == [
            f"{part.stem()}_classes.tif",
            f"{part.stem()}_proba.tif",
        ]
        np.testing.assert_array_equal(
            _read(written[0])[0], _read(whole.class_map_path)[0, part.row0 : part.row1]
        )
    mosaics = write_mosaics(parts, out)
    assert sorted(mosaics) == ["classes", "proba"]
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []  # no scratch
    with rasterio.open(mosaics["classes"]) as vrt, rasterio.open(whole.class_map_path) as ref:
        assert (vrt.shape, vrt.crs, vrt.transform, vrt.nodata) == (
            ref.shape,
            ref.crs,
            ref.transform,
            ref.nodata,
        )
        assert (vrt.read() == 255).any()  # the input's nodata pixels stay nodata
        np.testing.assert_array_equal(vrt.read(), ref.read())
        assert vrt.colormap(1) == ref.colormap(1)
        assert vrt.tags()["POLYHEAD_RUN"] == ref.tags()["POLYHEAD_RUN"] == "abc"
    np.testing.assert_array_equal(_read(mosaics["proba"]), _read(whole.probabilities_path))
    with rasterio.open(mosaics["proba"]) as vrt, rasterio.open(whole.probabilities_path) as ref:
        assert (
            vrt.descriptions == ref.descriptions and np.isnan(vrt.nodata) and np.isnan(ref.nodata)
        )


def test_a_window_off_the_global_grid_would_differ(tmp_path: Path, ckpt) -> None:
    """The check above can fail: rows predicted from a window that does not start on a tile
    of the global grid are not those of the whole raster."""
    model = load_checkpoint(ckpt).model
    image = _tif(tmp_path / "big.tif", 150, 70, 3)
    opts = dict(tile_size=TILE, overlap=OVERLAP, progress=False, write_probabilities=True)
    whole = predict_raster(model, image, tmp_path / "whole_classes.tif", **opts)
    off = write_window_vrt(image, tmp_path / "off.vrt", 44, 150)  # 44: no tile starts there
    part = predict_raster(model, off, tmp_path / "off_classes.tif", **opts)
    assert not np.allclose(_read(part.probabilities_path), _read(whole.probabilities_path)[:, 44:])


class _Rank0Of2(distributed.Group):
    """Rank 0 of 2, the other rank's report given."""

    rank, world_size = 0, 2

    def __init__(self, other: tuple) -> None:
        self.other = other

    def exchange(self, report):
        return [report, self.other]


def test_mosaics_only_after_every_rank_succeeded_and_of_this_runs_files(
    tmp_path: Path, ckpt
) -> None:
    model = load_checkpoint(ckpt).model
    image = _tif(tmp_path / "in" / "big.tif", 150, 70, 7)

    def predict_one(src: Path, out: Path, stem: str, **rows):
        out_path = out / f"{stem}_classes.tif"
        return predict_raster(model, src, out_path, tile_size=TILE, overlap=OVERLAP, **rows)

    out = tmp_path / "out"
    out.mkdir()
    parts = plan_parts([(image, 150, 70)], 2, TILE, OVERLAP)
    with pytest.raises(PolyheadError, match="1 of 2 prediction processes failed"):
        distributed.run_parts(parts, _Rank0Of2((True, {})), predict_one, out, TILE, OVERLAP)
    assert not list(out.glob("*.vrt"))
    # rank 1's block, and a stale probability file of an earlier run beside it
    predict_part(parts[1], predict_one, out, TILE, OVERLAP)
    (out / "big_part-0000_proba.tif").write_bytes(b"stale")
    other = (False, {f"{image}|1": ["classes"]})
    written = distributed.run_parts(parts, _Rank0Of2(other), predict_one, out, TILE, OVERLAP)
    assert written == [out / "big_classes.vrt"]
    assert sorted(p.name for p in out.glob("*.vrt")) == ["big_classes.vrt"]


# --- two processes ----------------------------------------------------------------------------

WORKER = """
import sys
from polyhead.checkpoint import load_checkpoint
from polyhead.inference.predict import predict_files

ckpt, out, *inputs = sys.argv[1:]
written = predict_files(
    load_checkpoint(ckpt).model, inputs, out, tile_size=32, overlap=8, progress=False,
    write_probabilities=True, write_uncertainty=True, devices=2, accelerator="cpu",
    vector="gpkg",
)
print("WROTE", [p.name for p in written])
"""


@pytest.mark.slow  # two Python processes starting torch and Lightning: about a minute
def test_two_gloo_processes_write_what_one_process_writes(tmp_path: Path, ckpt) -> None:
    inputs = [
        _tif(tmp_path / "in" / "a.tif", 40, 40, 4),
        _tif(tmp_path / "in" / "b.tif", 40, 56, 5),
        _tif(tmp_path / "in" / "big.tif", 150, 70, 6, nodata=True),
    ]
    worker = tmp_path / "worker.py"
    worker.write_text(textwrap.dedent(WORKER))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), env.get("PYTHONPATH", "")])
    cmd = [sys.executable, str(worker), str(ckpt), str(tmp_path / "two"), *map(str, inputs)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "distributed_backend=gloo" in proc.stdout + proc.stderr
    assert "WROTE ['a_classes.tif', 'b_classes.tif', 'big_classes.vrt']" in proc.stdout

    one = predict_files(
        load_checkpoint(ckpt).model,
        inputs,
        tmp_path / "one",
        tile_size=TILE,
        overlap=OVERLAP,
        progress=False,
        write_probabilities=True,
        write_uncertainty=True,
        vector="gpkg",
    )
    two = tmp_path / "two"
    names = sorted(p.name for p in two.iterdir())
    assert names == sorted(
        [f"{s}_{k}.tif" for s in ("a", "b") for k in ("classes", "proba", "uncertainty")]
        + [f"big_part-000{i}_{k}.tif" for i in (0, 1) for k in ("classes", "proba", "uncertainty")]
        + [f"big_{k}.vrt" for k in ("classes", "proba", "uncertainty")]
        + [f"{s}_classes.gpkg" for s in ("a", "b", "big")]
    )
    for ref in one:
        stem = ref.name.removesuffix("_classes.tif")
        ext = "vrt" if stem == "big" else "tif"
        np.testing.assert_array_equal(_read(two / f"{stem}_classes.{ext}"), _read(ref))
        for kind in ("proba", "uncertainty"):
            np.testing.assert_allclose(
                _read(two / f"{stem}_{kind}.{ext}"),
                _read(ref.with_name(f"{stem}_{kind}.tif")),
                atol=1e-6,
                rtol=0,
            )
        assert _areas(two / f"{stem}_classes.gpkg") == _areas(ref.with_suffix(".gpkg"))


def _areas(path: Path) -> dict[int, float]:
    """Polygon area per class of a GeoPackage written by ``vector="gpkg"``."""
    import pyogrio
    import shapely

    meta, _, geometry, fields = pyogrio.raw.read(path)
    ids = fields[list(meta["fields"]).index("class_id")]
    areas = shapely.area(shapely.from_wkb(geometry))
    return {int(k): round(float(areas[ids == k].sum()), 3) for k in np.unique(ids)}
