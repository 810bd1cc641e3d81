"""`BlockRows`: rows arriving top to bottom are written as whole rows of the file's blocks."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import rasterio

from polyhead.io import AtomicGeoTiff, BlockRows, geotiff_profile


class _Recorder:
    def __init__(self, height: int, width: int, count: int = 2) -> None:
        self.out = np.full((count, height, width), -1, np.int32)
        self.calls: list[tuple[int, int, int]] = []  # (row, rows, col)

    def __call__(self, data: np.ndarray, row: int, col: int) -> None:
        self.calls.append((row, data.shape[1], col))
        assert (self.out[:, row : row + data.shape[1], col : col + data.shape[2]] == -1).all()
        self.out[:, row : row + data.shape[1], col : col + data.shape[2]] = data


@pytest.mark.parametrize("pieces", [[24] * 13 + [4], [100, 300, 20], [700], [1] * 50 + [266]])
def test_rows_of_two_column_ranges_are_written_in_whole_block_rows(pieces) -> None:
    height, block = sum(pieces), 64
    image = np.arange(2 * height * 40, dtype=np.int32).reshape(2, height, 40)
    rec = _Recorder(height, 40)
    rows = BlockRows(rec, block, height)
    for col, (c0, c1) in enumerate([(0, 16), (16, 40)]):  # a band, then the next one
        row = 0
        for n in pieces:
            rows.add(image[:, row : row + n, c0:c1], row, c0)
            row += n
        assert rows._held == {}, col  # a band that reached the bottom holds nothing
    np.testing.assert_array_equal(rec.out, image)
    for row, n, _ in rec.calls:
        assert row % block == 0 and ((row + n) % block == 0 or row + n == height), rec.calls


def test_rows_that_skip_are_written_as_they_are_and_flush_writes_the_rest() -> None:
    image = np.arange(2 * 200 * 8, dtype=np.int32).reshape(2, 200, 8)
    rec = _Recorder(200, 8)
    rows = BlockRows(rec, 64, 200)
    rows.add(image[:, 0:40], 0)
    rows.add(image[:, 100:130], 100)  # not row 40: rows 0..40 go out unaligned
    assert rec.calls == [(0, 40, 0), (100, 28, 0)]  # then up to the next block's end
    rows.add(image[:, 130:140], 130)
    rows.flush()  # 128..140: a block row that never ended
    assert rec.calls == [(0, 40, 0), (100, 28, 0), (128, 12, 0)]
    np.testing.assert_array_equal(rec.out[:, 100:140], image[:, 100:140])
    assert (rec.out[:, 40:100] == -1).all()
    with pytest.raises(ValueError, match="rows 190..210 lie outside 0..200"):
        rows.add(image[:, 190:200].repeat(2, axis=1), 190)


def test_whole_block_rows_are_compressed_when_written_not_at_close(tmp_path: Path) -> None:
    """GDAL's direct write: the aligned file has its blocks on disk before it is closed;
    the same rows written in 24-row windows wait in GDAL's cache for the close."""
    size = 512
    data = np.random.default_rng(0).integers(0, 4, (1, size, size), dtype=np.uint8)
    sizes = {}
    for name, aligned in (("aligned", True), ("strips", False)):
        profile = geotiff_profile(size, size, 1, "uint8")
        with rasterio.Env(GDAL_CACHEMAX=64 * 2**20):
            writer = AtomicGeoTiff(tmp_path / f"{name}.tif", profile).__enter__()
            rows = BlockRows(writer.write, profile["blockysize"], size)
            for row in range(0, size, 24):
                part = data[:, row : row + 24]
                rows.add(part, row) if aligned else writer.write(part, row)
            rows.flush()
            sizes[name] = os.path.getsize(writer.tmp_path)  # before the close
            writer.commit()
        with rasterio.open(tmp_path / f"{name}.tif") as src:
            np.testing.assert_array_equal(src.read(), data)
    assert sizes["aligned"] > size * size // 8  # 2 bits of noise a pixel, deflated
    assert sizes["strips"] < size * size // 64  # a header: the blocks wait for the close


def test_overviews_by_mode_for_classes_and_mean_for_values(tmp_path: Path) -> None:
    from polyhead.io import overview_factors

    assert overview_factors(256, 256) == [] and overview_factors(257, 10) == [2]
    assert overview_factors(8192, 100) == [2, 4, 8, 16, 32]
    size = 600
    rng = np.random.default_rng(0)
    coarse = rng.integers(0, 5, (size // 2, size // 2)).astype(np.uint8)
    classes = np.repeat(np.repeat(coarse, 2, 0), 2, 1)
    classes[::2, ::2] = 7  # one odd pixel in each 2 x 2: the most frequent class still wins
    values = rng.random((2, size, size), dtype=np.float32)
    for name, data, resampling in (("c", classes[None], "mode"), ("v", values, "average")):
        profile = geotiff_profile(size, size, data.shape[0], data.dtype.name)
        with AtomicGeoTiff(tmp_path / f"{name}.tif", profile, overviews=resampling) as writer:
            writer.write(data, 0)
            writer.commit()
        with rasterio.open(tmp_path / f"{name}.tif") as src:
            assert src.overviews(1) == [2, 4]
            np.testing.assert_array_equal(src.read(), data)  # full resolution untouched
            half = src.read(out_shape=(data.shape[0], size // 2, size // 2))
        if name == "c":
            np.testing.assert_array_equal(half[0], coarse)
        else:
            mean = data.reshape(2, size // 2, 2, size // 2, 2).mean(axis=(2, 4))
            np.testing.assert_allclose(half, mean, rtol=1e-5)


def test_overviews_leave_nodata_out(tmp_path: Path) -> None:
    size = 600
    classes = np.full((1, size, size), 255, np.uint8)
    classes[0, ::2, ::2] = 3  # one class pixel in each 2 x 2, the rest nodata
    values = np.where(classes == 3, np.float32(0.5), np.float32(np.nan))
    for name, data, nodata, resampling in (
        ("c", classes, 255, "mode"),
        ("v", values, np.nan, "average"),
    ):
        profile = geotiff_profile(size, size, 1, data.dtype.name)
        profile["nodata"] = nodata
        with AtomicGeoTiff(tmp_path / f"{name}.tif", profile, overviews=resampling) as writer:
            writer.write(data, 0)
            writer.commit()
        with rasterio.open(tmp_path / f"{name}.tif") as src:
            half = src.read(out_shape=(1, size // 2, size // 2))
        assert np.unique(half).tolist() == ([3] if name == "c" else [0.5])
