"""The sliding window: tiles in, blended named per-pixel maps out, in bounded memory.

Tiles of ``tile_size`` overlap by ``overlap`` pixels; the last tile of each axis is
shifted to end at the border. The maps a predictor returns for overlapping tiles
(class probabilities, an uncertainty map: this module knows no heads or activations) are
blended with a weight window and normalised by the summed weights.

Everything after the read runs on the model's device: the input chunk of one strip (a row
of tiles) of one band goes over once, tiles are cut from it, normalised (`DeviceNormalize`),
run (under `autocast`), weighted and summed into accumulators there, and only finished,
divided rows come back. Rasters are streamed in vertical bands (`band_layout`: about
``block_size`` columns of whole tile columns), each one strip at a time, carrying only the
tile rows still open, so memory scales with ``block_size * tile_size * K``. Each tile of the
global grid runs once: the sums of the columns a band's last tiles share with the next
band are kept (a full-height strip ``overlap`` columns wide) and added there. Tiles whose
input pixels are all nodata are not run.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from polyhead.errors import DataError
from polyhead.inference.pipeline import check_precision, model_on
from polyhead.inference.pipeline_blend import (  # noqa: F401  (HostBlock: rasters' too)
    BandBlender,
    Finish,
    HostBlock,
    Options,
    TileCounts,
)
from polyhead.inference.pipeline_threads import Waits, prefetch
from polyhead.inference.predictor import PROBABILITIES, Predictor
from polyhead.inference.tiling import (
    MapsFn,
    Normalize,
    band_layout,
    check_config,
    n_tiles,
    tile_starts,
)

#: ``read(row, col, h, w)``: the input window ``[C, h, w]`` (any numeric dtype, nodata pixels
#: already 0), or ``(window, nodata)`` with ``nodata`` ``[h, w]`` bool or None
ReadWindow = Callable[[int, int, int, int], Any]
#: a ``block_size`` that puts every tile column in one band
ONE_BAND = 1 << 62
_TORCH_DTYPES = {np.dtype(t) for t in ("uint8", "int8", "int16", "int32", "int64")}
_TORCH_DTYPES |= {np.dtype(t) for t in ("float16", "float32", "float64")}


def as_predictor(model: Any) -> Predictor:
    """``model`` if it is a `Predictor`, else ``Predictor(model)`` (its default head)."""
    return model if isinstance(model, Predictor) else Predictor(model)


@dataclass
class _Chunk:
    """The input of one strip of one band: ``pixels [C, th, span]`` and the tiles to run."""

    pixels: torch.Tensor
    keep: list[bool] = field(default_factory=list)


def _chunks(
    read: ReadWindow, layout: list, ys: list[int], th: int, tw: int, pin: bool
) -> Iterator[_Chunk]:
    """The chunks in the order the blending loop takes them: bands, then strips (``pin``:
    in page-locked memory, so the copy to a GPU runs without blocking)."""
    for _, _, bxs in layout:
        a0, span = bxs[0], bxs[-1] + tw - bxs[0]
        for y0 in ys:
            got = read(y0, a0, th, span)
            pixels, bad = got if isinstance(got, tuple) else (got, None)
            pixels = np.asarray(pixels)
            if pixels.dtype not in _TORCH_DTYPES:
                pixels = pixels.astype(np.float32)
            keep = [True] * len(bxs)
            if bad is not None:
                keep = [not bad[:, x - a0 : x - a0 + tw].all() for x in bxs]
            tensor = torch.from_numpy(pixels)
            yield _Chunk(tensor.pin_memory() if pin else tensor, keep)


def _iter_blocks(
    maps_fn: MapsFn,
    read: ReadWindow,
    height: int,
    width: int,
    *,
    tile_size: int,
    overlap: int,
    batch_size: int | None,
    device: str | torch.device,
    normalize: Normalize | None,
    blend: str,
    pad_mode: str,
    block_size: int,
    on_tiles: Callable[[int], None] | None = None,
    precision: str = "fp32",
    channels_last: bool = False,
    prefetch_chunks: int = 0,
    finish: Finish | None = None,
    counts: TileCounts | None = None,
    deferred: bool = False,
    waits: Waits | None = None,
) -> Iterator[tuple[int, int, Any]]:
    """Yield ``(row, col, {map name: [c, n, w]})`` windows of finished output pixels.

    ``maps_fn`` turns a batch of tiles into named per-pixel maps (e.g. a `Predictor`); every
    map is blended alike, so this loop knows nothing of heads or activations. Bands
    (`band_layout`) are done left to right, each top to bottom; each pixel gets the
    contributions of exactly the global grid's tiles that cover it. ``prefetch_chunks`` > 0
    reads that many chunks ahead in a background thread; ``finish`` maps the divided maps
    on the device before they are copied back (default: all of them). ``deferred``: yield
    each block as a `HostBlock` whose copy to the host is still under way (its ``maps()``
    waits), so the caller's thread never waits for the device. ``waits``: adds up the
    time spent waiting for the reader thread (`Waits`).
    """
    opt = Options(tile_size, overlap, batch_size, torch.device(device), blend, pad_mode)
    opt.precision, opt.channels_last, opt.deferred = precision, channels_last, deferred
    check_precision(precision, opt.device)
    counts = counts if counts is not None else TileCounts()
    layout = band_layout(width, tile_size, overlap, block_size)
    ys = tile_starts(height, tile_size, overlap)
    th, tw = min(tile_size, height), min(tile_size, width)
    pin = opt.device.type == "cuda"
    chunks: Iterator[_Chunk] = _chunks(read, layout, ys, th, tw, pin)
    if prefetch_chunks > 0:
        chunks = prefetch(chunks, prefetch_chunks, waits)
    with closing(chunks), model_on(maps_fn, opt.device, channels_last):  # type: ignore[arg-type]
        blender = BandBlender(
            maps_fn, layout, ys, height, (th, tw), normalize, opt, on_tiles, finish, counts
        )
        yield from blender.blocks(chunks)


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
    batch_size: int | None = 4,
    device: str | torch.device = "cpu",
    normalize: Normalize | None = None,
    blend: str = "gaussian",
    pad_mode: str = "reflect",
    progress: bool = False,
    precision: str = "fp32",
    channels_last: bool = False,
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
        block_size=ONE_BAND,
        on_tiles=advance,
        precision=precision,
        channels_last=channels_last,
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
