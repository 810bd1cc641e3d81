"""Tile and band layout, blending weights, tile normalisation and weighted softmax."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch

from polyhead.errors import ConfigError

BLENDS = ("gaussian", "linear", "none")

Normalize = Callable[..., Any]


def tile_starts(length: int, tile_size: int, overlap: int) -> list[int]:
    """Tile offsets along one axis; the last tile ends at the border (``[0]`` if short)."""
    if length <= tile_size:
        return [0]
    stride = tile_size - overlap
    starts = list(range(0, length - tile_size + 1, stride))
    if starts[-1] + tile_size < length:
        starts.append(length - tile_size)
    return starts


def n_tiles(height: int, width: int, tile_size: int, overlap: int) -> int:
    """Number of tiles covering a ``height x width`` raster."""
    return len(tile_starts(height, tile_size, overlap)) * len(
        tile_starts(width, tile_size, overlap)
    )


def blend_window(tile_size: int, overlap: int, blend: str = "gaussian") -> np.ndarray:
    """Strictly positive ``[tile, tile]`` float32 weights (max 1) for blending tiles.

    ``gaussian``: sigma = tile/8 around the centre; ``linear``: ramps from
    ``1/(overlap+1)`` at the border to 1 over ``overlap`` pixels; ``none``: ones.
    """
    idx = np.arange(tile_size, dtype=np.float64)
    if blend == "gaussian":
        sigma = tile_size / 8.0
        w1 = np.exp(-((idx - (tile_size - 1) / 2.0) ** 2) / (2.0 * sigma**2))
    elif blend == "linear":
        w1 = np.minimum((np.minimum(idx, tile_size - 1 - idx) + 1.0) / (overlap + 1.0), 1.0)
    elif blend == "none":
        w1 = np.ones(tile_size)
    else:
        raise ConfigError(f"blend must be one of {BLENDS}, got {blend!r}")
    w = np.outer(w1, w1)
    return np.maximum(w / w.max(), 1e-6).astype(np.float32)


def check_config(tile_size: int, overlap: int, batch_size: int, blend: str) -> None:
    """Raise `ConfigError` for an unusable tiling configuration."""
    if tile_size <= 0 or tile_size % 32:
        raise ConfigError(f"tile_size must be a positive multiple of 32, got {tile_size}")
    if not 0 <= overlap < tile_size:
        raise ConfigError(f"overlap must be in [0, tile_size={tile_size}), got {overlap}")
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    if blend not in BLENDS:
        raise ConfigError(f"blend must be one of {BLENDS}, got {blend!r}")


def band_cores(width: int, block_size: int, tile_size: int) -> list[tuple[int, int]]:
    """Output column ranges ``[c0, c1)`` of the vertical bands a raster is streamed in.

    Bands are ``block_size`` wide (at least ``tile_size``); a remainder narrower than a
    tile joins the last band, which is then up to ``block_size + tile_size - 1`` wide.
    """
    if block_size < 1:
        raise ConfigError(f"block_size must be >= 1, got {block_size}")
    block = max(block_size, tile_size)
    edges = list(range(0, width, block))
    if len(edges) > 1 and width - edges[-1] < tile_size:
        edges.pop()
    return list(zip(edges, [*edges[1:], width], strict=True))


def tiles_touching(starts: list[int], size: int, c0: int, c1: int) -> list[int]:
    """The ``starts`` whose tiles of ``size`` pixels intersect ``[c0, c1)``."""
    return [s for s in starts if s < c1 and s + size > c0]


def band_layout(
    width: int, tile_size: int, overlap: int, block_size: int
) -> list[tuple[int, int, list[int]]]:
    """``(c0, c1, tile x starts)`` per band: its output columns and the tiles touching them."""
    xs, tw = tile_starts(width, tile_size, overlap), min(tile_size, width)
    return [
        (c0, c1, tiles_touching(xs, tw, c0, c1))
        for c0, c1 in band_cores(width, block_size, tile_size)
    ]


def n_tiles_run(height: int, width: int, tile_size: int, overlap: int, block_size: int) -> int:
    """Tiles run when streaming by bands of ``block_size`` (border tiles count per band)."""
    per_row = sum(len(xs) for _, _, xs in band_layout(width, tile_size, overlap, block_size))
    return len(tile_starts(height, tile_size, overlap)) * per_row


def normalize_tile(normalize: Normalize | None, tile: np.ndarray) -> np.ndarray:
    """Apply ``normalize`` to a float32 HWC tile (albumentations transforms get image=)."""
    if normalize is None:
        return tile
    if type(normalize).__module__.startswith("albumentations"):
        out = normalize(image=tile)["image"]
    else:
        out = normalize(tile)
    return np.asarray(out, dtype=np.float32)


def zeroed_view(buf: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """The start of the flat ``buf`` as a zeroed C-contiguous array of ``shape``."""
    out = buf[: int(np.prod(shape))].reshape(shape)
    out[...] = 0
    return out


#: names and channel counts of the maps blended together, in channel order
Layout = list[tuple[str, int]]

#: turns a batch of tiles ``[B, C, T, T]`` into named per-pixel maps ``{name: [B, c, T, T]}``
MapsFn = Callable[[torch.Tensor], Mapping[str, torch.Tensor]]


def weighted_maps(
    maps_fn: MapsFn, batch: np.ndarray, device: torch.device, window: torch.Tensor
) -> tuple[Layout, np.ndarray]:
    """``maps_fn(batch)`` times the blend ``window``, its maps stacked on the channel axis:
    ``(layout, [B, sum of channels, T, T] float32 on CPU)``."""
    with torch.inference_mode():
        maps = maps_fn(torch.from_numpy(batch).to(device))
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
        stacked = torch.cat([m.float() for m in maps.values()], dim=1)
        return layout, (stacked * window).cpu().numpy()


def split_maps(layout: Layout, stacked: np.ndarray) -> dict[str, np.ndarray]:
    """Undo the channel stacking of `weighted_maps`: ``{name: [c, ...]}`` (views)."""
    out, start = {}, 0
    for name, channels in layout:
        out[name] = stacked[start : start + channels]
        start += channels
    return out
