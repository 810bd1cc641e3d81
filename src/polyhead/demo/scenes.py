"""Land-cover class maps and their multi-band rendering for the synthetic demo.

Class maps mix smooth random blobs (water, vegetation), rectangles (buildings, crop
parcels) and a road; each class has a mean spectral signature (B, G, R, NIR, SWIR1,
SWIR2) plus texture, illumination, haze, shadows and correlated sensor noise.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

CLASS_NAMES: tuple[str, ...] = (
    "background",
    "water",
    "vegetation",
    "building",
    "road",
    "cropland",
)
# Mean reflectance per class at B, G, R, NIR, SWIR1, SWIR2 (rows follow CLASS_NAMES).
_SIGNATURES = np.array(
    [
        [0.10, 0.13, 0.17, 0.25, 0.32, 0.28],  # bare soil
        [0.07, 0.06, 0.04, 0.02, 0.01, 0.01],  # water: dark, very low NIR
        [0.03, 0.07, 0.04, 0.38, 0.20, 0.10],  # vegetation: high NIR
        [0.20, 0.21, 0.23, 0.27, 0.29, 0.27],  # building: bright, flat
        [0.11, 0.12, 0.13, 0.15, 0.18, 0.17],  # road: asphalt grey
        [0.06, 0.10, 0.08, 0.30, 0.26, 0.16],  # cropland
    ]
)


def smooth_field(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Smooth zero-mean, unit-std random field (periodic Gaussian blur of white noise)."""
    fy = np.fft.fftfreq(shape[0])[:, None]
    fx = np.fft.rfftfreq(shape[1])[None, :]
    gain = np.exp(-2.0 * (np.pi * sigma) ** 2 * (fy**2 + fx**2))
    f = np.fft.irfft2(np.fft.rfft2(rng.standard_normal(shape)) * gain, s=shape)
    return (f - f.mean()) / (f.std() + 1e-12)


def _rect(rng: np.random.Generator, size: int, lo: int, hi: int) -> tuple[slice, slice]:
    h, w = rng.integers(lo, hi + 1, size=2)
    y, x = rng.integers(0, size - min(h, size) + 1), rng.integers(0, size - min(w, size) + 1)
    return slice(y, y + h), slice(x, x + w)


def land_cover_map(rng: np.random.Generator, size: int, n_classes: int) -> np.ndarray:
    """Land-cover class map: blobs, parcels, a road and buildings."""
    shape = (size, size)
    lab = np.zeros(shape, np.uint8)
    if n_classes > 2:
        veg = smooth_field(rng, shape, size / 14)
        lab[veg > np.quantile(veg, rng.uniform(0.55, 0.7))] = 2
    if n_classes > 5:
        for _ in range(rng.integers(2, 5)):
            sl = _rect(rng, size, size // 8, size // 3)
            lab[sl][lab[sl] == 0] = 5
    water = smooth_field(rng, shape, size / 10)
    lab[water > np.quantile(water, rng.uniform(0.82, 0.92))] = 1
    if n_classes > 4:
        _draw_road(rng, lab, width=int(rng.integers(2, 4)))
    if n_classes > 3:
        for _ in range(rng.integers(8, 18)):
            sl = _rect(rng, size, max(3, size // 40), max(5, size // 12))
            if (lab[sl] == 1).mean() < 0.1:
                lab[sl] = 3
    return lab


def _draw_road(rng: np.random.Generator, lab: np.ndarray, width: int) -> None:
    size = lab.shape[0]
    t = np.linspace(0.0, 1.0, 4 * size)
    a, b = rng.uniform(0.1, 0.9, size=2) * size
    bend = rng.uniform(-0.15, 0.15) * size * np.sin(np.pi * t)
    along, across = t * (size - 1), a + (b - a) * t + bend
    ys, xs = (along, across) if rng.random() < 0.5 else (across, along)
    ys = np.clip(np.round(ys).astype(int), 0, size - 1)
    xs = np.clip(np.round(xs).astype(int), 0, size - 1)
    line = np.zeros(lab.shape, bool)
    line[ys, xs] = True
    lab[ndimage.binary_dilation(line, iterations=max(1, width // 2))] = 4


def render_scene(rng: np.random.Generator, truth: np.ndarray, bands: int) -> np.ndarray:
    """Render reflectance x 10000 (uint16 ``[bands, H, W]``) for a class map."""
    shape = truth.shape
    pos = np.arange(bands) if bands <= 6 else np.linspace(0, 5, bands)
    sig = np.stack([np.interp(pos, np.arange(6), s) for s in _SIGNATURES])  # [6, bands]
    sig = sig * rng.uniform(0.9, 1.1, size=sig.shape)  # per-scene spectral drift
    img = np.moveaxis(sig[truth], -1, 0)  # [bands, H, W]
    # class-specific texture
    tex = np.ones(shape)
    tex += np.where(truth == 2, 0.18 * smooth_field(rng, shape, 1.5), 0.0)
    tex += np.where(truth == 0, 0.12 * smooth_field(rng, shape, 6), 0.0)
    tex += np.where(truth == 1, 0.15 * smooth_field(rng, shape, 10), 0.0)
    objs, n = ndimage.label(truth == 3)
    tex *= np.concatenate([[1.0], rng.uniform(0.75, 1.35, n)])[objs]
    if truth.max() >= 5:
        yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
        theta = rng.uniform(0, np.pi)
        rows = np.sin((np.cos(theta) * yy + np.sin(theta) * xx) * 2 * np.pi / 5)
        tex += np.where(truth == 5, 0.08 * rows, 0.0)
    img = img * tex[None]
    # sensor point-spread (mixed pixels), illumination, haze, shadows, noise
    img = ndimage.gaussian_filter(img, (0, 0.7, 0.7))
    img *= 1.0 + 0.08 * smooth_field(rng, shape, shape[0] / 4)[None]
    haze = np.clip(smooth_field(rng, shape, shape[0] / 8) - 1.0, 0, None) * 0.04
    img[: min(3, bands)] += haze[None]
    shadow = smooth_field(rng, shape, 5) > 2.0
    img *= np.where(shadow, 0.7, 1.0)[None]
    img += 0.012 * np.stack([smooth_field(rng, shape, 1.2) for _ in range(bands)])
    img += 0.006 * rng.standard_normal(img.shape)
    return np.clip(np.round(img * 10000), 0, 65535).astype(np.uint16)
