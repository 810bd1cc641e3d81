"""Sliding-window inference over arrays and large rasters, in bounded memory.

Tiles of ``tile_size`` overlap by ``overlap`` pixels; the last tile of each axis is
shifted to end at the border. Softmax probabilities of overlapping tiles are
blended with a weight window and normalised by the summed weights. Rasters are
streamed in vertical bands of ``block_size`` columns, each one strip (row of tiles)
at a time, carrying only the tile rows still open; finished windows are written out
immediately, so memory scales with ``block_size * tile_size * K``, not with the
raster's width or height. Tiles on a band border are run by both bands, so every
pixel is blended from exactly the tiles of the global grid that cover it.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, ExitStack, closing, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import torch
from rasterio.env import getenv, hasenv
from rasterio.errors import NotGeoreferencedWarning
from rasterio.windows import Window
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from polyhead.errors import ConfigError, DataError
from polyhead.inference.predictor import PROBABILITIES, UNCERTAINTY, Predictor
from polyhead.inference.tiling import (
    MapsFn,
    Normalize,
    band_cores,
    band_layout,
    blend_window,
    check_config,
    n_tiles,
    n_tiles_run,
    normalize_tile,
    split_maps,
    tile_starts,
    weighted_maps,
    zeroed_view,
)
from polyhead.inference.uncertainty import predictive_entropy
from polyhead.inference.writers import AtomicGeoTiff, geotiff_profile

ReadWindow = Callable[[int, int, int, int], np.ndarray]

# GDAL's block cache defaults to 5% of RAM, far more than streaming needs. Same bound as
# `polyhead.data.raster_io.GDAL_CACHE_BYTES` (not imported: it pulls in the training stack).
GDAL_CACHE_BYTES = 64 * 2**20


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


@contextmanager
def _eval_mode(model: Any, device: torch.device) -> Iterator[None]:
    """Move an ``nn.Module`` to ``device`` in eval mode; restore train mode afterwards."""
    was_training = isinstance(model, torch.nn.Module) and model.training
    if isinstance(model, torch.nn.Module):
        model.to(device).eval()
    try:
        yield
    finally:
        if was_training:
            model.train()


def as_predictor(model: Any) -> Predictor:
    """``model`` if it is a `Predictor`, else ``Predictor(model)`` (its default head)."""
    return model if isinstance(model, Predictor) else Predictor(model)


def _iter_blocks(
    maps_fn: MapsFn,
    read: ReadWindow,
    height: int,
    width: int,
    *,
    tile_size: int,
    overlap: int,
    batch_size: int,
    device: str | torch.device,
    normalize: Normalize | None,
    blend: str,
    pad_mode: str,
    block_size: int,
    on_tiles: Callable[[int], None] | None = None,
) -> Iterator[tuple[int, int, dict[str, np.ndarray]]]:
    """Yield ``(row, col, {map name: [c, n, w]})`` windows of finished output pixels.

    ``maps_fn`` turns a batch of tiles into named per-pixel maps (e.g. a `Predictor`); every
    map is blended alike, so this loop knows nothing of heads or activations.

    Bands (see `band_cores`) are done left to right, each top to bottom; a band runs
    every tile of the global grid that touches its columns, so each of its pixels gets
    the same contributions, summed in the same order, as with one full-width band.
    ``read(row, col, h, w)`` returns the input window ``[C, h, w]`` as float32.
    """
    dev = torch.device(device)
    ys = tile_starts(height, tile_size, overlap)
    th, tw = min(tile_size, height), min(tile_size, width)
    w_full = blend_window(tile_size, overlap, blend)
    w_tile, window = w_full[:th, :tw], torch.from_numpy(w_full).to(dev)
    pad = ((0, tile_size - th), (0, tile_size - tw), (0, 0))
    bands = band_layout(width, tile_size, overlap, block_size)
    # one pair of flat buffers for all bands: fresh arrays per band fragment the heap
    wsum_buf = np.empty(th * max(b[-1] + tw - b[0] for _, _, b in bands), np.float32)
    acc_buf: np.ndarray | None = None
    layout = None
    with _eval_mode(maps_fn, dev):
        for c0, c1, bxs in bands:
            a0, span = bxs[0], bxs[-1] + tw - bxs[0]  # accumulators span columns a0 .. a0 + span
            core = slice(c0 - a0, c1 - a0)
            wsum = zeroed_view(wsum_buf, (th, span))
            acc = None  # [K, th, span] for rows acc_y0 .. acc_y0 + th
            if acc_buf is not None:
                acc = zeroed_view(acc_buf, (acc_buf.size // wsum_buf.size, th, span))
            acc_y0 = 0
            for y0 in [*ys, height]:
                if y0 > acc_y0:  # rows before y0 get no more contributions
                    n = y0 - acc_y0
                    assert acc is not None
                    done = acc[:, :n, core]
                    done /= wsum[None, :n, core]  # in place: these rows are dropped below
                    yield acc_y0, c0, split_maps(layout, done)
                    if y0 == height:
                        break
                    acc[:, :-n], wsum[:-n] = acc[:, n:], wsum[n:]
                    acc[:, -n:], wsum[-n:] = 0.0, 0.0
                    acc_y0 = y0
                for b0 in range(0, len(bxs), batch_size):
                    bx = bxs[b0 : b0 + batch_size]
                    x_lo = bx[0]
                    chunk = np.moveaxis(
                        np.asarray(read(y0, x_lo, th, bx[-1] + tw - x_lo), np.float32), 0, -1
                    )  # [th, span, C]: one read per batch of tiles
                    tiles = [
                        normalize_tile(normalize, chunk[:, x0 - x_lo : x0 - x_lo + tw]) for x0 in bx
                    ]
                    if th < tile_size or tw < tile_size:
                        tiles = [np.pad(t, pad, mode=pad_mode) for t in tiles]
                    batch = np.ascontiguousarray(np.stack(tiles).transpose(0, 3, 1, 2))
                    layout, probs = weighted_maps(maps_fn, batch, dev, window)
                    if acc is None:
                        acc_buf = np.empty(probs.shape[1] * wsum_buf.size, np.float32)
                        acc = zeroed_view(acc_buf, (probs.shape[1], th, span))
                    for x0, p in zip(bx, probs, strict=True):
                        acc[:, :, x0 - a0 : x0 - a0 + tw] += p[:, :th, :tw]
                        wsum[:, x0 - a0 : x0 - a0 + tw] += w_tile
                    if on_tiles is not None:
                        on_tiles(len(bx))


def _progress(enabled: bool, total: int, label: str) -> tuple[Progress, Callable[[int], None]]:
    """A rich progress bar (disabled unless ``enabled``) and its advance-by-n callback."""
    bar = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        disable=not enabled,
    )
    task = bar.add_task(label, total=total)
    return bar, lambda n: bar.advance(task, n)


def predict_maps(
    maps_fn: MapsFn,
    image: np.ndarray,
    tile_size: int = 512,
    overlap: int = 64,
    batch_size: int = 4,
    device: str | torch.device = "cpu",
    normalize: Normalize | None = None,
    blend: str = "gaussian",
    pad_mode: str = "reflect",
    progress: bool = False,
) -> dict[str, np.ndarray]:
    """Blended sliding-window maps ``{name: [c, H, W]}`` (float32) for ``image [C, H, W]``.

    ``maps_fn`` turns a batch of tiles into named maps (a `Predictor`, a teacher ensemble).
    Same core as `predict_raster` (one band of the full width); see there for the arguments.
    """
    check_config(tile_size, overlap, batch_size, blend)
    image = np.asarray(image)
    if image.ndim != 3 or min(image.shape) < 1:
        raise DataError(f"image must be a non-empty [C, H, W] array, got shape {image.shape}")
    _, height, width = image.shape
    bar, advance = _progress(progress, n_tiles(height, width, tile_size, overlap), "predicting")
    blocks = _iter_blocks(
        maps_fn,
        lambda y, x, h, w: image[:, y : y + h, x : x + w],
        height,
        width,
        tile_size=tile_size,
        overlap=overlap,
        batch_size=batch_size,
        device=device,
        normalize=normalize,
        blend=blend,
        pad_mode=pad_mode,
        block_size=width,
        on_tiles=advance,
    )
    out: dict[str, np.ndarray] = {}
    with bar, closing(blocks):
        for y, x, maps in blocks:
            for name, block in maps.items():
                if name not in out:
                    out[name] = np.empty((block.shape[0], height, width), np.float32)
                out[name][:, y : y + block.shape[1], x : x + block.shape[2]] = block
    return out


def predict_array(model: Any, image: np.ndarray, *args: Any, **kwargs: Any) -> np.ndarray:
    """Blended sliding-window probabilities ``[K, H, W]`` (float32) for ``image [C, H, W]``.

    ``model``: a `Predictor`, a polyhead model (its inference head answers) or a logits
    network; the other arguments are `predict_maps`'s.
    """
    return predict_maps(as_predictor(model), image, *args, **kwargs)[PROBABILITIES]


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
    1 = uniform; see `polyhead.inference.uncertainty`). Outputs are written to temp files
    and renamed at the end; on failure nothing is left behind.

    The raster is streamed in vertical bands ``block_size`` pixels wide (at least one
    tile; multiples of 256 align with the output blocks), each top to bottom, so memory
    is about ``K * tile * (block_size + 2 * tile) * 4`` bytes whatever the raster size.
    Tiles straddling a band border are run by both bands (``n_tiles_run`` counts them),
    which keeps the output equal to blending the global tile grid in one piece.
    GDAL's block cache is capped at 64 MiB meanwhile unless GDAL_CACHEMAX is set.
    """
    check_config(tile_size, overlap, batch_size, blend)
    if probabilities_dtype not in ("float32", "uint8"):
        raise ConfigError(
            f"probabilities_dtype must be 'float32' or 'uint8', got {probabilities_dtype!r}"
        )
    image_path, out_path = Path(image_path), Path(out_path)
    paths = output_paths(
        image_path,
        out_path,
        write_probabilities,
        probabilities_path,
        write_uncertainty,
        uncertainty_path,
    )
    proba_path, unc_path = paths.get("proba"), paths.get("uncertainty")
    start = time.perf_counter()
    with ExitStack() as stack:
        stack.enter_context(_gdal_cache_env())
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            src = stack.enter_context(rasterio.open(image_path))
        height, width = src.height, src.width
        band_cores(width, block_size, tile_size)  # validates block_size
        indexes = band_indexes(bands, src.count)
        crs = src.crs
        transform = None if src.transform.is_identity and crs is None else src.transform

        def read(y: int, x: int, h: int, w: int) -> np.ndarray:
            return src.read(indexes, window=Window(x, y, w, h), out_dtype=np.float32)

        total = n_tiles_run(height, width, tile_size, overlap, block_size)
        bar, advance = _progress(progress, total, image_path.name)
        stack.enter_context(bar)
        blocks = _iter_blocks(
            as_predictor(model),
            read,
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
        stack.enter_context(closing(blocks))
        writers: dict[str, AtomicGeoTiff] = {}
        n_classes = 0
        for y, x, maps in blocks:
            proba = maps[PROBABILITIES]
            if not writers:  # K is known once the first block is done
                n_classes = proba.shape[0]
                if n_classes > 256:
                    raise ConfigError(
                        f"a uint8 class map holds at most 256 classes, got {n_classes}"
                    )
                outputs = {
                    "classes": (out_path, 1, "uint8"),
                    "proba": (proba_path, n_classes, probabilities_dtype),
                    "uncertainty": (unc_path, 1, "float32"),
                }
                for key, (path, count, dtype) in outputs.items():
                    if path is not None:
                        profile = geotiff_profile(height, width, count, dtype, crs, transform)
                        writers[key] = stack.enter_context(AtomicGeoTiff(path, profile))
            writers["classes"].write(proba.argmax(axis=0)[None].astype(np.uint8), y, x)
            if "uncertainty" in writers:
                unc = maps[UNCERTAINTY] if UNCERTAINTY in maps else predictive_entropy(proba)[None]
                writers["uncertainty"].write(unc, y, x)
            if "proba" in writers:
                if probabilities_dtype == "uint8":
                    proba = np.clip(np.rint(proba * 255.0), 0, 255)
                writers["proba"].write(proba, y, x)
        for writer in reversed(writers.values()):
            writer.commit()
    return PredictionResult(
        class_map_path=out_path,
        probabilities_path=proba_path,
        shape=(height, width),
        n_classes=n_classes,
        n_tiles=n_tiles(height, width, tile_size, overlap),
        seconds=time.perf_counter() - start,
        uncertainty_path=unc_path,
        n_tiles_run=total,
        image_path=image_path,
    )
