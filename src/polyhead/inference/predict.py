"""``polyhead predict``: a checkpoint plus images (files, folders or CSVs) to GeoTIFF maps."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import albumentations as A
import torch
from hydra.utils import instantiate
from torch import nn

from polyhead.checkpoint import load_model
from polyhead.errors import DataError
from polyhead.inference.crf import check_crf_size, predict_raster_crf
from polyhead.inference.sliding_window import predict_raster
from polyhead.inference.tta import TTAModel, tta_from_config
from polyhead.models.multihead import MultiHeadSegmentationModel

IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg")


class SelectedHead(nn.Module):
    """Expose one head (or the average) of a multi-head model as a plain logits model."""

    def __init__(self, model: MultiHeadSegmentationModel, head: str | None = None) -> None:
        super().__init__()
        self.model = model
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.select(self.model.forward_heads(x), self.head)


def expand_inputs(inputs: Sequence[str | Path]) -> list[Path]:
    """Image paths from files, folders (their images, sorted) and CSVs (``image`` column)."""
    images: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            images += sorted(p for p in item.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        elif item.suffix.lower() == ".csv":
            with item.open(newline="") as fh:
                reader = csv.DictReader(fh)
                if "image" not in (reader.fieldnames or []):
                    raise DataError(f"{item}: no 'image' column (columns: {reader.fieldnames})")
                images += [(item.parent / row["image"]).resolve() for row in reader]
        else:
            images.append(item)
    missing = [str(p) for p in images if not p.is_file()]
    if missing:
        raise DataError(f"input image(s) not found: {', '.join(missing[:10])}")
    if not images:
        raise DataError(f"no images found in {[str(i) for i in inputs]}")
    return images


def inference_normalization(cfg: dict[str, Any]) -> A.Compose | None:
    """The ``Normalize`` steps of the run's validation (else training) augmentations."""
    for key in ("val_dataset", "train_dataset"):
        steps = (cfg.get(key) or {}).get("augmentation_list") or []
        norms = [s for s in steps if str(s.get("_target_", "")).endswith(".Normalize")]
        if norms:
            return A.Compose([instantiate(s) for s in norms])
    return None


def predict_files(
    checkpoint: str | Path,
    inputs: Sequence[str | Path],
    output_dir: str | Path,
    overrides: Sequence[str] = (),
    tile_size: int = 512,
    overlap: int = 64,
    batch_size: int = 4,
    device: str = "cpu",
    write_probabilities: bool = False,
    progress: bool = True,
    tta: str | None = None,
    crf: bool = False,
    write_uncertainty: bool = False,
) -> list[Path]:
    """Write ``<stem>_classes.tif`` (and ``<stem>_proba.tif``) per image; returns class maps.

    ``tta``: a test-time augmentation spec for `build_tta` (e.g. ``"flips"`` or
    ``"flips+scales=0.75,1,1.25"``); probabilities are averaged over the augmentations.
    ``crf``: refine each image's blended probabilities with a dense CRF
    (`dense_crf`, default parameters, guided by the raw bands). The CRF works on the
    whole image in memory, so every input must have at most 4096 x 4096 pixels
    (checked before anything is predicted; `ConfigError` suggests tiling).
    ``write_uncertainty``: also write ``<stem>_uncertainty.tif`` (float32 predictive
    entropy normalised by log K, of the final probabilities).
    """
    images = expand_inputs(inputs)  # fail on bad input before loading anything heavy
    tta_kwargs = tta_from_config(tta)
    if crf:
        for image in images:
            check_crf_size(image)
    model, cfg = load_model(checkpoint, overrides)
    if isinstance(model, MultiHeadSegmentationModel):
        model = SelectedHead(model)
    if tta_kwargs is not None:
        model = TTAModel(model, **tta_kwargs)
    normalize = inference_normalization(cfg)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for image in images:
        common: dict[str, Any] = dict(
            tile_size=tile_size,
            overlap=overlap,
            batch_size=batch_size,
            device=device,
            write_probabilities=write_probabilities,
            probabilities_path=output_dir / f"{image.stem}_proba.tif",
            write_uncertainty=write_uncertainty,
            uncertainty_path=output_dir / f"{image.stem}_uncertainty.tif",
            normalize=normalize,
            progress=progress,
        )
        out_path = output_dir / f"{image.stem}_classes.tif"
        if crf:
            result = predict_raster_crf(model, image, out_path, **common)
        else:
            result = predict_raster(model, image, out_path, **common)
        written.append(Path(result.class_map_path))
    return written
