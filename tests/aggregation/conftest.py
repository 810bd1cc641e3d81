"""Simulated annotators with known confusion matrices, as arrays or GeoTIFF mask sets."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import Affine


def random_confusion(rng: np.random.Generator, k: int, accuracy: float) -> np.ndarray:
    """Row-stochastic ``[K, K]`` (rows: truth) with ``accuracy`` on the diagonal."""
    conf = np.zeros((k, k))
    for c in range(k):
        conf[c, np.arange(k) != c] = rng.dirichlet(np.ones(k - 1)) * (1.0 - accuracy)
        conf[c, c] = accuracy
    return conf


def sample_labels(rng: np.random.Generator, truth: np.ndarray, conf: np.ndarray) -> np.ndarray:
    """One annotator's labels for ``truth`` drawn from the rows of ``conf``."""
    cum = np.cumsum(conf, axis=1)[truth]
    u = rng.random(truth.shape)[..., None]
    return np.minimum((u > cum).sum(axis=-1), conf.shape[0] - 1)


def simulate(
    seed: int,
    n: int,
    k: int,
    accuracies: tuple[float, ...],
    missing: float = 0.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Truth ``[N]``, labels ``[N, A]`` (-1 missing), confusions ``[A, K, K]``, priors ``[K]``.

    Every row keeps at least one label; every annotator uses every class at least once.
    """
    rng = np.random.default_rng(seed)
    priors = rng.dirichlet(np.ones(k) * 4)
    truth = rng.choice(k, size=n, p=priors)
    confs = np.stack([random_confusion(rng, k, acc) for acc in accuracies])
    labels = np.stack([sample_labels(rng, truth, c) for c in confs], axis=1)
    if missing:
        drop = rng.random(labels.shape) < missing
        drop[drop.all(axis=1), 0] = False
        labels[drop] = -1
    for a in range(len(accuracies)):  # make sure every class is used (crowd-kit keys on it)
        labels[np.arange(k), a] = np.arange(k)
    return truth, labels.astype(np.int64), confs, priors


def write_tif(path: Path, array: np.ndarray, transform: Affine | None = None) -> Path:
    """Write a single-band mask GeoTIFF (EPSG:32633)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    profile = dict(
        driver="GTiff",
        height=array.shape[0],
        width=array.shape[1],
        count=1,
        dtype=str(array.dtype),
        crs="EPSG:32633",
        transform=transform or Affine(10.0, 0, 400000.0, 0, -10.0, 5000000.0),
    )
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(array[None])
    return path


def write_mask_set(
    root: Path,
    masks: dict[str, dict[str, np.ndarray]],
    transforms: dict[str, Affine] | None = None,
) -> Path:
    """``masks[image][annotator]`` -> mask GeoTIFFs, blank scenes, ``annotators.csv`` (relative)."""
    rows = []
    for image, by_ann in masks.items():
        shape = next(iter(by_ann.values())).shape
        write_tif(
            root / "scenes" / f"{image}.tif",
            np.zeros(shape, np.uint16),
            (transforms or {}).get(image),
        )
        for ann, arr in by_ann.items():
            rel = f"annotators/{ann}/{image}.tif"
            write_tif(root / rel, arr, (transforms or {}).get(image))
            rows.append([f"scenes/{image}.tif", ann, rel])
    csv_path = root / "annotators.csv"
    with open(csv_path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["image", "annotator", "mask"])
        writer.writerows(rows)
    return csv_path


@pytest.fixture
def small_set(tmp_path: Path):
    """3 images of 24 x 32 by 3 annotators (4 classes), annotator 'c' skips image 2."""
    rng = np.random.default_rng(7)
    k, shape = 4, (24, 32)
    confs = [random_confusion(rng, k, acc) for acc in (0.9, 0.75, 0.6)]
    masks: dict[str, dict[str, np.ndarray]] = {}
    truths = {}
    for i in range(3):
        truth = rng.integers(0, k, shape)
        truths[f"img{i}"] = truth
        anns = ("a", "b", "c") if i < 2 else ("a", "b")
        masks[f"img{i}"] = {
            a: sample_labels(rng, truth, confs[j]).astype(np.uint8) for j, a in enumerate(anns)
        }
    masks["img0"]["a"][:2] = 255  # some pixels ignored by one annotator
    for a in ("a", "b", "c"):
        masks["img0"][a][-1, :5] = 255  # nobody labelled these 5 pixels
    transforms = {f"img{i}": Affine(10.0, 0, 400000.0 + 1000 * i, 0, -10.0, 5e6) for i in range(3)}
    csv_path = write_mask_set(tmp_path / "data", masks, transforms)
    return csv_path, masks, truths, transforms, k
