"""Held-out evaluation of a distilled student against its teacher's cached targets."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
import torch

from polyhead.data import raster_io
from polyhead.distill.metrics import UncertaintyAgreement
from polyhead.distill.predict import (
    predict_student,
    read_uncertainty_band,
    target_band,
    uncertainty_head,
)
from polyhead.errors import DataError
from polyhead.losses.uncertainty import UNCERTAINTY_BANDS
from polyhead.metrics import SegmentationMetrics
from polyhead.paths import resolve_cell


def _rows(csv_path: Path) -> list[dict[str, Path]]:
    with open(csv_path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    need = {"image", "mask", "soft_mask", "uncertainty"}
    if not rows or not need <= set(rows[0]):
        raise DataError(f"{csv_path}: expected a distill.csv with columns {sorted(need)}")
    return [{k: resolve_cell(v, csv_path.parent) for k, v in r.items()} for r in rows]


def _read(path: Path) -> np.ndarray:
    info = raster_io.raster_info(path)
    return raster_io.read_window(path, 0, 0, info.height, info.width)


def evaluate_student(
    model: torch.nn.Module,
    distill_csv: str | Path,
    normalize: Any = None,
    tile_size: int = 512,
    overlap: int = 64,
    device: str = "cpu",
    ignore_index: int = 255,
    keep_maps: bool = False,
) -> dict[str, Any]:
    """Student vs teacher on every image of a ``distill.csv`` (whole images, tiled).

    Returns ``student_mIoU`` and ``ensemble_mIoU`` (class maps vs the hard masks; the
    ensemble's from its cached uint8 probabilities), and the agreement of the student's
    uncertainty map with the teacher's ``uncertainty_target`` map (``std_winning`` for a
    per-class target) over all pixels: ``pearson``, ``spearman`` (up to 200k sampled pixels),
    ``mean_pred``, ``mean_target``. With ``keep_maps`` also ``maps``: per image ``(image,
    student class map, student uncertainty, teacher uncertainty)``.
    """
    target = uncertainty_head(model).uncertainty_target
    band = target_band(target)
    n_classes = int(model.classes)
    student_m = SegmentationMetrics(n_classes, ignore_index)
    teacher_m = SegmentationMetrics(n_classes, ignore_index)
    agreement = UncertaintyAgreement(samples_per_update=200_000, max_samples=200_000)
    maps = []
    for row in _rows(Path(distill_csv)):
        image = _read(row["image"])
        probs, unc = predict_student(model, image, normalize, tile_size, overlap, device=device)
        hard = torch.from_numpy(_read(row["mask"])[0].astype(np.int64))[None]
        stored = _read(row["soft_mask"])
        teacher_probs = stored.astype(np.float32) / (raster_io.soft_scale(stored.dtype) or 1.0)
        teacher_unc = read_uncertainty_band(row["uncertainty"], band)
        student_m.update(torch.from_numpy(probs)[None], hard)
        teacher_m.update(torch.from_numpy(teacher_probs)[None], hard)
        agreement.update(torch.from_numpy(unc), torch.from_numpy(teacher_unc))
        if keep_maps:
            maps.append((image, probs.argmax(0), unc, teacher_unc))
    agree = {k: float(v) for k, v in agreement.compute().items()}
    result: dict[str, Any] = {
        "student_mIoU": float(student_m.compute()["mIoU"]),
        "ensemble_mIoU": float(teacher_m.compute()["mIoU"]),
        **agree,
        "target": target if target in UNCERTAINTY_BANDS else "std_winning",
    }
    if keep_maps:
        result["maps"] = maps
    return result
