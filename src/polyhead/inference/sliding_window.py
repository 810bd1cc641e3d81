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

from collections.abc import Callable, Iterator, Mapping
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

from polyhead.errors import ConfigError, DataError
from polyhead.inference.pipeline import (
    DeviceNormalize,
    auto_batch_size,
    autocast,
    check_precision,
    model_on,
    pad_tiles,
)
from polyhead.inference.pipeline_threads import prefetch
from polyhead.inference.predictor import PROBABILITIES, Predictor
from polyhead.inference.tiling import (
    Layout,
    MapsFn,
    Normalize,
    band_layout,
    blend_window,
    check_config,
    n_tiles,
    split_maps,
    tile_starts,
)

#: ``read(row, col, h, w)``: the input window ``[C, h, w]`` (any numeric dtype, nodata pixels
#: already 0), or ``(window, nodata)`` with ``nodata`` ``[h, w]`` bool or None
ReadWindow = Callable[[int, int, int, int], Any]
#: turns the finished, divided maps (on the device) into the maps handed out
Finish = Callable[[dict[str, torch.Tensor]], Mapping[str, torch.Tensor]]
#: a ``block_size`` that puts every tile column in one band
ONE_BAND = 1 << 62
_TORCH_DTYPES = {np.dtype(t) for t in ("uint8", "int8", "int16", "int32", "int64")}
_TORCH_DTYPES |= {np.dtype(t) for t in ("float16", "float32", "float64")}


def as_predictor(model: Any) -> Predictor:
    """``model`` if it is a `Predictor`, else ``Predictor(model)`` (its default head)."""
    return model if isinstance(model, Predictor) else Predictor(model)


@dataclass
class TileCounts:
    """Tiles run through the model, and tiles skipped because all their pixels are nodata."""

    run: int = 0
    nodata: int = 0


@dataclass
class _Chunk:
    """The input of one strip of one band: ``pixels [C, th, span]`` and the tiles to run."""

    pixels: np.ndarray
    keep: list[bool] = field(default_factory=list)


def _chunks(read: ReadWindow, layout: list, ys: list[int], th: int, tw: int) -> Iterator[_Chunk]:
    """The chunks in the order the blending loop takes them: bands, then strips."""
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
            yield _Chunk(pixels, keep)


class _Blender:
    """Accumulators of one band on the device: weighted sums ``[K, th, span]`` and weights."""

    def __init__(self, n: int, th: int, span: int, device: torch.device) -> None:
        self.acc = torch.zeros((n, th, span), device=device)
        self.wsum = torch.zeros((th, span), device=device)
        self._spare = (torch.empty_like(self.acc), torch.empty_like(self.wsum))

    def drop_rows(self, n: int) -> None:
        """Forget the first ``n`` rows; the rest move up, zeros come in below."""
        acc, wsum = self._spare
        acc[:, -n:].zero_(), wsum[-n:].zero_()
        acc[:, :-n].copy_(self.acc[:, n:]), wsum[:-n].copy_(self.wsum[n:])
        self._spare = (self.acc, self.wsum)
        self.acc, self.wsum = acc, wsum


def _carry(layout: list, tw: int, k: int, height: int, device: torch.device) -> torch.Tensor:
    """Zeroed full-height sums and weights ``[k + 1, height, w]`` of the columns a band's
    tiles reach past its finished columns (the widest such overlap of any band)."""
    widths = [xs[-1] + tw - c1 for _, c1, xs in layout[:-1]]
    return torch.zeros((k + 1, height, max([1, *widths])), device=device)


def _probe_layout(maps_fn: MapsFn, channels: int, opt: _Options) -> Layout:
    """The maps' names and channels, from one zero tile (when no tile has run yet)."""
    x = torch.zeros((1, channels, opt.tile_size, opt.tile_size), device=opt.device)
    return _run_batch(maps_fn, x, opt.precision)[0]


def _run_batch(maps_fn: MapsFn, batch: torch.Tensor, precision: str) -> tuple[Layout, torch.Tensor]:
    """``maps_fn(batch)`` as float32, its maps stacked on the channel axis (the blend
    ``window`` is applied as they are summed)."""
    with torch.inference_mode(), autocast(precision, batch.device):
        maps = maps_fn(batch)
    if not isinstance(maps, Mapping) or not maps:
        raise ConfigError(
            f"the predictor must return named per-pixel maps, got {type(maps).__name__}"
        )
    b, _, h, w = batch.shape
    for name, m in maps.items():
        if m.ndim != 4 or m.shape[0] != b or tuple(m.shape[2:]) != (h, w):
            raise ConfigError(
                f"the model's {name!r} output must be [B, C, h, w] = [{b}, C, {h}, {w}], "
                f"got {list(m.shape)}"
            )
    layout = [(name, int(m.shape[1])) for name, m in maps.items()]
    values = [m.float() for m in maps.values()]
    with torch.inference_mode():
        return layout, values[0] if len(values) == 1 else torch.cat(values, dim=1)


@dataclass
class _Options:
    tile_size: int
    overlap: int
    batch_size: int | None
    device: torch.device
    blend: str
    pad_mode: str
    precision: str = "fp32"
    channels_last: bool = False


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
) -> Iterator[tuple[int, int, dict[str, np.ndarray]]]:
    """Yield ``(row, col, {map name: [c, n, w]})`` windows of finished output pixels.

    ``maps_fn`` turns a batch of tiles into named per-pixel maps (e.g. a `Predictor`); every
    map is blended alike, so this loop knows nothing of heads or activations. Bands
    (`band_layout`) are done left to right, each top to bottom; each pixel gets the
    contributions of exactly the global grid's tiles that cover it. ``prefetch_chunks`` > 0
    reads that many chunks ahead in a background thread; ``finish`` maps the divided maps
    on the device before they are copied back (default: all of them).
    """
    opt = _Options(
        tile_size,
        overlap,
        batch_size,
        torch.device(device),
        blend,
        pad_mode,
        precision,
        channels_last,
    )
    check_precision(precision, opt.device)
    counts = counts if counts is not None else TileCounts()
    layout = band_layout(width, tile_size, overlap, block_size)
    ys = tile_starts(height, tile_size, overlap)
    th, tw = min(tile_size, height), min(tile_size, width)
    chunks: Iterator[_Chunk] = _chunks(read, layout, ys, th, tw)
    if prefetch_chunks > 0:
        chunks = prefetch(chunks, prefetch_chunks)
    with closing(chunks), model_on(maps_fn, opt.device, channels_last):  # type: ignore[arg-type]
        yield from _blend_bands(
            maps_fn, chunks, layout, ys, height, th, tw, normalize, opt, on_tiles, finish, counts
        )


def _blend_bands(
    maps_fn: MapsFn,
    chunks: Iterator[_Chunk],
    layout: list,
    ys: list[int],
    height: int,
    th: int,
    tw: int,
    normalize: Normalize | None,
    opt: _Options,
    on_tiles: Callable[[int], None] | None,
    finish: Finish | None,
    counts: TileCounts,
) -> Iterator[tuple[int, int, dict[str, np.ndarray]]]:
    """`_iter_blocks`'s loop over bands and strips (see there)."""
    dev = opt.device
    w_tile = torch.from_numpy(blend_window(opt.tile_size, opt.overlap, opt.blend)[:th, :tw])
    w_tile = w_tile.to(dev)
    norm: DeviceNormalize | None = None
    carry: torch.Tensor | None = None  # [K + 1, height, carry width]: sums, then weights
    carry_in = 0  # columns of ``carry`` the current band takes in
    maps_layout: Layout | None = None
    batch_size = opt.batch_size
    last_x = torch.empty(0)
    for band, (c0, c1, bxs) in enumerate(layout):
        a0, span = bxs[0], bxs[-1] + tw - bxs[0]
        carry_out = span - (c1 - a0) if band + 1 < len(layout) else 0
        blender: _Blender | None = None
        acc_y0 = 0
        for y0 in [*ys, height]:
            if y0 > acc_y0:  # rows before y0 get no more contributions
                if blender is None:  # every tile so far was nodata
                    if maps_layout is None:
                        maps_layout = _probe_layout(maps_fn, last_x.shape[0], opt)
                    blender = _Blender(sum(c for _, c in maps_layout), th, span, dev)
                if carry is None:
                    carry = _carry(layout, tw, blender.acc.shape[0], height, dev)
                n, k = y0 - acc_y0, blender.acc.shape[0]
                rows = slice(acc_y0, y0)
                acc, wsum = blender.acc[:, :n], blender.wsum[:n]
                if carry_in:
                    acc[:, :, :carry_in] += carry[:k, rows, :carry_in]
                    wsum[:, :carry_in] += carry[k, rows, :carry_in]
                if carry_out:
                    carry[:k, rows, :carry_out] = acc[:, :, c1 - a0 :]
                    carry[k, rows, :carry_out] = wsum[:, c1 - a0 :]
                done = acc[:, :, c0 - a0 : c1 - a0] / wsum[None, :, c0 - a0 : c1 - a0]
                maps = split_maps(maps_layout, done)
                out = finish(maps) if finish is not None else maps
                yield acc_y0, c0, {name: m.cpu().numpy() for name, m in out.items()}
                if y0 == height:
                    break
                blender.drop_rows(n)
                acc_y0 = y0
            chunk = next(chunks)
            x = last_x = torch.from_numpy(chunk.pixels).to(dev, non_blocking=True).float()
            if norm is None:
                norm = DeviceNormalize(normalize, x.shape[0], dev)
            if batch_size is None:
                probe = (x.shape[0], opt.tile_size, opt.tile_size)
                batch_size = auto_batch_size(maps_fn, dev, probe, opt.precision, opt.channels_last)
            run = [x0 for x0, keep in zip(bxs, chunk.keep, strict=True) if keep]
            counts.nodata += len(bxs) - len(run)
            if on_tiles is not None and len(run) < len(bxs):
                on_tiles(len(bxs) - len(run))
            for b0 in range(0, len(run), batch_size):
                bx = run[b0 : b0 + batch_size]
                tiles = torch.stack([x[:, :, x0 - a0 : x0 - a0 + tw] for x0 in bx])
                tiles = pad_tiles(norm(tiles), opt.tile_size, opt.pad_mode)
                if opt.channels_last:
                    tiles = tiles.contiguous(memory_format=torch.channels_last)
                maps_layout, probs = _run_batch(maps_fn, tiles, opt.precision)
                if blender is None:
                    blender = _Blender(probs.shape[1], th, span, dev)
                for x0, p in zip(bx, probs, strict=True):  # one fused pass: acc += p * w
                    blender.acc[:, :, x0 - a0 : x0 - a0 + tw].addcmul_(p[:, :th, :tw], w_tile)
                    blender.wsum[:, x0 - a0 : x0 - a0 + tw] += w_tile
                counts.run += len(bx)
                if on_tiles is not None:
                    on_tiles(len(bx))
        carry_in = carry_out


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
