"""Reading images, hard masks and soft masks, one window at a time.

Three kinds of files are understood, picked by extension:

* ``.npy``: arrays stored as (bands, H, W) or (H, W), memory-mapped so a window
  touches only its own pixels;
* ``.png``/``.jpg``/``.jpeg``: read whole with Pillow (these are small by nature);
* anything else (GeoTIFF, VRT, ...): rasterio with windowed reads.

Every reader returns arrays shaped (bands, h, w), the rasterio convention.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.errors import NotGeoreferencedWarning, RasterioError
from rasterio.windows import Window

from polyhead.errors import DataError

PIL_SUFFIXES = frozenset({".png", ".jpg", ".jpeg"})
NPY_SUFFIXES = frozenset({".npy"})

# Validation reads at most this many pixels per band at once (row strips capped at 1024 rows).
BLOCK_PIXELS = 1 << 20
MAX_BLOCK_ROWS = 1024

# GDAL's block cache defaults to 5% of RAM per process; random crops from large rasters
# rarely hit it again, so each DataLoader worker would grow towards that size for nothing
# (measured: +270 MiB after 300 crops of one 8000 px raster). A user's GDAL_CACHEMAX wins.
GDAL_CACHE_BYTES = 64 * 2**20
_gdal_cache_bounded = False


def _bound_gdal_cache() -> None:
    global _gdal_cache_bounded
    if not _gdal_cache_bounded and "GDAL_CACHEMAX" not in os.environ:
        rasterio.env.set_gdal_config("GDAL_CACHEMAX", GDAL_CACHE_BYTES)
    _gdal_cache_bounded = True


@dataclass(frozen=True)
class RasterInfo:
    """Header facts about one raster file."""

    path: Path
    height: int
    width: int
    count: int
    dtype: str


def _kind(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in NPY_SUFFIXES:
        return "npy"
    if suffix in PIL_SUFFIXES:
        return "pil"
    return "rasterio"


def _open_rasterio(path: Path) -> Any:
    _bound_gdal_cache()
    with warnings.catch_warnings():
        # Plain (non-geo) TIFFs are fine for training; the warning is noise.
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        return rasterio.open(path)


def _load_npy(path: Path) -> np.ndarray:
    arr = np.load(path, mmap_mode="r", allow_pickle=False)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise ValueError(f"expected a (bands, H, W) or (H, W) array, got shape {arr.shape}")
    return arr


def _load_pil(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as img:
        if img.mode == "1":
            img = img.convert("L")
        arr = np.asarray(img)
    if arr.ndim == 2:
        return arr[None]
    return np.ascontiguousarray(arr.transpose(2, 0, 1))


def _pil_info(path: Path) -> tuple[int, int, int, str]:
    from PIL import Image

    with Image.open(path) as img:
        width, height = img.size
        known = _PIL_MODES.get(img.mode)
    if known is None:  # unusual mode: decode to learn the array layout
        arr = _load_pil(path)
        return arr.shape[1], arr.shape[2], arr.shape[0], str(arr.dtype)
    return height, width, known[0], known[1]


_PIL_MODES = {
    "1": (1, "uint8"),
    "L": (1, "uint8"),
    "P": (1, "uint8"),
    "LA": (2, "uint8"),
    "RGB": (3, "uint8"),
    "RGBA": (4, "uint8"),
    "I;16": (1, "uint16"),
    "I": (1, "int32"),
    "F": (1, "float32"),
}


def error_detail(err: BaseException) -> str:
    """``Type: message`` of a read error, with GDAL's own message when rasterio chained it
    behind "See previous exception for details" (e.g. where a truncated file ends)."""
    if isinstance(err, DataError) and err.__cause__ is not None:
        err = err.__cause__
    detail, cause = str(err), err.__cause__ or err.__context__
    while "previous exception" in detail and cause is not None:
        detail, cause = str(cause), cause.__cause__ or cause.__context__
    return f"{type(err).__name__}: {detail}"


def _wrap_error(path: Path, err: Exception) -> DataError:
    return DataError(f"cannot read {path}: {error_detail(err)}")


def _is_read_error(err: Exception) -> bool:
    # Pillow raises OSError subclasses mostly, but DecompressionBombError is not one.
    if isinstance(err, DataError):
        return False
    return isinstance(err, (RasterioError, OSError, ValueError)) or type(err).__module__.startswith(
        "PIL"
    )


class HandleCache:
    """Lazily opened rasterio datasets, private to the process that opened them.

    The cache remembers the pid it was filled in; after a fork (DataLoader
    workers) the child sees a different pid and starts with an empty cache, so
    no GDAL handle is ever shared between processes. Pickling drops the handles.
    """

    def __init__(self) -> None:
        self._pid = os.getpid()
        self._handles: dict[Path, Any] = {}

    def get(self, path: Path) -> Any:
        """Return an open rasterio dataset for ``path``, opening it on first use."""
        pid = os.getpid()
        if pid != self._pid:
            # Forked copy: forget the parent's handles without touching them.
            self._pid = pid
            self._handles = {}
        handle = self._handles.get(path)
        if handle is None or handle.closed:
            handle = _open_rasterio(path)
            self._handles[path] = handle
        return handle

    def close(self) -> None:
        """Close every handle opened by this process."""
        if self._pid == os.getpid():
            for handle in self._handles.values():
                handle.close()
        self._handles = {}

    def __len__(self) -> int:
        return len(self._handles) if self._pid == os.getpid() else 0

    def __getstate__(self) -> dict[str, Any]:
        return {}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__()


def raster_info(path: str | os.PathLike[str]) -> RasterInfo:
    """Read size, band count and dtype of a raster without reading its pixels."""
    path = Path(path)
    try:
        kind = _kind(path)
        if kind == "npy":
            arr = _load_npy(path)
            return RasterInfo(path, arr.shape[1], arr.shape[2], arr.shape[0], str(arr.dtype))
        if kind == "pil":
            return RasterInfo(path, *_pil_info(path))
        with _open_rasterio(path) as src:
            return RasterInfo(path, src.height, src.width, src.count, str(src.dtypes[0]))
    except Exception as err:
        if _is_read_error(err):
            raise _wrap_error(path, err) from err
        raise


def read_window(
    path: str | os.PathLike[str],
    row_off: int,
    col_off: int,
    height: int,
    width: int,
    cache: HandleCache | None = None,
) -> np.ndarray:
    """Read the window (row_off, col_off, height, width) of every band as (bands, h, w).

    GeoTIFFs are read with a rasterio window, ``.npy`` through a memory map, so
    only the window's pixels are decoded. PNG/JPEG files are decoded whole.
    """
    path = Path(path)
    try:
        kind = _kind(path)
        if kind == "npy":
            arr = _load_npy(path)
            return np.array(arr[:, row_off : row_off + height, col_off : col_off + width])
        if kind == "pil":
            arr = _load_pil(path)
            return arr[:, row_off : row_off + height, col_off : col_off + width].copy()
        window = Window(col_off, row_off, width, height)
        if cache is None:
            with _open_rasterio(path) as src:
                return src.read(window=window)
        return cache.get(path).read(window=window)
    except Exception as err:
        if _is_read_error(err):
            raise _wrap_error(path, err) from err
        raise


def strip_rows(height: int, width: int) -> int:
    """Rows per strip so that one strip holds about ``BLOCK_PIXELS`` pixels per band."""
    return max(1, min(MAX_BLOCK_ROWS, BLOCK_PIXELS // max(1, width), height))


def iter_strips(
    path: str | os.PathLike[str], info: RasterInfo | None = None
) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(row_off, array)`` full-width row strips covering the raster top to bottom.

    Memory stays bounded by the strip size whatever the raster size (PNG/JPEG
    excepted, which are decoded whole once).
    """
    path = Path(path)
    info = info or raster_info(path)
    rows = strip_rows(info.height, info.width)
    kind = _kind(path)
    try:
        if kind == "rasterio":
            with _open_rasterio(path) as src:
                for row_off in range(0, info.height, rows):
                    h = min(rows, info.height - row_off)
                    yield row_off, src.read(window=Window(0, row_off, info.width, h))
            return
        arr = _load_npy(path) if kind == "npy" else _load_pil(path)
        for row_off in range(0, info.height, rows):
            yield row_off, np.asarray(arr[:, row_off : row_off + rows])
    except Exception as err:
        if _is_read_error(err):
            raise _wrap_error(path, err) from err
        raise


def soft_scale(dtype: str | np.dtype) -> float | None:
    """Divisor turning stored soft-mask values into probabilities, None if unsupported.

    Floats are stored as probabilities (divisor 1); uint8 as probabilities x 255.
    """
    dtype = np.dtype(dtype)
    if np.issubdtype(dtype, np.floating):
        return 1.0
    if dtype == np.uint8:
        return 255.0
    return None


def soft_tolerance(dtype: str | np.dtype, n_classes: int) -> float:
    """Allowed deviation of a soft mask's per-pixel sum from 1.

    Floats get 1e-3. uint8 bands are each rounded to the nearest 1/255, so the
    sum can drift by up to ``n_classes * 0.5 / 255`` on top of that.
    """
    if np.dtype(dtype) == np.uint8:
        return 1e-3 + n_classes / 255.0 / 2.0
    return 1e-3
