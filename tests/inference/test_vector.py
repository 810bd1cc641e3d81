"""polygonize_raster: block-streamed polygons equal the one-block result; filters, CRS, nodata."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyogrio
import pyogrio.raw
import pytest
import rasterio
import shapely
from rasterio.transform import Affine

from polyhead.classes import ClassTable
from polyhead.errors import ConfigError, DataError
from polyhead.inference.vector import merge_pieces, polygonize_raster

TRANSFORM = Affine(2.0, 0.0, 1000.0, 0.0, -2.0, 5000.0)  # 2 m pixels: 4 m^2 each
PIXEL_AREA = 4.0


def _class_map() -> np.ndarray:
    m = np.zeros((24, 28), np.uint8)
    m[5:13, 5:13] = 1  # an 8 x 8 square across the border at 8
    m[2:22, 18:20] = 2  # a bar crossing two row borders and touching a column border
    m[20:22, 10:20] = 2  # its foot: an L across a column border
    m[15:17, 2:4] = 255  # nodata inside the background
    m[0, 0] = 2  # a one-pixel island in a corner
    m[9, 9] = 0  # a hole in the square
    m[15, 23] = m[16, 24] = 1  # corner to corner across the block corner at (16, 24): apart
    return m


def _write(path: Path, data: np.ndarray, nodata: float | None = 255) -> Path:
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        height=data.shape[0],
        width=data.shape[1],
        count=1,
        dtype=data.dtype,
        crs="EPSG:32633",
        transform=TRANSFORM,
        nodata=nodata,
    ) as dst:
        dst.write(data, 1)
    return path


def _read(path: Path) -> tuple[dict, np.ndarray, np.ndarray, list[str], np.ndarray]:
    meta, _, wkb, fields = pyogrio.raw.read(path)
    return meta, shapely.from_wkb(wkb), fields[0], list(fields[1]), fields[2]


def _signature(geoms: np.ndarray, ids: np.ndarray) -> list[tuple]:
    """Polygons as sortable (class, area, centroid) tuples."""
    c = shapely.centroid(geoms)
    return sorted(
        (int(i), round(float(a), 6), round(shapely.get_x(p), 6), round(shapely.get_y(p), 6))
        for i, a, p in zip(ids, shapely.area(geoms), c, strict=True)
    )


@pytest.mark.parametrize("block_size", [5, 8])
def test_blocks_give_the_one_block_polygons(tmp_path: Path, block_size: int) -> None:
    src = _write(tmp_path / "classes.tif", _class_map())
    whole = polygonize_raster(src, tmp_path / "whole.gpkg")
    blocks = polygonize_raster(src, tmp_path / "blocks.gpkg", block_size=block_size)
    assert whole.n_merged == 0 and blocks.n_merged >= 3
    assert whole.n_polygons == blocks.n_polygons
    _, g1, id1, names, area1 = _read(whole.path)
    _, g2, id2, _, area2 = _read(blocks.path)
    assert _signature(g1, id1) == _signature(g2, id2)
    for k in (0, 1, 2):
        a, b = shapely.union_all(g1[id1 == k]), shapely.union_all(g2[id2 == k])
        assert shapely.equals(a, b)
    assert shapely.is_valid(g2).all()
    np.testing.assert_allclose(area2, shapely.area(g2))
    # hand-computed: the square minus its hole, the L (40 + 16 pixels: 2 overlap), the island
    ones = sorted(g2[id2 == 1], key=shapely.area)
    assert [g.area for g in ones] == [PIXEL_AREA, PIXEL_AREA, 63 * PIXEL_AREA]
    assert shapely.get_num_interior_rings(ones[-1]) == 1
    assert sorted(area2[id2 == 2]) == [1 * PIXEL_AREA, (40 + 20 - 4) * PIXEL_AREA]
    assert names[0].startswith("class_")


def test_nodata_gives_no_polygon_and_everything_else_is_covered(tmp_path: Path) -> None:
    data = _class_map()
    src = _write(tmp_path / "classes.tif", data)
    result = polygonize_raster(src, tmp_path / "v.gpkg", block_size=8)
    meta, geoms, ids, _, area = _read(result.path)
    assert area.sum() == (data != 255).sum() * PIXEL_AREA
    hole = shapely.box(1000 + 2 * 2, 5000 - 2 * 17, 1000 + 2 * 4, 5000 - 2 * 15)
    assert not shapely.intersects(shapely.buffer(hole, -0.1), geoms).any()
    assert meta["crs"] == "EPSG:32633"
    assert pyogrio.read_info(result.path, layer="classes")["geometry_type"] == "Polygon"


def test_min_area_after_merging_and_class_names(tmp_path: Path) -> None:
    src = _write(tmp_path / "classes.tif", _class_map())
    table = ClassTable.from_config(["background", "water", "road"], 3)
    result = polygonize_raster(
        src, tmp_path / "v.gpkg", classes=table, min_area=2 * PIXEL_AREA, block_size=4
    )
    _, _, ids, names, area = _read(result.path)
    assert area.min() >= 2 * PIXEL_AREA
    assert 1 * PIXEL_AREA not in set(area)  # the island went, the split L stayed whole
    assert (56 * PIXEL_AREA) in set(area)
    assert {(int(i), n) for i, n in zip(ids, names, strict=True)} == {
        (0, "background"),
        (1, "water"),
        (2, "road"),
    }


def test_simplify_reduces_vertices_within_tolerance(tmp_path: Path) -> None:
    y, x = np.mgrid[0:40, 0:40]
    data = (x > y).astype(np.uint8)  # a staircase diagonal
    src = _write(tmp_path / "stairs.tif", data)
    exact = _read(polygonize_raster(src, tmp_path / "a.gpkg", block_size=16).path)[1]
    simple = _read(polygonize_raster(src, tmp_path / "b.gpkg", simplify=3.0).path)[1]
    assert shapely.get_num_coordinates(simple).sum() < shapely.get_num_coordinates(exact).sum() / 4
    pairs = zip(sorted(exact, key=shapely.area), sorted(simple, key=shapely.area), strict=True)
    for a, b in pairs:
        assert shapely.hausdorff_distance(a, b) <= 3.0 + 1e-9


def test_failure_leaves_nothing(tmp_path: Path) -> None:
    src = _write(tmp_path / "classes.tif", _class_map())
    out = tmp_path / "out" / "v.gpkg"
    with pytest.raises(DataError, match="class id 2 has no entry"):
        polygonize_raster(src, out, classes=ClassTable.default(2), block_size=8)
    assert not out.exists() and list(out.parent.iterdir()) == []
    with pytest.raises(ConfigError, match=r"\.gpkg"):
        polygonize_raster(src, tmp_path / "v.shp")
    with pytest.raises(DataError, match="does not exist"):
        polygonize_raster(tmp_path / "missing.tif", tmp_path / "v.gpkg")
    floats = _write(tmp_path / "f.tif", np.zeros((4, 4), np.float32), None)
    with pytest.raises(DataError, match="one integer band"):
        polygonize_raster(floats, tmp_path / "v.gpkg")
    assert not (tmp_path / "v.gpkg").exists()


def test_all_nodata_writes_an_empty_layer(tmp_path: Path) -> None:
    src = _write(tmp_path / "empty.tif", np.full((6, 6), 255, np.uint8))
    result = polygonize_raster(src, tmp_path / "v.gpkg", block_size=4)
    assert result.n_polygons == 0
    assert pyogrio.read_info(result.path, layer="classes")["features"] == 0


def test_merge_pieces_equals_a_general_union(monkeypatch) -> None:
    """Pieces cut at borders x = 8 and y = 8 whose border segments only partly overlap, one
    with a hole, two touching at a corner: the coverage union equals shapely's union."""
    left = shapely.box(2, 0, 8, 8).difference(shapely.box(4, 2, 5, 3))  # border x = 8, y 0..8
    right = shapely.box(8, 3, 12, 8)  # shares y 3..8 of the left piece's border segment
    below = shapely.box(5, 8, 9, 11)  # shares x 5..8 with left, 8..9 with right
    corner = shapely.box(12, 8, 13, 9)  # touches right at the point (12, 8) only
    parts = [left, right, below, corner]
    expected = shapely.union_all(parts)
    with monkeypatch.context() as patch:  # the coverage union answers: no fallback
        patch.setattr(shapely, "union_all", lambda *a, **k: pytest.fail("fell back"))
        got = merge_pieces(parts, 8, (16, 16))
    assert shapely.equals(got, expected)
    assert got.area == sum(p.area for p in parts)
    assert len(shapely.get_parts(got)) == 2  # the corner piece stays apart (4-connected)
    overlapping = [shapely.box(0, 0, 8, 8), shapely.box(4, 0, 10, 8)]  # no coverage: fallback
    assert shapely.equals(merge_pieces(overlapping, 8, (16, 16)), shapely.box(0, 0, 10, 8))


def test_worker_processes_write_what_this_process_writes(tmp_path: Path) -> None:
    """`VectorJobs` with spawned workers: the same GeoPackages as at once; a failure in a
    worker is raised by `wait`, and leaves no file."""
    from functools import partial

    from polyhead.inference.vector_jobs import VectorJobs, polygonize_beside

    table = ClassTable(("ground", "roof", "road"), ((0, 0, 0), (255, 0, 0), (0, 0, 255)))
    write = partial(polygonize_beside, classes=table, min_area=8.0)
    maps = []
    for i, folder in enumerate(("here", "here", "workers", "workers")):
        (tmp_path / folder).mkdir(exist_ok=True)
        maps.append(
            _write(tmp_path / folder / f"m{i % 2}_classes.tif", np.roll(_class_map(), i % 2))
        )
    with VectorJobs(write) as jobs:  # no workers: at once
        jobs(maps[0]), jobs(maps[1])
        jobs.wait()
    with VectorJobs(write, workers=2) as jobs:
        jobs(maps[2]), jobs(maps[3])
        assert jobs._pool is not None
        jobs.wait()
    for name in ("m0", "m1"):
        here = _read(tmp_path / "here" / f"{name}_classes.gpkg")
        there = _read(tmp_path / "workers" / f"{name}_classes.gpkg")
        assert _signature(here[1], here[2]) == _signature(there[1], there[2])
        assert here[3] == there[3]
    bad = _write(tmp_path / "bad_classes.tif", _class_map().astype(np.float32))
    with VectorJobs(write, workers=1) as jobs:
        jobs(bad)
        with pytest.raises(DataError, match="expected one integer band"):
            jobs.wait()
    assert not (tmp_path / "bad_classes.gpkg").exists()


def test_vector_workers_default_to_none_on_a_cpu() -> None:
    import torch

    from polyhead.inference.pipeline import auto_vector_workers

    assert auto_vector_workers(None, torch.device("cpu")) == 0
    assert auto_vector_workers(3, torch.device("cpu")) == 3
    with pytest.raises(ConfigError, match="vector_workers must be an integer >= 0"):
        auto_vector_workers(-1, torch.device("cpu"))
