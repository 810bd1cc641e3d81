"""The sliding window: tiles in, blended named per-pixel maps out, in bounded memory.

Tiles of ``tile_size`` overlap by ``overlap`` pixels; the last tile of each axis is
shifted to end at the border. The maps a predictor returns for overlapping tiles
(class probabilities, an uncertainty map: this module knows no heads or activations) are
blended with a weight window and normalised by the summed weights. Rasters are
streamed in vertical bands of ``block_size`` columns, each one strip (row of tiles)
at a time, carrying only the tile rows still open; finished windows are written out
immediately, so memory scales with ``block_size * tile_size * K``, not with the
raster's width or height. Tiles on a band border are run by both bands, so every
pixel is blended from exactly the tiles of the global grid that cover it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
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
from polyhead.inference.predictor import PROBABILITIES, Predictor
from polyhead.inference.tiling import (
    MapsFn,
    Normalize,
    band_layout,
    blend_window,
    check_config,
    n_tiles,
    normalize_tile,
    split_maps,
    tile_starts,
    weighted_maps,
    zeroed_view,
)

ReadWindow = Callable[[int, int, int, int], np.ndarray]


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
