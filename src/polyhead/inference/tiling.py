"""Tile and band layout, blending weights and the per-tile normalisation fallback."""

from __future__ import annotations

import math
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


def check_config(tile_size: int, overlap: int, batch_size: int | None, blend: str) -> None:
    """Raise `ConfigError` for an unusable tiling configuration (``batch_size`` None: auto)."""
    if tile_size <= 0 or tile_size % 32:
        raise ConfigError(f"tile_size must be a positive multiple of 32, got {tile_size}")
    if not 0 <= overlap < tile_size:
        raise ConfigError(f"overlap must be in [0, tile_size={tile_size}), got {overlap}")
    if batch_size is not None and batch_size < 1:
        raise ConfigError(
            f"batch_size must be >= 1 (or None: chosen for the device), got {batch_size}"
        )
    if blend not in BLENDS:
        raise ConfigError(f"blend must be one of {BLENDS}, got {blend!r}")


#: output blocks of polyhead's GeoTIFFs; band borders fall on multiples of it when they can
OUTPUT_BLOCK = 256


def tiles_per_band(tile_size: int, overlap: int, block_size: int) -> int:
    """Tile columns per vertical band: about ``block_size / stride``, rounded down to a
    multiple that puts band borders on `OUTPUT_BLOCK` columns when one fits."""
    if block_size < 1:
        raise ConfigError(f"block_size must be >= 1, got {block_size}")
    stride = tile_size - overlap
    per = max(1, block_size // stride)
    unit = OUTPUT_BLOCK // math.gcd(stride, OUTPUT_BLOCK)
    return per - per % unit if per >= unit else per


def band_layout(
    width: int, tile_size: int, overlap: int, block_size: int
) -> list[tuple[int, int, list[int]]]:
    """``(c0, c1, tile x starts)`` per vertical band, left to right.

    Every tile of the global grid belongs to exactly one band (consecutive tile columns,
    `tiles_per_band` of them). A band finishes the output columns ``[c0, c1)``: from its
    first tile's start to the next band's first tile start (the raster's width for the
    last); columns past ``c1`` that its tiles reach are carried to the next band.
    """
    xs = tile_starts(width, tile_size, overlap)
    per = tiles_per_band(tile_size, overlap, block_size)
    groups = [xs[i : i + per] for i in range(0, len(xs), per)]
    edges = [g[0] for g in groups] + [width]
    return [(edges[i], edges[i + 1], g) for i, g in enumerate(groups)]


def n_tiles_run(height: int, width: int, tile_size: int, overlap: int, block_size: int) -> int:
    """Tiles run when streaming by bands of ``block_size``: the global grid, each tile once."""
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


#: names and channel counts of the maps blended together, in channel order
Layout = list[tuple[str, int]]

#: turns a batch of tiles ``[B, C, T, T]`` into named per-pixel maps ``{name: [B, c, T, T]}``
MapsFn = Callable[[torch.Tensor], Mapping[str, torch.Tensor]]


def split_maps(layout: Layout, stacked: Any) -> dict[str, Any]:
    """Undo the channel stacking of the blended maps: ``{name: [c, ...]}`` (views)."""
    out, start = {}, 0
    for name, channels in layout:
        out[name] = stacked[start : start + channels]
        start += channels
    return out
