"""Fixtures writing tiny GeoTIFF / PNG / npy segmentation sets into tmp_path."""

from __future__ import annotations

import csv
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine

N_CLASSES = 4
HEIGHT, WIDTH = 48, 40


def write_tif(path: Path, array: np.ndarray, georef: bool = True) -> Path:
    """Write a (bands, H, W) or (H, W) array as a GeoTIFF (EPSG:32633, 10 m pixels)."""
    array = array[None] if array.ndim == 2 else array
    path.parent.mkdir(parents=True, exist_ok=True)
    profile = {
        "driver": "GTiff",
        "height": array.shape[1],
        "width": array.shape[2],
        "count": array.shape[0],
        "dtype": str(array.dtype),
    }
    if georef:
        profile["crs"] = "EPSG:32633"
        profile["transform"] = Affine(10.0, 0.0, 500_000.0, 0.0, -10.0, 5_000_000.0)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(array)
    return path


def write_csv(path: Path, rows: list[list[str]], header: tuple[str, ...]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def random_soft(rng: np.random.Generator, n_classes: int, height: int, width: int) -> np.ndarray:
    """Dirichlet-random per-pixel probabilities, shape (K, H, W) float32."""
    probs = rng.dirichlet(np.ones(n_classes), size=(height, width)).astype(np.float32)
    probs /= probs.sum(axis=-1, keepdims=True)
    return np.ascontiguousarray(probs.transpose(2, 0, 1))


@dataclass
class SegSet:
    """A written data set and the arrays it was written from."""

    root: Path
    csv: Path
    n_classes: int
    images: list[np.ndarray] = field(default_factory=list)  # (C, H, W)
    masks: list[np.ndarray] = field(default_factory=list)  # (H, W)
    softs: list[np.ndarray] = field(default_factory=list)  # (K, H, W) probabilities
    image_paths: list[Path] = field(default_factory=list)
    mask_paths: list[Path] = field(default_factory=list)
    soft_paths: list[Path] = field(default_factory=list)


def make_seg_set(
    root: Path,
    n_images: int = 3,
    height: int = HEIGHT,
    width: int = WIDTH,
    bands: int = 4,
    n_classes: int = N_CLASSES,
    soft: str | None = "float32",
    image_dtype: str = "uint16",
    seed: int = 0,
) -> SegSet:
    """Write images, uint8 hard masks (some ignore pixels) and soft masks, plus data.csv.

    ``soft`` is "float32" (GeoTIFF), "uint8" (GeoTIFF scaled 0-255), "npy" or None.
    The hard mask is the argmax of the soft mask, except ignored pixels (255) whose
    soft mask is all zero.
    """
    rng = np.random.default_rng(seed)
    data = SegSet(root=root, csv=root / "data.csv", n_classes=n_classes)
    rows = []
    for i in range(n_images):
        image = rng.integers(0, 4000, size=(bands, height, width)).astype(image_dtype)
        probs = random_soft(rng, n_classes, height, width)
        mask = probs.argmax(axis=0).astype(np.uint8)
        ignored = rng.random((height, width)) < 0.05
        mask[ignored] = 255
        probs[:, ignored] = 0.0
        image_path = write_tif(root / "images" / f"img_{i}.tif", image)
        mask_path = write_tif(root / "masks" / f"mask_{i}.tif", mask)
        row = [f"images/{image_path.name}", f"masks/{mask_path.name}"]
        if soft is not None:
            if soft == "npy":
                soft_path = root / "soft" / f"soft_{i}.npy"
                soft_path.parent.mkdir(parents=True, exist_ok=True)
                np.save(soft_path, probs)
            elif soft == "uint8":
                soft_path = write_tif(
                    root / "soft" / f"soft_{i}.tif", np.round(probs * 255).astype(np.uint8)
                )
            else:
                soft_path = write_tif(root / "soft" / f"soft_{i}.tif", probs.astype(soft))
            data.soft_paths.append(soft_path)
            row.append(f"soft/{soft_path.name}")
        data.images.append(image)
        data.masks.append(mask)
        data.softs.append(probs)
        data.image_paths.append(image_path)
        data.mask_paths.append(mask_path)
        rows.append(row)
    header = ("image", "mask", "soft_mask") if soft is not None else ("image", "mask")
    write_csv(data.csv, rows, header)
    return data


@pytest.fixture
def seg_factory(tmp_path: Path) -> Callable[..., SegSet]:
    """Factory writing a fresh SegSet into its own folder under tmp_path."""
    counter = itertools.count()

    def factory(**kwargs: object) -> SegSet:
        return make_seg_set(tmp_path / f"set{next(counter)}", **kwargs)  # type: ignore[arg-type]

    return factory


@pytest.fixture
def seg_set(seg_factory: Callable[..., SegSet]) -> SegSet:
    """Three 48x40 4-band uint16 GeoTIFFs with uint8 masks and float32 soft masks."""
    return seg_factory()


@pytest.fixture
def png_set(tmp_path: Path) -> SegSet:
    """One RGB PNG image with a palette-free 8-bit PNG mask."""
    from PIL import Image

    rng = np.random.default_rng(1)
    root = tmp_path / "png"
    root.mkdir()
    image = rng.integers(0, 256, size=(HEIGHT, WIDTH, 3), dtype=np.uint8)
    mask = rng.integers(0, N_CLASSES, size=(HEIGHT, WIDTH), dtype=np.uint8)
    Image.fromarray(image).save(root / "img.png")
    Image.fromarray(mask).save(root / "mask.png")
    data = SegSet(root=root, csv=root / "data.csv", n_classes=N_CLASSES)
    data.images.append(image.transpose(2, 0, 1))
    data.masks.append(mask)
    data.image_paths.append(root / "img.png")
    data.mask_paths.append(root / "mask.png")
    write_csv(data.csv, [["img.png", "mask.png"]], ("image", "mask"))
    return data


class _SpyHandle:
    """Wraps a rasterio dataset and records the window of every read."""

    def __init__(self, real, log):
        self._real, self._log = real, log

    def read(self, *args, **kwargs):
        window = kwargs.get("window")
        if window is None:
            raise AssertionError(f"whole-raster read of {self._real.name}")
        self._log.append((self._real.name, int(window.height), int(window.width)))
        return self._real.read(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._real, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._real.close()


@pytest.fixture
def read_log(monkeypatch):
    log: list[tuple[str, int, int]] = []
    real_open = rasterio.open
    monkeypatch.setattr(rasterio, "open", lambda *a, **k: _SpyHandle(real_open(*a, **k), log))
    return log
