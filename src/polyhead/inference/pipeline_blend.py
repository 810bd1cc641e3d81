"""The blending loop of the sliding window on the model's device (see `sliding_window`).

Tiles wait in a queue until a full batch is ready, across strips: a batch may hold the last
tiles of one strip and the first of the next, so the model always sees ``batch_size`` tiles
(only a band's last batch may be short). The accumulators of a band are as deep as the
strips still open; rows are finished (divided and handed out) once every tile of their
strips has run, in order, so each pixel sums the same tiles in the same order as before.
The sums are never zeroed: each tile sets the pixels no earlier tile wrote (`blend_tiles`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from polyhead.errors import ConfigError
from polyhead.inference.blend_tiles import add_tile, add_weights, at, own_span, uninitialized
from polyhead.inference.pipeline import (
    DeviceNormalize,
    auto_batch_size,
    autocast,
    pad_tiles,
)
from polyhead.inference.predictor import PROBABILITIES
from polyhead.inference.tiling import Layout, MapsFn, blend_window, split_maps

#: turns the finished, divided maps (on the device) into the maps handed out. A finish whose
#: ``argmax_only`` attribute is True reads nothing but the arg-max of a single map: it is then
#: handed the weighted sums undivided (the weights are positive: the order is the same)
Finish = Callable[[dict[str, torch.Tensor]], Mapping[str, torch.Tensor]]


@dataclass
class TileCounts:
    """Tiles run through the model, and tiles skipped because all their pixels are nodata."""

    run: int = 0
    nodata: int = 0


@dataclass
class Options:
    """How `BandBlender` runs (see `sliding_window._iter_blocks`)."""

    tile_size: int
    overlap: int
    batch_size: int | None
    device: torch.device
    blend: str
    pad_mode: str
    precision: str = "fp32"
    channels_last: bool = False
    deferred: bool = False


class HostBlock:
    """Finished maps on their way to the host: a non-blocking copy into page-locked memory
    on CUDA (`maps` waits for it), the tensors themselves on a CPU."""

    def __init__(self, maps: Mapping[str, torch.Tensor]) -> None:
        self.event = None
        if any(m.device.type == "cuda" for m in maps.values()):
            self._maps = {n: m.to("cpu", non_blocking=True) for n, m in maps.items()}
            self.event = torch.cuda.Event()
            self.event.record()
        else:
            self._maps = dict(maps)

    def maps(self) -> dict[str, np.ndarray]:
        """``{name: array}`` once the copy is done."""
        if self.event is not None:
            self.event.synchronize()
        return {name: m.numpy() for name, m in self._maps.items()}


#: devices whose tiles set their fresh pixels (`blend_tiles`) rather than adding into zeroed
#: sums: a CPU, where zeroing is a pass over memory; a GPU zeroes for almost nothing and
#: prefers one kernel per tile to three
SETS_FRESH = ("cpu",)


class _Blender:
    """Weighted sums ``[K, depth, span]`` and weights of one band, rows ``top ..`` on;
    zeroed as rows come in (``zeroed``), else left for the tiles to set."""

    def __init__(self, k: int, depth: int, span: int, device: torch.device, zeroed: bool) -> None:
        self.zeroed = zeroed
        self.acc = self._new((k, depth, span), device)
        self.wsum = self._new((depth, span), device)
        self._spare = (self._new(self.acc.shape, device), self._new(self.wsum.shape, device))
        self.top = 0  # raster row of buffer row 0

    def _new(self, shape: Sequence[int], device: torch.device) -> torch.Tensor:
        if self.zeroed:
            return torch.zeros(tuple(shape), device=device)
        return uninitialized(shape, device)

    def ensure(self, first: int, end: int) -> None:
        """Make raster rows ``first .. end`` addressable; rows before ``first`` are done."""
        depth = self.acc.shape[1]
        if end - self.top <= depth:
            return
        if end - first > depth:  # deeper than ever (batches across many strips): grow
            depth = end - first
            device = self.acc.device
            self._spare = (
                self._new((self.acc.shape[0], depth, self.acc.shape[2]), device),
                self._new((depth, self.acc.shape[2]), device),
            )
        acc, wsum = self._spare
        live = self.acc.shape[1] - (first - self.top)
        if self.zeroed:  # else the rows after are set by their tiles
            acc[:, live:].zero_(), wsum[live:].zero_()
        acc[:, :live].copy_(self.acc[:, first - self.top :])
        wsum[:live].copy_(self.wsum[first - self.top :])
        if acc.shape == self.acc.shape:
            self._spare = (self.acc, self.wsum)
        else:
            self._spare = (self._new(acc.shape, acc.device), self._new(wsum.shape, acc.device))
        self.acc, self.wsum, self.top = acc, wsum, first

    def rows(self, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Views of the sums and weights of raster rows ``start .. stop``."""
        a, b = start - self.top, stop - self.top
        return self.acc[:, a:b], self.wsum[a:b]


def run_batch(maps_fn: MapsFn, batch: torch.Tensor, precision: str) -> tuple[Layout, torch.Tensor]:
    """``maps_fn(batch)`` as float32, its maps stacked on the channel axis (the blend
    window is applied as they are summed)."""
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


def _take(pending: list, n: int) -> tuple[list, list]:
    """``pending`` split after its ``n``-th tile with pixels (all of it when it has fewer)."""
    seen = 0
    for i, (_, _, pixels) in enumerate(pending):
        seen += pixels is not None
        if seen == n:
            return pending[: i + 1], pending[i + 1 :]
    return pending, []


def _scores_fn(maps_fn: Any, finish: Any, device: torch.device) -> Callable | None:
    """The predictor's `class_scores` when batches run as scores, softmaxed only where tiles
    blend (`add_scores`): on a CPU, where that softmax is the pipeline's largest cost, when
    the finish takes the arg-max alone and the predictor can answer so."""
    if device.type != "cpu" or not getattr(finish, "argmax_only", False):
        return None
    return maps_fn.class_scores if getattr(maps_fn, "softmax_scores", False) else None


class BandBlender:
    """Runs the tiles of the bands and hands out finished rows (`blocks`)."""

    def __init__(
        self,
        maps_fn: MapsFn,
        layout: list,
        ys: list[int],
        height: int,
        shape: tuple[int, int],
        normalize: Any,
        opt: Options,
        on_tiles: Callable[[int], None] | None,
        finish: Finish | None,
        counts: TileCounts,
    ) -> None:
        self.maps_fn, self.layout, self.ys, self.height = maps_fn, layout, ys, height
        self.th, self.tw = shape
        self.normalize, self.opt, self.on_tiles = normalize, opt, on_tiles
        self.finish, self.counts = finish, counts
        window = blend_window(opt.tile_size, opt.overlap, opt.blend)[: self.th, : self.tw]
        self.w_tile = torch.from_numpy(window).to(opt.device)
        self.norm: DeviceNormalize | None = None
        self.maps_layout: Layout | None = None
        self.carry: torch.Tensor | None = None  # [K + 1, height, w]: sums, then weights
        self.channels = 0
        self._batch: torch.Tensor | None = None  # reused: maps are summed before the next
        self.scores_fn = _scores_fn(maps_fn, finish, opt.device)
        xs = sorted({x for _, _, bxs in layout for x in bxs})
        self.own_y = [own_span(ys, i, self.th) for i in range(len(ys))]
        self.own_x = {x: own_span(xs, i, self.tw) for i, x in enumerate(xs)}

    def _k(self) -> int:
        if self.maps_layout is None:  # every tile so far was nodata: learn the maps' layout
            x = torch.zeros((1, self.channels, self.opt.tile_size, self.opt.tile_size))
            self.maps_layout = run_batch(self.maps_fn, x.to(self.opt.device), self.opt.precision)[0]
        return sum(c for _, c in self.maps_layout)

    def _gather(self, pending: list) -> torch.Tensor:
        """The float32 batch ``[n, C, th, tw]`` of ``pending``'s tiles: each cut from its
        chunk (in the file's dtype) and converted by one copy into a reused buffer."""
        first = pending[0][2]
        shape = (len(pending), *first.shape)
        if self._batch is None or self._batch.shape[1:] != shape[1:]:
            self._batch = torch.empty(shape, device=first.device)
        if self._batch.shape[0] < shape[0]:
            self._batch = self._batch.new_empty(shape)
        batch = self._batch[: shape[0]]
        for slot, (_, _, tile) in zip(batch, pending, strict=True):
            slot.copy_(tile)
        return batch

    def _run(self, pending: list) -> torch.Tensor:
        """The stacked maps of the tiles ``(strip, col, tile)`` of ``pending``, one batch."""
        assert self.norm is not None
        tiles = self.norm(self._gather(pending), inplace=True)
        tiles = pad_tiles(tiles, self.opt.tile_size, self.opt.pad_mode)
        if self.opt.channels_last:
            tiles = tiles.contiguous(memory_format=torch.channels_last)
        fn = self.maps_fn
        if self.scores_fn is not None:
            fn = lambda batch: {PROBABILITIES: self.scores_fn(batch)}  # noqa: E731
        self.maps_layout, probs = run_batch(fn, tiles, self.opt.precision)
        return probs

    def _accumulate(
        self, batch: list, probs: torch.Tensor | None, blender: _Blender, a0: int, fresh_x: dict
    ) -> None:
        """Add the weighted maps of ``batch``'s tiles to ``blender``, in order; a nodata tile
        (no pixels) zeroes its fresh pixels instead."""
        th, tw, divide = self.th, self.tw, self._divide()
        maps = iter(probs if probs is not None else ())
        for si, x0, pixels in batch:
            acc, wsum = blender.rows(self.ys[si], self.ys[si] + th)
            cols = slice(x0 - a0, x0 - a0 + tw)
            own = (*self.own_y[si], *self.own_x[x0]) if self.scores_fn is not None else None
            fresh = (self.own_y[si][0], th, fresh_x[x0], tw)
            if blender.zeroed:  # added to everywhere, but own pixels are still set
                fresh = own or (0, 0, 0, 0)
            if pixels is None:
                at(acc[:, :, cols], fresh).zero_()
                at(wsum[:, cols], fresh).zero_()
                continue
            p = next(maps)[:, :th, :tw]
            add_tile(acc[:, :, cols], p, self.w_tile, fresh, own)
            if divide and own is None:
                add_weights(wsum[:, cols], self.w_tile, fresh)
        ran = sum(pixels is not None for _, _, pixels in batch)
        self.counts.run += ran
        if self.on_tiles is not None:
            self.on_tiles(ran)

    def _divide(self) -> bool:
        """Whether the sums are divided by the weights (not when the finish only takes the
        arg-max of the one map there is)."""
        single = self.maps_layout is not None and len(self.maps_layout) == 1
        return not (single and getattr(self.finish, "argmax_only", False))

    def _finished(self, band: int, blender: _Blender, start: int, stop: int, carry_in: int):
        """Divide rows ``start .. stop`` of the band's finished columns; keep its carry."""
        c0, c1, bxs = self.layout[band]
        a0, span = bxs[0], bxs[-1] + self.tw - bxs[0]
        k = blender.acc.shape[0]
        if self.carry is None:
            widths = [xs[-1] + self.tw - e for _, e, xs in self.layout[:-1]]
            shape = (k + 1, self.height, max([1, *widths]))
            self.carry = torch.zeros(shape, device=self.opt.device)
        blender.ensure(start, stop)
        acc, wsum = blender.rows(start, stop)
        carry, rows = self.carry, slice(start, stop)
        if carry_in:
            acc[:, :, :carry_in] += carry[:k, rows, :carry_in]
            wsum[:, :carry_in] += carry[k, rows, :carry_in]
        if band + 1 < len(self.layout):
            out_w = span - (c1 - a0)
            carry[:k, rows, :out_w] = acc[:, :, c1 - a0 :]
            carry[k, rows, :out_w] = wsum[:, c1 - a0 :]
        done = acc[:, :, c0 - a0 : c1 - a0]
        if self._divide():
            done = done / wsum[None, :, c0 - a0 : c1 - a0]
        assert self.maps_layout is not None
        maps = split_maps(self.maps_layout, done)
        block = HostBlock(self.finish(maps) if self.finish is not None else maps)
        return start, c0, block if self.opt.deferred else block.maps()

    def band(self, band: int, chunks: Iterator[Any], carry_in: int) -> Iterator[tuple]:
        """The finished blocks of one band, top to bottom."""
        _, _, bxs = self.layout[band]
        a0, span = bxs[0], bxs[-1] + self.tw - bxs[0]
        ys, th, opt = self.ys, self.th, self.opt
        stride = opt.tile_size - opt.overlap
        blender: _Blender | None = None
        # tiles in raster order, ``None`` pixels for a nodata tile (it zeroes its fresh pixels)
        pending: list[tuple[int, int, torch.Tensor | None]] = []
        fresh_x = {x: max(bxs[i - 1] + self.tw - x, 0) if i else 0 for i, x in enumerate(bxs)}
        done = 0  # strips whose rows have been handed out
        for si in range(len(ys)):
            chunk = next(chunks)
            x = chunk.pixels.to(opt.device, non_blocking=True)  # float32 in `_gather`
            self.channels = x.shape[0]
            if self.norm is None:
                self.norm = DeviceNormalize(self.normalize, x.shape[0], opt.device)
            if opt.batch_size is None:
                probe = (x.shape[0], opt.tile_size, opt.tile_size)
                opt.batch_size = auto_batch_size(
                    self.maps_fn, opt.device, probe, opt.precision, opt.channels_last
                )
            lag = -(-opt.batch_size // len(bxs)) + 1  # strips a full batch may span
            skipped = chunk.keep.count(False)
            self.counts.nodata += skipped
            if skipped and self.on_tiles is not None:
                self.on_tiles(skipped)
            pending += [
                (si, x0, x[:, :, x0 - a0 : x0 - a0 + self.tw] if keep else None)
                for x0, keep in zip(bxs, chunk.keep, strict=True)
            ]
            # a short batch rather than strips held open without end (sparse nodata tiles)
            kept = sum(t is not None for _, _, t in pending)
            flush = si + 1 == len(ys) or not kept or si - pending[0][0] >= lag
            while pending and (kept >= opt.batch_size or flush):
                batch, pending = _take(pending, opt.batch_size)
                runs = [entry for entry in batch if entry[2] is not None]
                kept -= len(runs)
                probs = self._run(runs) if runs else None
                if blender is None:
                    k = probs.shape[1] if probs is not None else self._k()
                    zeroed = opt.device.type not in SETS_FRESH
                    blender = _Blender(k, th + stride, span, opt.device, zeroed)
                blender.ensure(ys[done], ys[batch[-1][0]] + th)
                self._accumulate(batch, probs, blender, a0, fresh_x)
            ready = pending[0][0] if pending else si + 1
            for strip in range(done, ready):
                assert blender is not None  # every tile of the strip went through a batch
                stop = ys[strip + 1] if strip + 1 < len(ys) else self.height
                yield self._finished(band, blender, ys[strip], stop, carry_in)
            done = ready

    def blocks(self, chunks: Iterator[Any]) -> Iterator[tuple[int, int, Any]]:
        """Finished ``(row, col, maps)`` blocks of every band, left to right."""
        carry_in = 0
        for band, (_, c1, bxs) in enumerate(self.layout):
            yield from self.band(band, chunks, carry_in)
            carry_in = bxs[0] + (bxs[-1] + self.tw - bxs[0]) - c1
