"""Predict with a distilled student: class map plus uncertainty map, as GeoTIFFs (and a PNG).

The student's checkpoint config carries a ``distillation`` entry (written by
`polyhead.tasks.distillation.DistillationTask`) naming its heads and how the uncertainty head's
output maps back to uncertainty; `student_spec` reads it.
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

from polyhead.data import raster_io
from polyhead.data.extra_targets import value_transform
from polyhead.distill.teacher import UNCERTAINTY_BANDS
from polyhead.errors import ConfigError, DataError
from polyhead.paths import resolve_cell

#: file a ``polyhead distill-targets`` run writes in its ``--out`` folder
DISTILL_CSV = "distill.csv"


def student_spec(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The ``distillation`` entry of a student's run config (ConfigError if absent)."""
    spec = cfg.get("distillation")
    if not spec:
        raise ConfigError(
            "this checkpoint was not trained with DistillationTask (no 'distillation' entry "
            "in its config); it has no uncertainty head to read"
        )
    return dict(spec)


def checkpoint_student_spec(checkpoint: str | Path) -> dict[str, Any] | None:
    """The ``distillation`` entry of a checkpoint's stored config; None for a non-student.

    Cheap: the tensors are memory-mapped, not read (a legacy, non-zip file is read whole).
    """
    from polyhead.checkpoint import checkpoint_config, read_checkpoint

    path = Path(checkpoint)
    if not path.is_file():
        raise ConfigError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    except RuntimeError:  # mmap needs the zip format of torch >= 1.6
        ckpt = read_checkpoint(path)
    spec = checkpoint_config(ckpt, path=path).get("distillation")
    return dict(spec) if spec else None


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
    with open(csv_path, newline="") as fh:
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


class StudentMaps(torch.nn.Module):
    """A distilled student as one output: its class-map head's softmax ``[B, K, h, w]`` and, as
    channel K, its uncertainty map (mapped back from the head's space; a per-class head read at
    the student's arg-max class), so the sliding-window code blends both at once."""

    def __init__(self, model: torch.nn.Module, spec: Mapping[str, Any]) -> None:
        from polyhead.tasks.distillation import student_uncertainty  # lazy: Lightning stack

        super().__init__()
        self.model, self.spec = model, dict(spec)
        self._uncertainty = student_uncertainty

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model.forward_heads(x)
        seg = out[self.spec["seg_head"]]
        u = self._uncertainty(seg, out[self.spec["uncertainty_head"]], self.spec)
        return torch.cat([seg.float().softmax(dim=1), u.float()], dim=1)


def predict_student(
    model: torch.nn.Module,
    image: np.ndarray,
    spec: Mapping[str, Any],
    normalize: Any = None,
    tile_size: int = 512,
    overlap: int = 64,
    batch_size: int = 4,
    device: str | torch.device = "cpu",
) -> tuple[np.ndarray, np.ndarray]:
    """Class probabilities ``[K, H, W]`` and uncertainty ``[H, W]`` for a raw image ``[C, H, W]``
    held in memory (`polyhead.inference.sliding_window.predict_array`; rasters of any size:
    `predict_student_files`)."""
    from polyhead.inference.sliding_window import predict_array

    maps = predict_array(
        StudentMaps(model, spec),
        image,
        tile_size,
        overlap,
        batch_size,
        device,
        normalize=normalize,
        activation=torch.nn.Identity(),
    )
    return maps[:-1], maps[-1]


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
    checkpoint: str | Path,
    images: Sequence[str | Path],
    output_dir: str | Path,
    tile_size: int = 512,
    overlap: int = 64,
    batch_size: int = 4,
    device: str = "cpu",
    figure: bool = True,
    reference_uncertainty: Mapping[str, str | Path] | None = None,
    reference_band: int | None = None,
    write_probabilities: bool = False,
    overrides: Sequence[str] = (),
) -> list[StudentPrediction]:
    """Write ``<stem>_classes.tif`` (uint8), ``<stem>_uncertainty.tif`` (float32) and, with
    ``figure``, ``<stem>_uncertainty.png`` (image, prediction, student uncertainty and, when
    known, the ensemble's) for each image; with ``write_probabilities`` also
    ``<stem>_proba.tif`` (float32, K bands, as ``polyhead predict``).

    ``images``: files, folders or CSVs with an ``image`` column (`expand_inputs`).
    ``reference_uncertainty`` maps an image stem to a teacher uncertainty raster (e.g.
    `teacher_uncertainty_paths` of a ``distill.csv``); ``reference_band`` is the 0-based band
    shown (default: the student's own ``uncertainty_target``, `target_band`).
    """
    from polyhead.checkpoint import load_model
    from polyhead.distill.figures import save_uncertainty_figure
    from polyhead.inference.predict import expand_inputs, inference_normalization
    from polyhead.inference.sliding_window import predict_raster

    paths = expand_inputs(images)  # fail on bad input before loading anything heavy
    model, cfg = load_model(checkpoint, overrides)
    spec = student_spec(cfg)
    if reference_band is None:
        reference_band = target_band(spec.get("uncertainty_target", "entropy"))
    normalize = inference_normalization(cfg)
    out_dir = Path(output_dir)
    student = StudentMaps(model, spec)
    target = spec.get("uncertainty_target", "entropy")
    results = []
    for image_path in paths:
        stem = image_path.stem
        class_path = out_dir / f"{stem}_classes.tif"
        unc_path = out_dir / f"{stem}_uncertainty.tif"
        result = predict_raster(
            student,
            image_path,
            class_path,
            tile_size=tile_size,
            overlap=overlap,
            batch_size=batch_size,
            device=device,
            normalize=normalize,
            write_probabilities=write_probabilities,
            probabilities_path=out_dir / f"{stem}_proba.tif",
            write_uncertainty=True,
            uncertainty_path=unc_path,
            activation=torch.nn.Identity(),
            uncertainty_band=True,
        )
        fig_path = None
        if figure:
            ref = None
            if reference_uncertainty and stem in reference_uncertainty:
                ref = read_uncertainty_band(
                    reference_uncertainty[stem], reference_band, FIGURE_SIDE
                )
            fig_path = save_uncertainty_figure(
                out_dir / f"{stem}_uncertainty.png",
                read_decimated(image_path, FIGURE_SIDE),
                read_decimated(class_path, FIGURE_SIDE)[0],
                read_decimated(unc_path, FIGURE_SIDE)[0],
                ref,
                title=f"{stem}: {'std of the winning class' if 'std' in target else target}",
            )
        results.append(StudentPrediction(class_path, unc_path, fig_path, result.probabilities_path))
    return results
