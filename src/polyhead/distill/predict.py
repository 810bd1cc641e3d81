"""Predict with a distilled student: class map plus uncertainty map, as GeoTIFFs (and a PNG).

A student is any polyhead model with an uncertainty head: the head maps its own output back to
uncertainty, so prediction goes through the one `polyhead.inference.Predictor` path.
"""

from __future__ import annotations

import csv
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from polyhead.data import raster_io
from polyhead.data.extra_targets import value_transform
from polyhead.errors import ConfigError, DataError
from polyhead.losses.uncertainty import UNCERTAINTY_BANDS
from polyhead.paths import open_csv, resolve_cell

#: file a ``polyhead distill-targets`` run writes in its ``--out`` folder
DISTILL_CSV = "distill.csv"


def target_band(target: str) -> int:
    """0-based band of a ``distill-targets`` uncertainty raster that matches a student's
    ``uncertainty_target`` (``std_per_class`` is shown as ``std_winning``)."""
    if target == "std_per_class":
        target = "std_winning"
    if target not in UNCERTAINTY_BANDS:
        raise ConfigError(
            f"uncertainty target {target!r} unknown; valid: {[*UNCERTAINTY_BANDS, 'std_per_class']}"
        )
    return UNCERTAINTY_BANDS.index(target)


def teacher_uncertainty_paths(path: str | Path) -> dict[str, Path]:
    """Image stem -> teacher uncertainty raster, from a ``distill.csv`` written by
    ``polyhead distill-targets`` (or the folder holding one); DataError names a bad path."""
    csv_path = Path(path)
    if csv_path.is_dir():
        csv_path = csv_path / DISTILL_CSV
    if not csv_path.is_file():
        raise DataError(
            f"teacher targets not found: {csv_path} (give the distill.csv written "
            "by `polyhead distill-targets`, or its folder)"
        )
    with open_csv(csv_path) as fh:
        reader = csv.DictReader(fh)
        if not {"image", "uncertainty"} <= set(reader.fieldnames or ()):
            raise DataError(
                f"{csv_path}: not a distill.csv (needs columns image and "
                f"uncertainty; has {reader.fieldnames})"
            )
        refs = {
            Path(r["image"]).stem: resolve_cell(r["uncertainty"], csv_path.parent) for r in reader
        }
    missing = [str(p) for p in refs.values() if not p.is_file()]
    if missing:
        raise DataError(f"{csv_path}: uncertainty raster(s) not found: {', '.join(missing[:5])}")
    return refs


def uncertainty_head(model: Any) -> Any:
    """The student's (first) uncertainty head; ConfigError when the model has none."""
    for head in model.heads.values():
        if head.role == "uncertainty":
            return head
    raise ConfigError("this model has no uncertainty head (role uncertainty): not a student")


def predict_student(
    model: torch.nn.Module,
    image: np.ndarray,
    normalize: Any = None,
    tile_size: int = 512,
    overlap: int = 64,
    batch_size: int = 4,
    device: str | torch.device = "cpu",
) -> tuple[np.ndarray, np.ndarray]:
    """Class probabilities ``[K, H, W]`` and uncertainty ``[H, W]`` for a raw image ``[C, H, W]``
    held in memory (rasters of any size: `predict_student_files`)."""
    from polyhead.inference.predictor import PROBABILITIES, UNCERTAINTY, Predictor
    from polyhead.inference.sliding_window import predict_maps

    maps = predict_maps(
        Predictor(model, uncertainty=True),
        image,
        tile_size,
        overlap,
        batch_size,
        device,
        normalize=normalize,
    )
    return maps[PROBABILITIES], maps[UNCERTAINTY][0]


@dataclass
class StudentPrediction:
    """Paths written for one image by `predict_student_files`."""

    class_map: Path
    uncertainty: Path
    figure: Path | None
    probabilities: Path | None = None


#: longest side of the rasters drawn in a prediction figure (larger ones are decimated)
FIGURE_SIDE = 1024


def read_decimated(path: str | Path, max_side: int = FIGURE_SIDE) -> np.ndarray:
    """All bands of a raster ``[C, h, w]``, nearest-neighbour decimated so that its longest side
    is at most ``max_side`` (read whole when it already is)."""
    import rasterio
    from rasterio.enums import Resampling
    from rasterio.errors import NotGeoreferencedWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path) as ds:
            step = max(1, -(-max(ds.height, ds.width) // max_side))
            shape = (ds.count, -(-ds.height // step), -(-ds.width // step))
            return ds.read(out_shape=shape, resampling=Resampling.nearest)


def read_uncertainty_band(
    path: str | Path, band: int = 0, max_side: int | None = None
) -> np.ndarray:
    """One band (0-based) of an uncertainty raster written by ``distill-targets``, as floats
    (decimated to ``max_side`` when given, as `read_decimated`)."""
    path = Path(path)
    info = raster_io.raster_info(path)
    if max_side is None:
        raw = raster_io.read_window(path, 0, 0, info.height, info.width)[band]
    else:
        raw = read_decimated(path, max_side)[band]
    scale, offset = value_transform(path, info.dtype, info.count)
    return raw.astype(np.float32) * scale[band] + offset[band]


def predict_student_files(
    model: torch.nn.Module,
    images: Sequence[str | Path],
    output_dir: str | Path,
    normalize: Any = None,
    figure: bool = True,
    reference_uncertainty: Mapping[str, str | Path] | None = None,
    reference_band: int | None = None,
    **predict_options: Any,
) -> list[StudentPrediction]:
    """Write ``<stem>_classes.tif`` (uint8), ``<stem>_uncertainty.tif`` (float32, the student's
    uncertainty head) and, with ``figure``, ``<stem>_uncertainty.png`` (image, prediction,
    student uncertainty and, when known, the ensemble's) for each image.

    ``images``: files, folders or CSVs with an ``image`` column. ``predict_options`` go to
    `polyhead.inference.predict.predict_files` (tile_size, overlap, batch_size, device,
    write_probabilities, head, tta, crf, progress, and for large areas precision,
    channels_last, classes, vector, devices, num_nodes); across several processes a split
    raster's maps are ``.vrt`` mosaics and rank 0 draws the figures.
    ``reference_uncertainty`` maps an image stem to a teacher uncertainty raster (e.g.
    `teacher_uncertainty_paths` of a ``distill.csv``); ``reference_band`` is the 0-based band
    shown (default: the one of the head's own ``uncertainty_target``, `target_band`).
    """
    from polyhead.distill.figures import save_uncertainty_figure
    from polyhead.inference.predict import expand_inputs, predict_files

    target = uncertainty_head(model).uncertainty_target
    if reference_band is None:
        reference_band = target_band(target)
    images = expand_inputs(images)
    class_maps = predict_files(
        model, images, output_dir, normalize=normalize, write_uncertainty=True, **predict_options
    )
    rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
    out = []
    for image, class_map in zip(images, class_maps, strict=True):
        # a raster split across processes is a .vrt mosaic of its parts
        stem, suffix = image.stem, class_map.suffix
        proba = class_map.with_name(f"{stem}_proba{suffix}")
        unc_path = class_map.with_name(f"{stem}_uncertainty{suffix}")
        fig_path = None
        if figure and rank == 0:
            ref = None
            if reference_uncertainty and stem in reference_uncertainty:
                ref = read_uncertainty_band(
                    reference_uncertainty[stem], reference_band, FIGURE_SIDE
                )
            fig_path = save_uncertainty_figure(
                Path(output_dir) / f"{stem}_uncertainty.png",
                read_decimated(image, FIGURE_SIDE),
                read_decimated(class_map, FIGURE_SIDE)[0],
                read_decimated(unc_path, FIGURE_SIDE)[0],
                ref,
                title=f"{stem}: {'std of the winning class' if 'std' in target else target}",
            )
        out.append(
            StudentPrediction(class_map, unc_path, fig_path, proba if proba.is_file() else None)
        )
    return out
