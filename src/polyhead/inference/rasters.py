"""Prediction over GeoTIFF rasters of any size: the sliding window's maps written as rasters.

`predict_raster` streams a raster through `polyhead.inference.sliding_window` and writes,
through `MapWriters`, a uint8 class map, optional per-class probabilities and an optional
uncertainty band, georeferenced like the input, whole or not at all.

The raster is streamed in vertical bands ``block_size`` pixels wide (at least one tile;
multiples of 256 align with the output blocks), each top to bottom, so memory is about
``K * tile * (block_size + 2 * tile) * 4`` bytes whatever the raster size. Tiles straddling
a band border are run by both bands (``n_tiles_run`` counts them), which keeps the output
equal to blending the global tile grid in one piece. GDAL's block cache is capped at 64 MiB
meanwhile unless GDAL_CACHEMAX is set.

Nodata. A pixel is nodata when the input masks it in any band read (its nodata value, mask
band or alpha band: rasterio's ``read_masks``) or when any of its bands is NaN/inf. Such
pixels are read as 0 (so they cannot spread NaN through the network to their neighbours)
and written as nodata in every output: 255 in the class map, NaN in float32
probabilities and uncertainty (each file says so in its ``nodata``); uint8 probabilities,
where every value is a probability, are 0 in every band there.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager, ExitStack, closing, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import torch
from rasterio.enums import MaskFlags
from rasterio.env import getenv, hasenv
from rasterio.errors import NotGeoreferencedWarning
from rasterio.windows import Window

from polyhead.errors import ConfigError, DataError
from polyhead.inference.predictor import PROBABILITIES, UNCERTAINTY, Predictor
from polyhead.inference.sliding_window import _iter_blocks, _progress, as_predictor
from polyhead.inference.tiling import Normalize, band_cores, check_config, n_tiles, n_tiles_run
from polyhead.inference.uncertainty import predictive_entropy
from polyhead.io import AtomicGeoTiff, geotiff_profile
from polyhead.models.single import HEAD, NetworkModel

# GDAL's block cache defaults to 5% of RAM, far more than streaming needs. Same bound as
# `polyhead.data.raster_io.GDAL_CACHE_BYTES` (not imported: it pulls in the training stack).
GDAL_CACHE_BYTES = 64 * 2**20

PROBABILITY_DTYPES = ("float32", "uint8")
#: class-map value of nodata pixels (set as the file's nodata)
CLASS_NODATA = 255


@dataclass
class PredictionResult:
    """What `predict_raster` wrote."""

    class_map_path: Path
    probabilities_path: Path | None
    shape: tuple[int, int]
    n_classes: int
    n_tiles: int
    seconds: float
    uncertainty_path: Path | None = None
    n_tiles_run: int = 0  # tiles run, counting those at band borders once per band
    image_path: Path | None = None


def _gdal_cache_env() -> AbstractContextManager[Any]:
    """A `rasterio.Env` capping GDAL's cache unless GDAL_CACHEMAX is set (env var or Env)."""
    if "GDAL_CACHEMAX" in os.environ or (hasenv() and "GDAL_CACHEMAX" in getenv()):
        return nullcontext()
    return rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_BYTES)


def output_paths(
    image_path: Path,
    out_path: Path,
    write_probabilities: bool = False,
    probabilities_path: str | Path | None = None,
    write_uncertainty: bool = False,
    uncertainty_path: str | Path | None = None,
) -> dict[str, Path]:
    """``{"classes", "proba", "uncertainty"}`` output paths (the last two when wanted; default
    ``<out stem>_proba.tif`` / ``<out stem>_uncertainty.tif``); ConfigError when two coincide
    or one is the input, DataError when the input is missing."""
    if not image_path.is_file():
        raise DataError(f"input raster not found: {image_path}")
    outputs = {"classes": out_path}
    for key, wanted, path in (
        ("proba", write_probabilities, probabilities_path),
        ("uncertainty", write_uncertainty, uncertainty_path),
    ):
        if wanted:
            outputs[key] = Path(path) if path else out_path.with_name(f"{out_path.stem}_{key}.tif")
    paths = [p.resolve() for p in (image_path, *outputs.values())]
    if len(set(paths)) != len(paths):
        raise ConfigError(f"output paths must differ from each other and the input {image_path}")
    return outputs


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
                pixels = self.src.read(self.indexes, window=window, out_dtype=np.float32)
            if not np.isfinite(np.add.reduce(pixels, axis=None)):
                bad |= ~np.isfinite(pixels).all(axis=0)
        return bad if bad.any() else None

    def read(self, y: int, x: int, h: int, w: int) -> np.ndarray:
        """The window's bands as float32 ``[C, h, w]``, nodata pixels set to 0."""
        window = Window(x, y, w, h)
        pixels = self.src.read(self.indexes, window=window, out_dtype=np.float32)
        bad = self(y, x, h, w, pixels)
        if bad is not None:
            pixels[:, bad] = 0.0
        return pixels


class MapWriters:
    """The rasters of a prediction, written block by block from blended maps.

    ``outputs`` is `output_paths`'s dict. ``classes``: arg-max of ``probabilities``
    (uint8); ``proba``: the probabilities (``float32``, or ``uint8`` scaled 0-255);
    ``uncertainty``: the maps' own ``uncertainty`` when present, else the normalised
    predictive entropy. Pixels marked in ``write``'s ``nodata`` are written as nodata
    (see the module docstring). The files open on the first block (K is known then);
    `commit` checks every file before moving any into place. Use inside an ``ExitStack``.
    """

    def __init__(
        self,
        stack: ExitStack,
        outputs: Mapping[str, Path],
        shape: tuple[int, int],
        crs: Any,
        transform: Any,
        probabilities_dtype: str = "float32",
    ) -> None:
        if probabilities_dtype not in PROBABILITY_DTYPES:
            raise ConfigError(
                f"probabilities_dtype must be 'float32' or 'uint8', got {probabilities_dtype!r}"
            )
        self.stack, self.outputs, self.shape = stack, dict(outputs), shape
        self.crs, self.transform, self.dtype = crs, transform, probabilities_dtype
        self.writers: dict[str, AtomicGeoTiff] = {}
        self.n_classes = 0

    def _open(self, n_classes: int) -> None:
        if n_classes > 256:
            raise ConfigError(f"a uint8 class map holds at most 256 classes, got {n_classes}")
        self.n_classes = n_classes
        class_nodata = CLASS_NODATA if n_classes <= CLASS_NODATA else None
        layout = {"classes": (1, "uint8", class_nodata), "uncertainty": (1, "float32", np.nan)}
        layout["proba"] = (n_classes, self.dtype, np.nan if self.dtype == "float32" else None)
        for key, path in self.outputs.items():
            count, dtype, nodata = layout[key]
            profile = geotiff_profile(*self.shape, count, dtype, self.crs, self.transform)
            if nodata is not None:
                profile["nodata"] = nodata
            self.writers[key] = self.stack.enter_context(AtomicGeoTiff(path, profile))

    def write(
        self,
        maps: Mapping[str, np.ndarray],
        row: int,
        col: int,
        nodata: np.ndarray | None = None,
    ) -> None:
        """Write the block of blended ``maps`` whose top-left pixel is ``(row, col)``;
        ``nodata`` (``[h, w]`` bool, optional) marks the block's nodata pixels."""
        proba = maps[PROBABILITIES]
        if not self.writers:
            self._open(proba.shape[0])
        if nodata is not None and self.n_classes > CLASS_NODATA:
            raise DataError(
                f"{self.outputs['classes']}: the input has nodata pixels, but a class map of "
                f"{self.n_classes} classes has no value left to mark them"
            )
        classes = proba.argmax(axis=0)[None].astype(np.uint8)
        self.writers["classes"].write(_masked(classes, nodata, CLASS_NODATA), row, col)
        if "uncertainty" in self.writers:
            own = maps.get(UNCERTAINTY)
            unc = own if own is not None else predictive_entropy(proba)[None]
            self.writers["uncertainty"].write(_masked(unc, nodata, np.nan), row, col)
        if "proba" in self.writers:
            fill = np.nan
            if self.dtype == "uint8":
                proba, fill = np.clip(np.rint(proba * 255.0), 0, 255), 0
            self.writers["proba"].write(_masked(proba, nodata, fill), row, col)

    def commit(self) -> None:
        """Close and check every file, then move them all into place."""
        for writer in self.writers.values():
            writer.close()
        for writer in reversed(self.writers.values()):
            writer.commit()


def _masked(block: np.ndarray, nodata: np.ndarray | None, fill: float) -> np.ndarray:
    """``block [c, h, w]`` with ``fill`` at the ``nodata`` pixels (a copy when any)."""
    if nodata is None:
        return block
    return np.where(nodata[None], np.asarray(fill, block.dtype), block)


def open_raster(stack: ExitStack, path: Path) -> Any:
    """``rasterio.open(path)`` inside ``stack``, with GDAL's cache capped (`_gdal_cache_env`)."""
    stack.enter_context(_gdal_cache_env())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        return stack.enter_context(rasterio.open(path))


def georeference(src: Any) -> tuple[Any, Any]:
    """``(crs, transform)`` of an open raster; the transform is None when it has neither."""
    crs = src.crs
    return crs, None if src.transform.is_identity and crs is None else src.transform


def predict_raster(
    model: Any,
    image_path: str | Path,
    out_path: str | Path,
    tile_size: int = 512,
    overlap: int = 64,
    batch_size: int = 4,
    device: str | torch.device = "cpu",
    write_probabilities: bool = False,
    probabilities_path: str | Path | None = None,
    normalize: Normalize | None = None,
    blend: str = "gaussian",
    progress: bool = True,
    probabilities_dtype: str = "float32",
    bands: Sequence[int] | None = None,
    pad_mode: str = "reflect",
    write_uncertainty: bool = False,
    uncertainty_path: str | Path | None = None,
    block_size: int = 4096,
) -> PredictionResult:
    """Predict a class map (uint8 GeoTIFF) for a raster of any size in bounded memory.

    ``model`` is a `Predictor` (or a polyhead model or logits network, wrapped in one): it
    maps float32 tiles ``[B, C, tile, tile]`` to per-pixel maps; it is moved to ``device``
    and run in eval mode under ``torch.inference_mode``. ``normalize`` gets each tile as
    float32 HWC (callable or albumentations transform). ``bands`` are 1-based band indexes
    to read (default: all). Rasters smaller than a tile are padded with ``pad_mode``
    (numpy). Output CRS/transform are copied from the input. With ``write_probabilities`` a
    K-band GeoTIFF of blended probabilities (``float32`` or ``uint8`` scaled 0-255) is
    written to ``probabilities_path`` (default ``<out stem>_proba.tif``). With
    ``write_uncertainty`` a float32 band is written to ``uncertainty_path`` (default
    ``<out stem>_uncertainty.tif``): the predictor's own ``uncertainty`` map when it has one
    (an uncertainty head), else the predictive entropy normalised by log K (0 = certain,
    1 = uniform; see `polyhead.inference.uncertainty`). Outputs are written to temp files,
    checked, and renamed at the end; on failure nothing is left behind. Streaming by
    bands of ``block_size`` columns bounds memory (see the module docstring). The bands read
    must be as many as the model's ``in_channels`` (DataError naming the file, before any
    tile runs); the input's nodata pixels are nodata in every output (module docstring).
    """
    check_config(tile_size, overlap, batch_size, blend)
    image_path, out_path = Path(image_path), Path(out_path)
    outputs = output_paths(
        image_path,
        out_path,
        write_probabilities,
        probabilities_path,
        write_uncertainty,
        uncertainty_path,
    )
    start = time.perf_counter()
    with ExitStack() as stack:
        src = open_raster(stack, image_path)
        height, width = src.height, src.width
        band_cores(width, block_size, tile_size)  # validates block_size
        indexes = band_indexes(bands, src.count)
        check_bands(image_path, len(indexes), model)
        nodata = NodataMask(src, indexes)
        writers = MapWriters(
            stack, outputs, (height, width), *georeference(src), probabilities_dtype
        )

        total = n_tiles_run(height, width, tile_size, overlap, block_size)
        bar, advance = _progress(progress, total, image_path.name)
        stack.enter_context(bar)
        blocks = _iter_blocks(
            as_predictor(model),
            nodata.read,
            height,
            width,
            tile_size=tile_size,
            overlap=overlap,
            batch_size=batch_size,
            device=device,
            normalize=normalize,
            blend=blend,
            pad_mode=pad_mode,
            block_size=block_size,
            on_tiles=advance,
        )
        for y, x, maps in stack.enter_context(closing(blocks)):
            h, w = maps[PROBABILITIES].shape[1:]
            writers.write(maps, y, x, nodata(y, x, h, w))
        writers.commit()
    return PredictionResult(
        class_map_path=out_path,
        probabilities_path=outputs.get("proba"),
        shape=(height, width),
        n_classes=writers.n_classes,
        n_tiles=n_tiles(height, width, tile_size, overlap),
        seconds=time.perf_counter() - start,
        uncertainty_path=outputs.get("uncertainty"),
        n_tiles_run=total,
        image_path=image_path,
    )
