"""The input side of raster prediction: GDAL's settings for a run (`gdal_env`), opening
rasters (`open_raster`), their bands (`band_indexes`, `check_bands`), georeferencing and
nodata (`NodataMask`).

Nodata. A pixel is nodata when the input masks it in any band read (its nodata value, mask
band or alpha band: rasterio's ``read_masks``) or when any of its bands is NaN/inf. Such
pixels are read as 0 (so they cannot spread NaN through the network to their neighbours)
and written as nodata in every output: 255 in the class map, NaN in float32
probabilities and uncertainty (each file says so in its ``nodata``); uint8 probabilities,
where every value is a probability, are 0 in every band there. A tile whose pixels are all
nodata is not run (``n_tiles_nodata``).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from contextlib import AbstractContextManager, ExitStack, nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.enums import MaskFlags
from rasterio.env import getenv, hasenv
from rasterio.errors import NotGeoreferencedWarning
from rasterio.windows import Window

from polyhead.errors import ConfigError, DataError
from polyhead.inference.predictor import Predictor
from polyhead.models.single import HEAD, NetworkModel

# GDAL's block cache defaults to 5% of RAM, far more than streaming needs. Same bound as
# `polyhead.data.raster_io.GDAL_CACHE_BYTES` (not imported: it pulls in the training stack).
GDAL_CACHE_BYTES = 64 * 2**20


def _user_set(option: str) -> bool:
    """Whether the user set a GDAL config option (environment variable or `rasterio.Env`)."""
    return option in os.environ or (hasenv() and option in getenv())


def gdal_env(io_threads: int = 1) -> AbstractContextManager[Any]:
    """A `rasterio.Env` capping GDAL's cache (GDAL_CACHEMAX) and, for ``io_threads`` > 1,
    giving GDAL that many worker threads (GDAL_NUM_THREADS: the GeoTIFF driver decodes the
    blocks of one read and compresses the blocks it writes in parallel); options the user
    set are kept. Set from the main thread, the options reach the reader and writer
    threads; set from another thread, GDAL keeps them to that thread."""
    options: dict[str, Any] = {}
    if not _user_set("GDAL_CACHEMAX"):
        options["GDAL_CACHEMAX"] = GDAL_CACHE_BYTES
    if io_threads > 1 and not _user_set("GDAL_NUM_THREADS"):
        options["GDAL_NUM_THREADS"] = str(io_threads)
    return rasterio.Env(**options) if options else nullcontext()


def band_indexes(bands: Sequence[int] | None, count: int) -> list[int]:
    """1-based band indexes to read (default all); ConfigError when out of range."""
    indexes = list(bands) if bands is not None else list(range(1, count + 1))
    if not indexes or min(indexes) < 1 or max(indexes) > count:
        raise ConfigError(f"bands must be 1-based indexes in 1..{count}, got {bands}")
    return indexes


def model_in_channels(model: Any) -> int | None:
    """The input bands a model reads, when it says: a polyhead model's ``in_channels``, or
    the ``in_channels`` of a wrapped network (None when it does not say; nothing is guessed).
    ``model`` may be a `Predictor`."""
    if isinstance(model, Predictor):
        model = model.model
    if isinstance(model, NetworkModel):
        model = model.heads[HEAD].network
    value = getattr(model, "in_channels", None)
    return int(value) if isinstance(value, int) and not isinstance(value, bool) else None


def check_bands(image_path: Path, count: int, model: Any) -> None:
    """DataError (one line naming the file) when ``count`` bands are not what ``model`` reads."""
    expected = model_in_channels(model)
    if expected is not None and count != expected:
        raise DataError(
            f"{image_path}: {count} band(s) read, but the model reads {expected} (its "
            f"in_channels); give {expected}-band images (or choose bands)"
        )


class NodataMask:
    """Which pixels of an open raster are nodata (see the module docstring), by window."""

    def __init__(self, src: Any, indexes: Sequence[int]) -> None:
        self.src, self.indexes = src, list(indexes)
        flags = [src.mask_flag_enums[i - 1] for i in self.indexes]
        self.masked = any(MaskFlags.all_valid not in f for f in flags)
        self.floating = any(np.dtype(src.dtypes[i - 1]).kind == "f" for i in self.indexes)

    def __call__(
        self, y: int, x: int, h: int, w: int, pixels: np.ndarray | None = None
    ) -> np.ndarray | None:
        """``[h, w]`` True at the window's nodata pixels; None when it has none. ``pixels``:
        the window's bands when already read."""
        if not (self.masked or self.floating):
            return None
        window = Window(x, y, w, h)
        bad = np.zeros((h, w), bool)
        if self.masked:
            bad |= (self.src.read_masks(self.indexes, window=window) == 0).any(axis=0)
        if self.floating:
            if pixels is None:
                pixels = self.src.read(self.indexes, window=window)
            if pixels.dtype.kind == "f" and not np.isfinite(np.add.reduce(pixels, axis=None)):
                bad |= ~np.isfinite(pixels).all(axis=0)
        return bad if bad.any() else None

    def read(self, y: int, x: int, h: int, w: int) -> tuple[np.ndarray, np.ndarray | None]:
        """``(bands [C, h, w] in the file's dtype with nodata pixels set to 0, nodata [h, w]
        bool or None)`` of the window (float32 conversion happens on the model's device)."""
        window = Window(x, y, w, h)
        pixels = self.src.read(self.indexes, window=window)
        bad = self(y, x, h, w, pixels)
        if bad is not None:
            pixels[:, bad] = 0
        return pixels, bad


def open_raster(stack: ExitStack, path: Path, io_threads: int = 1) -> Any:
    """``rasterio.open(path)`` inside ``stack``, within `gdal_env` (GDAL's cache capped,
    ``io_threads`` worker threads) for the rest of the stack."""
    stack.enter_context(gdal_env(io_threads))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        return stack.enter_context(rasterio.open(path))


def georeference(src: Any, row0: int = 0, row1: int | None = None) -> tuple[Any, Any]:
    """``(crs, transform)`` of an open raster (of its rows ``row0 .. row1`` when given); the
    transform is None when it has neither."""
    crs = src.crs
    if src.transform.is_identity and crs is None:
        return crs, None
    if row0 == 0 and row1 in (None, src.height):
        return crs, src.transform
    stop = src.height if row1 is None else row1
    return crs, src.window_transform(Window(0, row0, src.width, stop - row0))
