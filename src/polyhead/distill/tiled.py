"""Whole-image tiled inference for functions returning several per-pixel maps.

`polyhead.inference.sliding_window.predict_array` blends softmax probabilities only; a
teacher returns probabilities plus uncertainty maps, and a student a class map plus an
uncertainty map. `run_tiled` runs any ``fn(batch) -> [B, C, t, t]`` over overlapping tiles
and blends every channel with the same weight window. The whole image and its ``C`` output
maps are held in memory (float32), so this suits images up to a few thousand pixels a side.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from polyhead.errors import DataError
from polyhead.inference.tiling import blend_window, check_config, tile_starts

TileFn = Callable[[torch.Tensor], torch.Tensor]


def apply_normalize(normalize: Any, image: np.ndarray) -> np.ndarray:
    """``normalize`` (albumentations transform or callable on HWC float32) on ``[C, H, W]``."""
    if normalize is None:
        return np.asarray(image, np.float32)
    hwc = np.ascontiguousarray(np.moveaxis(np.asarray(image, np.float32), 0, -1))
    if type(normalize).__module__.startswith("albumentations"):
        out = normalize(image=hwc)["image"]
    else:
        out = normalize(hwc)
    out = np.asarray(out, np.float32)
    return np.ascontiguousarray(np.moveaxis(out[..., None] if out.ndim == 2 else out, -1, 0))


def _tile_size(tile_size: int, height: int, width: int) -> int:
    """Shrink the tile to the image (rounded up to 32) when the image is smaller."""
    return min(tile_size, 32 * -(-max(height, width) // 32))


def run_tiled(
    fn: TileFn,
    image: np.ndarray,
    tile_size: int = 512,
    overlap: int = 64,
    batch_size: int = 4,
    device: str | torch.device = "cpu",
    blend: str = "gaussian",
) -> np.ndarray:
    """Blended outputs ``[C, H, W]`` (float32) of ``fn`` over tiles of ``image [C_in, H, W]``.

    ``image`` is used as given (normalise it first, see `apply_normalize`). Images smaller
    than a tile are reflect-padded (edge-padded when too small to reflect) and cropped back.
    """
    check_config(tile_size, overlap, batch_size, blend)
    image = np.asarray(image, np.float32)
    if image.ndim != 3 or min(image.shape) < 1:
        raise DataError(f"image must be a non-empty [C, H, W] array, got shape {image.shape}")
    _, height, width = image.shape
    t = _tile_size(tile_size, height, width)
    ph, pw = max(0, t - height), max(0, t - width)
    if ph or pw:
        mode = "reflect" if ph < height and pw < width else "edge"
        image = np.pad(image, ((0, 0), (0, ph), (0, pw)), mode=mode)
    H, W = image.shape[1:]
    ov = min(overlap, t - 1)
    starts = [(y, x) for y in tile_starts(H, t, ov) for x in tile_starts(W, t, ov)]
    dev = torch.device(device)
    window_cpu = torch.from_numpy(blend_window(t, ov, blend))
    window = window_cpu.to(dev)
    acc: torch.Tensor | None = None
    wsum = torch.zeros((H, W), dtype=torch.float32)
    with torch.inference_mode():
        for b0 in range(0, len(starts), batch_size):
            chunk = starts[b0 : b0 + batch_size]
            batch = np.stack([image[:, y : y + t, x : x + t] for y, x in chunk])
            out = fn(torch.from_numpy(batch).to(dev)).float()
            out = (out * window).cpu()
            if acc is None:
                acc = torch.zeros((out.shape[1], H, W), dtype=torch.float32)
            for (y, x), o in zip(chunk, out, strict=True):
                acc[:, y : y + t, x : x + t] += o
                wsum[y : y + t, x : x + t] += window_cpu
    assert acc is not None
    return (acc / wsum)[:, :height, :width].numpy()
