"""Synthetic remote-sensing-like dataset with simulated annotators.

Each scene is a multi-band GeoTIFF (uint16, reflectance x 10000) over a land-cover
map (see `polyhead.demo.scenes`). Three simulated annotators of different reliability label
every scene; their masks are aggregated into a hard mask (majority vote) and a soft
mask (per-class vote fractions).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from rasterio.transform import Affine
from scipy import ndimage

from polyhead.aggregation import majority_vote_labels, vote_fractions_labels
from polyhead.demo.scenes import CLASS_NAMES, land_cover_map, render_scene, smooth_field
from polyhead.errors import ConfigError, DataError
from polyhead.io import AtomicGeoTiff, Staging, write_csv

DEFAULT_ANNOTATORS: dict[str, float] = {"expert": 0.95, "trained": 0.8, "novice": 0.6}
CRS = "EPSG:32633"
PIXEL_SIZE = 10.0
# Plausible confusions (row: true class, column: class given by mistake).
_AFFINITY = np.array(
    [
        [0.0, 0.05, 0.3, 0.3, 0.25, 0.3],
        [0.2, 0.0, 0.6, 0.05, 0.05, 0.1],
        [0.3, 0.2, 0.0, 0.05, 0.05, 0.6],
        [0.5, 0.02, 0.1, 0.0, 0.5, 0.05],
        [0.5, 0.05, 0.1, 0.5, 0.0, 0.05],
        [0.4, 0.02, 0.6, 0.02, 0.05, 0.0],
    ]
)


@dataclass
class SyntheticDataset:
    """What `generate_synthetic_dataset` wrote; paths are absolute."""

    out_dir: Path
    train_csv: Path
    val_csv: Path
    annotator_csv: Path
    class_names: tuple[str, ...]
    annotators: tuple[str, ...]
    reliabilities: dict[str, float]
    train_scenes: list[str] = field(default_factory=list)
    val_scenes: list[str] = field(default_factory=list)
    measured_accuracy: dict[str, float] = field(default_factory=dict)
    confusion_matrices: dict[str, np.ndarray] = field(default_factory=dict)
    """Empirical row-normalised confusion (rows: truth, columns: annotator label)."""
    bands: int = 4
    crs: str = CRS


def majority_vote(
    masks: np.ndarray, n_classes: int, tie_order: Sequence[int] | None = None
) -> np.ndarray:
    """Per-pixel majority vote over annotator masks ``[A, H, W]`` -> ``[H, W]`` uint8.

    Ties between classes with the same (maximal) number of votes go to the label of
    the first annotator in ``tie_order`` (annotator indices, most reliable first;
    default ``0..A-1``) whose label is among the tied classes.
    """
    labels = _pixel_labels(masks, n_classes)
    order = range(labels.shape[1]) if tie_order is None else tie_order
    hard = majority_vote_labels(labels, n_classes, tie_order=order)
    return hard.astype(np.uint8).reshape(np.shape(masks)[1:])


def vote_fractions(masks: np.ndarray, n_classes: int) -> np.ndarray:
    """Per-class vote fraction ``[K, H, W]`` float32 from masks ``[A, H, W]``.

    The last non-zero class of each pixel absorbs the float32 rounding residue, so
    that the sequential float32 sum over the class axis (``frac.sum(axis=0)``) is
    exactly 1.
    """
    labels = _pixel_labels(masks, n_classes)
    frac = vote_fractions_labels(labels, n_classes).astype(np.float32)
    frac = np.ascontiguousarray(frac.T).reshape((n_classes, *np.shape(masks)[1:]))
    last = (n_classes - 1 - np.argmax(frac[::-1] > 0, axis=0))[None]
    cum = np.concatenate([np.zeros_like(frac[:1]), np.cumsum(frac, axis=0, dtype=np.float32)])
    before = np.take_along_axis(cum, last, 0)
    value = np.float32(1.0) - before
    for _ in range(8):  # nudge by one ulp where 1 - partial itself was rounded
        np.put_along_axis(frac, last, value, 0)
        total = frac.sum(axis=0, dtype=np.float32)[None]
        if np.all(total == 1.0):
            break
        toward = np.where(total > 1.0, np.float32(0.0), np.float32(2.0))
        value = np.where(total == 1.0, value, np.nextafter(value, toward))
    return frac


def _pixel_labels(masks: np.ndarray, n_classes: int) -> np.ndarray:
    """Masks ``[A, H, W]`` -> per-pixel label matrix ``[H*W, A]`` (no missing labels)."""
    masks = np.asarray(masks)
    if masks.ndim != 3:
        raise DataError(f"masks must be [A, H, W], got shape {masks.shape}")
    if masks.size and (masks.min() < 0 or masks.max() >= n_classes):
        raise DataError(
            f"mask values must lie in [0, {n_classes}), got {masks.min()}..{masks.max()}"
        )
    return masks.reshape(masks.shape[0], -1).T


def _lowest(score: np.ndarray, k: int) -> np.ndarray:
    """Boolean mask of the ``k`` lowest entries of ``score``."""
    out = np.zeros(score.size, bool)
    if k > 0:
        out[np.argpartition(score, k - 1, axis=None)[:k]] = True
    return out.reshape(score.shape)


def confusion_for(rng: np.random.Generator, n_classes: int) -> np.ndarray:
    """Error-conditional confusion (zero diagonal, rows sum to 1) for one annotator."""
    conf = _AFFINITY[:n_classes, :n_classes] * rng.uniform(0.5, 1.5, (n_classes, n_classes))
    conf = conf + 0.02
    np.fill_diagonal(conf, 0.0)
    return conf / conf.sum(axis=1, keepdims=True)


def _sample_confused(rng: np.random.Generator, true: np.ndarray, conf: np.ndarray) -> np.ndarray:
    """One replacement class per entry of ``true`` drawn from ``conf[true]``."""
    cum = np.cumsum(conf[true], axis=-1)
    u = rng.random(true.shape)[..., None]
    return np.minimum((u > cum).sum(axis=-1), conf.shape[0] - 1).astype(np.uint8)


def corrupt_mask(
    truth: np.ndarray,
    reliability: float,
    confusion: np.ndarray,
    rng: np.random.Generator,
    boundary_share: float = 0.3,
    object_share: float = 0.25,
) -> np.ndarray:
    """Simulate an annotator: about ``1 - reliability`` of the pixels end up wrong.

    Errors are spatially coherent: wobbly boundaries (smooth displacement of the
    label map), whole small objects given another class, then smooth blobs whose
    classes are swapped following ``confusion`` (error-conditional, zero diagonal).
    """
    shape, n = truth.shape, truth.size
    budget = (1.0 - reliability) * rng.uniform(0.85, 1.15) * n
    out = truth.copy()
    # (b) boundary errors: nearest-neighbour resampling through a smooth displacement
    width = 1.0 + 3.0 * (1.0 - reliability)
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    dy, dx = (np.clip(width * smooth_field(rng, shape, 8), -2 * width, 2 * width) for _ in range(2))
    ys = np.clip(np.round(yy + dy).astype(int), 0, shape[0] - 1)
    xs = np.clip(np.round(xx + dx).astype(int), 0, shape[1] - 1)
    shifted = truth[ys, xs]
    changed = shifted != truth
    allowed = int(boundary_share * budget)
    if changed.sum() > allowed:
        gate = np.where(changed, smooth_field(rng, shape, 4), np.inf)
        changed &= _lowest(gate, allowed)
    out[changed] = shifted[changed]
    # (a1) whole small objects mislabelled
    target = (boundary_share + object_share) * budget
    n_wrong = int(changed.sum())
    p_object = min(0.6, 3.0 * (1.0 - reliability))
    for c in rng.permutation(confusion.shape[0]):
        comps, n_comp = ndimage.label(truth == c)
        areas = np.bincount(comps.ravel())[1:] if n_comp else np.zeros(0, int)
        for i in rng.permutation(n_comp):
            if areas[i] <= 0.015 * n and n_wrong + areas[i] <= target and rng.random() < p_object:
                out[comps == i + 1] = _sample_confused(rng, np.array(c), confusion)
                n_wrong = int((out != truth).sum())
    # (a2) smooth blobs of class swaps for the remaining budget
    remaining = int(round(budget - (out != truth).sum()))
    if remaining > 0:
        score = np.where(out == truth, smooth_field(rng, shape, shape[0] / 25), np.inf)
        flip = _lowest(score, remaining)
        comps, _ = ndimage.label(flip)
        keys = comps[flip].astype(np.int64) * confusion.shape[0] + truth[flip]
        uniq, inv = np.unique(keys, return_inverse=True)
        repl = _sample_confused(rng, (uniq % confusion.shape[0]).astype(np.intp), confusion)
        out[flip] = repl[inv.ravel()]
    return out


def _write_tif(path: Path, data: np.ndarray, transform: Affine) -> None:
    """Write ``data`` ``[H, W]`` or ``[C, H, W]`` atomically: a reader never sees a partial file."""
    data = data[None] if data.ndim == 2 else data
    profile = dict(
        driver="GTiff",
        width=data.shape[2],
        height=data.shape[1],
        count=data.shape[0],
        dtype=data.dtype.name,
        crs=CRS,
        transform=transform,
        compress="deflate",
    )
    with AtomicGeoTiff(path, profile) as writer:
        writer.write(data, 0)
        writer.commit()


def _write_scene(
    stage: Staging,
    name: str,
    i: int,
    rng: np.random.Generator,
    size: int,
    bands: int,
    n_classes: int,
    annotators: Mapping[str, tuple[float, np.ndarray]],
    tie_order: Sequence[int],
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Write scene ``i``: image, truth, each annotator's mask, hard and soft masks; returns
    ``{annotator: (truth, mask)}``."""
    transform = Affine(
        PIXEL_SIZE, 0.0, 500000.0 + 5000.0 * i, 0.0, -PIXEL_SIZE, 5200000.0 - 3000.0 * i
    )
    truth = land_cover_map(rng, size, n_classes)
    _write_tif(stage.path(f"scenes/{name}.tif"), render_scene(rng, truth, bands), transform)
    _write_tif(stage.path(f"truth/{name}.tif"), truth, transform)
    labels = {}
    for a, (reliability, confusion) in annotators.items():
        labels[a] = corrupt_mask(truth, reliability, confusion, rng)
        _write_tif(stage.path(f"annotators/{a}/{name}.tif"), labels[a], transform)
    stack = np.stack(list(labels.values()))
    hard = majority_vote(stack, n_classes, tie_order)
    _write_tif(stage.path(f"masks/hard/{name}.tif"), hard, transform)
    soft = vote_fractions(stack, n_classes)
    _write_tif(stage.path(f"masks/soft/{name}.tif"), soft, transform)
    return {a: (truth, m) for a, m in labels.items()}


def generate_synthetic_dataset(
    out_dir: str | Path,
    n_train: int = 6,
    n_val: int = 2,
    size: int = 256,
    bands: int = 4,
    n_classes: int = 4,
    seed: int = 0,
    annotators: Mapping[str, float] | None = None,
) -> SyntheticDataset:
    """Write scenes, truth, annotator masks, hard/soft masks and CSVs under ``out_dir``.

    Layout (paths in CSVs are relative to ``out_dir``): ``scenes/``, ``truth/``,
    ``annotators/<name>/``, ``masks/hard/``, ``masks/soft/``, ``train.csv``,
    ``val.csv`` (``image,mask,soft_mask``) and ``annotators.csv``
    (``image,annotator,mask``). Hard-mask ties go to the most reliable annotator.
    """
    if not 2 <= n_classes <= len(CLASS_NAMES):
        raise ConfigError(f"n_classes must be in [2, {len(CLASS_NAMES)}], got {n_classes}")
    if bands < 1 or size < 32 or n_train < 0 or n_val < 0:
        raise ConfigError(f"need bands >= 1, size >= 32, n_train/n_val >= 0 (got {bands}, {size})")
    ann = dict(DEFAULT_ANNOTATORS if annotators is None else annotators)
    if not ann or any(not 0.0 < r <= 1.0 for r in ann.values()):
        raise ConfigError(f"annotators must map names to reliabilities in (0, 1], got {ann}")
    names = tuple(ann)
    tie_order = sorted(range(len(names)), key=lambda i: -ann[names[i]])
    out = Path(out_dir).resolve()
    root = np.random.SeedSequence(seed)
    conf_rng = np.random.default_rng(root.spawn(1)[0])
    confusions = {a: confusion_for(conf_rng, n_classes) for a in names}
    counts = {a: np.zeros((n_classes, n_classes), np.int64) for a in names}
    splits: dict[str, list[list[str]]] = {"train": [], "val": []}
    ann_rows: list[list[str]] = []
    scenes: dict[str, list[str]] = {"train": [], "val": []}
    with Staging(out) as stage:  # the data set appears whole or not at all
        for i, ss in enumerate(root.spawn(n_train + n_val + 1)[1:]):
            name = f"scene_{i:03d}"
            annotated = _write_scene(
                stage,
                name,
                i,
                np.random.default_rng(ss),
                size,
                bands,
                n_classes,
                {a: (ann[a], confusions[a]) for a in names},
                tie_order,
            )
            for a, (truth, m) in annotated.items():
                np.add.at(counts[a], (truth.ravel(), m.ravel()), 1)
                ann_rows.append([f"scenes/{name}.tif", a, f"annotators/{a}/{name}.tif"])
            split = "train" if i < n_train else "val"
            scenes[split].append(name)
            splits[split].append(
                [f"scenes/{name}.tif", f"masks/hard/{name}.tif", f"masks/soft/{name}.tif"]
            )
        header = ("image", "mask", "soft_mask")
        write_csv(stage.path("train.csv"), header, splits["train"])
        write_csv(stage.path("val.csv"), header, splits["val"])
        write_csv(stage.path("annotators.csv"), ("image", "annotator", "mask"), ann_rows)
        stage.commit()
    rows_total = {a: np.maximum(c.sum(axis=1, keepdims=True), 1) for a, c in counts.items()}
    return SyntheticDataset(
        out_dir=out,
        train_csv=out / "train.csv",
        val_csv=out / "val.csv",
        annotator_csv=out / "annotators.csv",
        class_names=CLASS_NAMES[:n_classes],
        annotators=names,
        reliabilities=ann,
        train_scenes=scenes["train"],
        val_scenes=scenes["val"],
        measured_accuracy={a: float(np.trace(c) / max(c.sum(), 1)) for a, c in counts.items()},
        confusion_matrices={a: counts[a] / rows_total[a] for a in names},
        bands=bands,
    )
