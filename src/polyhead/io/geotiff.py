"""GeoTIFF outputs written atomically and checked before they are moved into place.

GDAL does not always report a failed write: a block still in its cache when the file is
closed is flushed by the close, and a write error there (a full disk, say) is only logged;
the file then reads back with zeros where the block should be. `AtomicGeoTiff` therefore
re-opens the closed temp file and checks its size, data type, every block's location
(within the file) and its last window before renaming it.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any, NoReturn

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.errors import NotGeoreferencedWarning, RasterioError
from rasterio.windows import Window

from polyhead.io.atomic import AtomicPath, PathLike, WriteError, write_error

_BLOCK = 256
#: deflate level of polyhead's GeoTIFFs: level 1 compresses float32 probabilities 2x and
#: class maps about 4x faster than GDAL's default 6, for files 2% (probabilities) larger
#: (`benchmarks/results/io_threads_cpu.md`)
DEFLATE_LEVEL = 1
#: how overviews are computed: a class map's by the most frequent class, others by the mean
OVERVIEW_RESAMPLING = {True: "mode", False: "average"}


def geotiff_profile(
    height: int, width: int, count: int, dtype: str, crs: Any = None, transform: Any = None
) -> dict[str, Any]:
    """Tiled, deflate-compressed (`DEFLATE_LEVEL`) GTiff profile with the given
    georeferencing."""
    block = _BLOCK if max(height, width) > _BLOCK else 16 * -(-max(height, width) // 16)
    profile: dict[str, Any] = dict(
        driver="GTiff",
        height=height,
        width=width,
        count=count,
        dtype=dtype,
        tiled=True,
        blockxsize=block,
        blockysize=block,
        compress="deflate",
        zlevel=DEFLATE_LEVEL,
        predictor=3 if np.dtype(dtype).kind == "f" else 2,
        BIGTIFF="IF_SAFER",
    )
    if crs is not None:
        profile["crs"] = crs
    if transform is not None:
        profile["transform"] = transform
    return profile


def overview_factors(height: int, width: int, smallest: int = _BLOCK) -> list[int]:
    """Overview levels 2, 4, 8, ... down to the first whose longer side fits in
    ``smallest`` pixels (none for a raster already that small)."""
    factors, f = [], 2
    while max(height, width) > smallest * f // 2:
        factors.append(f)
        f *= 2
    return factors


def _flag(value: Any) -> bool:
    return str(value).upper() in ("TRUE", "YES", "ON", "1")


def _check_blocks(src: Any, size: int, sparse_ok: bool) -> str | None:
    """Why the TIFF's block table is wrong (a block missing or past the end), or None."""
    block_h, block_w = src.block_shapes[0]
    rows, cols = -(-src.height // block_h), -(-src.width // block_w)
    pixel_interleaved = src.tags(ns="IMAGE_STRUCTURE").get("INTERLEAVE", "").upper() == "PIXEL"
    for band in [1] if pixel_interleaved else range(1, src.count + 1):
        for r in range(rows):
            for c in range(cols):
                offset = src.get_tag_item(f"BLOCK_OFFSET_{c}_{r}", "TIFF", bidx=band)
                nbytes = src.get_tag_item(f"BLOCK_SIZE_{c}_{r}", "TIFF", bidx=band)
                if not offset or not nbytes:
                    if sparse_ok:
                        continue
                    return f"block ({r}, {c}) of band {band} was not written"
                if int(offset) + int(nbytes) > size:
                    return f"block ({r}, {c}) of band {band} lies past the end of the file"
    return None


def verify_geotiff(path: PathLike, profile: dict[str, Any]) -> None:
    """Check that ``path`` opens as the raster ``profile`` describes and is complete.

    Raises `WriteError` naming ``path`` otherwise.
    """
    path = Path(path)
    expected = (
        int(profile["width"]),
        int(profile["height"]),
        int(profile["count"]),
        np.dtype(profile["dtype"]).name,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path) as src:
            found = (src.width, src.height, src.count, src.dtypes[0])
            if found != expected:
                problem = f"(width, height, count, dtype) is {found}, expected {expected}"
            elif src.driver == "GTiff":
                sparse = any(_flag(v) for k, v in profile.items() if k.lower() == "sparse_ok")
                problem = _check_blocks(src, os.path.getsize(path), sparse)
            else:
                problem = None
            if problem is None:
                block_h, block_w = src.block_shapes[0]
                row = (src.height - 1) // block_h * block_h
                col = (src.width - 1) // block_w * block_w
                src.read(window=Window(col, row, src.width - col, src.height - row))
    if problem is not None:
        raise WriteError(f"{path} failed its check: {problem}")


class AtomicGeoTiff:
    """Write a GeoTIFF to a temp file beside ``path``; `commit` checks it and renames it.

    Used as a context manager: leaving the block with an exception (or without `commit`)
    closes and deletes the temp file, so ``path`` is never partial. A GDAL/libtiff error in
    `write`, `close` or the check after closing deletes the temp file and raises `WriteError`
    (an `OSError`) naming ``path``.
    """

    def __init__(
        self, path: PathLike, profile: dict[str, Any], overviews: str | None = None
    ) -> None:
        self.path = Path(path)
        self.profile = profile
        self.overviews = overviews
        self._target = AtomicPath(self.path)
        self.tmp_path = self._target.tmp_path
        self._dst: Any = None
        self._verified = False

    def __enter__(self) -> AtomicGeoTiff:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", NotGeoreferencedWarning)
                self._dst = rasterio.open(self.tmp_path, "w", **self.profile)
        except (RasterioError, OSError) as exc:
            self._fail(exc)
        return self

    @property
    def dataset(self) -> Any:
        """The open rasterio dataset (band descriptions, scales, tags)."""
        if self._dst is None:
            raise WriteError(f"{self.path}: the GeoTIFF is not open for writing")
        return self._dst

    def _fail(self, exc: BaseException) -> NoReturn:
        self.abort()
        raise write_error(self.path, exc) from exc

    def write(self, data: np.ndarray, row: int, col: int = 0) -> None:
        """Write ``data`` ``[count, h, w]`` at rows ``row .. row + h`` and columns
        ``col .. col + w``."""
        window = Window(col, row, data.shape[2], data.shape[1])
        try:
            self.dataset.write(data.astype(self.profile["dtype"], copy=False), window=window)
        except (RasterioError, OSError) as exc:
            self._fail(exc)

    def close(self) -> None:
        """Flush and close the temp file, add its overviews (``overviews``: a resampling
        name such as ``"mode"`` or ``"average"``), then check it (idempotent)."""
        if self._dst is not None:
            dst, self._dst = self._dst, None
            try:
                dst.close()
                if self.overviews is not None:
                    self._build_overviews()
            except (RasterioError, OSError) as exc:
                self._fail(exc)
        if not self._verified and self.tmp_path.exists():
            try:
                verify_geotiff(self.tmp_path, self.profile)
            except Exception as exc:
                self.abort()
                raise WriteError(f"could not write {self.path}: {exc}") from exc
            self._verified = True

    def _build_overviews(self) -> None:
        """Internal overviews (`overview_factors`), so GIS software shows a large raster
        at any zoom without reading it whole; nodata pixels are left out of each mean."""
        factors = overview_factors(int(self.profile["height"]), int(self.profile["width"]))
        if not factors:
            return
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(self.tmp_path, "r+") as dst:
                dst.build_overviews(factors, Resampling[self.overviews])
                dst.update_tags(ns="rio_overview", resampling=self.overviews)

    def commit(self) -> Path:
        """Close, check and atomically move the temp file to ``path``."""
        self.close()
        return self._target.commit()

    def abort(self) -> None:
        """Close and delete the temp file."""
        try:
            if self._dst is not None:
                dst, self._dst = self._dst, None
                with contextlib.suppress(Exception):  # deleted anyway; the first error matters
                    dst.close()
        finally:
            self._target.abort()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.tmp_path.exists() or self._dst is not None:
            self.abort()


class _Held:
    """Rows ``row ..`` of one column range, copied into a buffer that ends on a block row."""

    def __init__(self, row: int, buf: np.ndarray) -> None:
        self.row, self.buf, self.filled = row, buf, 0

    @property
    def end(self) -> int:
        return self.row + self.filled

    def fits(self, data: np.ndarray) -> bool:
        same = data.dtype == self.buf.dtype
        return same and (data.shape[0], data.shape[2]) == (self.buf.shape[0], self.buf.shape[2])

    def put(self, data: np.ndarray) -> int:
        """Copy the first rows of ``data`` that fit; how many."""
        n = min(self.buf.shape[1] - self.filled, data.shape[1])
        self.buf[:, self.filled : self.filled + n] = data[:, :n]
        self.filled += n
        return n


class BlockRows:
    """Write rows that arrive top to bottom as whole rows of the file's blocks.

    GDAL's GeoTIFF driver (3.8 and later) compresses and writes a window that starts on a
    block and ends on a block or the raster's edge at once, in the calling thread and
    without holding Python's GIL, as long as no other window went through its block cache
    first. Any other window goes to the cache, and the cache is flushed when the file is
    closed: the whole compression then runs at the end, in one thread, holding the GIL.
    `add` passes whole block rows straight to ``write(data, row, col)`` and copies the rest
    of each column range (``col``) into a buffer of at most ``block_height`` rows until it
    reaches a block's end or the bottom (``height``); `flush` writes what is held (rows that
    never reached a block's end).
    """

    def __init__(
        self, write: Callable[[np.ndarray, int, int], None], block_height: int, height: int
    ) -> None:
        self._write, self.block_height, self.height = write, block_height, height
        self._held: dict[int, _Held] = {}

    def _next_end(self, row: int) -> int:
        """The first block end (or the bottom) after ``row``."""
        return min(self.height, (row // self.block_height + 1) * self.block_height)

    def add(self, data: np.ndarray, row: int, col: int = 0) -> None:
        """Take ``data [count, h, w]`` for rows ``row .. row + h`` at column ``col``."""
        if row < 0 or row + data.shape[1] > self.height:
            raise ValueError(f"rows {row}..{row + data.shape[1]} lie outside 0..{self.height}")
        held = self._held.pop(col, None)
        if held is not None and (held.end != row or not held.fits(data)):
            self._write(held.buf[:, : held.filled], held.row, col)  # not the next rows
            held = None
        while data.shape[1]:
            if held is None:
                end = row + data.shape[1]
                stop = end if end >= self.height else end // self.block_height * self.block_height
                if row % self.block_height == 0 and stop > row:  # whole block rows: no copy
                    self._write(data[:, : stop - row], row, col)
                    data, row = data[:, stop - row :], stop
                    continue
                rows = self._next_end(row) - row
                held = _Held(row, np.empty((data.shape[0], rows, data.shape[2]), data.dtype))
            n = held.put(data)
            data, row = data[:, n:], row + n
            if held.filled == held.buf.shape[1]:
                self._write(held.buf, held.row, col)
                held = None
        if held is not None:
            self._held[col] = held

    def flush(self) -> None:
        """Write every held row (the caller ended before they reached a block's end)."""
        held, self._held = self._held, {}
        for col, rows in held.items():
            self._write(rows.buf[:, : rows.filled], rows.row, col)
