"""Tile layout and blending weights for sliding-window inference."""

from __future__ import annotations

import numpy as np

from polyhead.errors import ConfigError

BLENDS = ("gaussian", "linear", "none")


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
