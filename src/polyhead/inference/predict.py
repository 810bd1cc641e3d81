"""Predict GeoTIFF maps for image files, folders or CSVs with a built model."""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from polyhead.errors import DataError
from polyhead.inference.crf import check_crf_size, predict_raster_crf
from polyhead.inference.predictor import Predictor, has_uncertainty_head
from polyhead.inference.rasters import predict_raster
from polyhead.inference.tiling import Normalize

IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg")


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


def predict_files(
    model: Any,
    inputs: Sequence[str | Path],
    output_dir: str | Path,
    normalize: Normalize | None = None,
    head: str | None = None,
    tta: str | Mapping[str, Any] | None = None,
    crf: bool = False,
    write_probabilities: bool = False,
    write_uncertainty: bool = False,
    tile_size: int = 512,
    overlap: int = 64,
    batch_size: int = 4,
    device: str = "cpu",
    progress: bool = True,
) -> list[Path]:
    """Write ``<stem>_classes.tif`` (and ``_proba.tif``, ``_uncertainty.tif``) per image;
    returns the class maps' paths.

    ``model``: a polyhead model (e.g. `polyhead.checkpoint.load_checkpoint(path).model`);
    ``normalize``: the input normalisation it was trained with. ``head``: the class-map head
    that answers, or ``"average"`` (default: the model's ``inference_head``); only the heads
    it needs are run. ``tta``: a test-time augmentation spec (``"flips"``,
    ``"flips+scales=0.75,1,1.25"``); maps are averaged over the views. ``crf``: refine each
    image's blended probabilities with a dense CRF (whole image in memory, so every input
    must have at most 4096 x 4096 pixels: checked before anything is predicted).
    ``write_uncertainty``: also write ``<stem>_uncertainty.tif`` (float32): the model's
    uncertainty head when it has one, else the predictive entropy normalised by log K.
    """
    images = expand_inputs(inputs)  # fail on bad input before any tile runs
    if crf:
        for image in images:
            check_crf_size(image)
    own_uncertainty = write_uncertainty and has_uncertainty_head(model)
    predictor = Predictor(model, head=head, tta=tta, uncertainty=own_uncertainty)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    run = predict_raster_crf if crf else predict_raster
    written = []
    for image in images:
        result = run(
            predictor,
            image,
            output_dir / f"{image.stem}_classes.tif",
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
        written.append(Path(result.class_map_path))
    return written
