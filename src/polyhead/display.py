"""Colours and image stretches shared by every figure."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from polyhead.classes import ClassTable
from polyhead.errors import DataError


def class_colors(n_classes: int) -> np.ndarray:
    """RGB colours ``[K, 3]`` in [0, 1], consistent across figures (`polyhead.classes`)."""
    return np.asarray(ClassTable.default(n_classes).colors_float(), dtype=np.float64).reshape(-1, 3)


def stretch_rgb(
    image: np.ndarray,
    rgb_bands: Sequence[int] = (2, 1, 0),
    percentiles: tuple[float, float] = (2.0, 98.0),
) -> np.ndarray:
    """Percentile-stretched ``[H, W, 3]`` composite of a ``[C, H, W]`` image (grey if C < 3)."""
    image = np.asarray(image, dtype=np.float64)
    if image.ndim != 3:
        raise DataError(f"image must be [C, H, W], got shape {image.shape}")
    bands = list(rgb_bands) if image.shape[0] >= 3 else [0, 0, 0]
    if max(bands) >= image.shape[0] or min(bands) < -image.shape[0]:
        raise DataError(f"rgb_bands {tuple(rgb_bands)} out of range for {image.shape[0]} bands")
    out = np.empty(image.shape[1:] + (3,))
    for i, b in enumerate(bands):
        lo, hi = np.nanpercentile(image[b], percentiles)
        out[..., i] = np.clip((image[b] - lo) / max(hi - lo, 1e-12), 0.0, 1.0)
    return out
