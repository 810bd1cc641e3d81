"""Cache a teacher's targets: mean probabilities and uncertainty maps per image, as GeoTIFFs.

For each CSV row ``image,mask`` the teacher runs over the whole image (tiled, blended; the
image and its maps are held in memory) and writes, georeferencing copied from the image:

* ``teacher/<stem>_probs.tif``: K bands uint8, probabilities x 255 (read back by the
  dataset's ``soft_mask`` path as ``targets["soft"]``);
* ``teacher/<stem>_uncertainty.tif``: 3 + K bands ``std_winning, entropy,
  mutual_information, std_class_0..K-1`` (band descriptions set). Default storage is uint16
  with a per-band GDAL scale (value = stored x scale, scale = band max / 65535, i.e. a
  resolution of 1/65535 of the band's maximum), read back through
  ``extra_targets={"uncertainty": "uncertainty"}``; ``uncertainty_dtype="float32"`` stores
  plain floats. (GDAL 3.10, as bundled with rasterio 1.4, has no float16 GeoTIFF type.)

and ``distill.csv`` with columns ``image,mask,soft_mask,uncertainty`` (paths relative to the
CSV). Every file is staged in a temp folder beside ``out_dir`` (`polyhead.io.Staging`) and
moved into place once all images are done; if any image fails, nothing under ``out_dir``
changes.
"""

from __future__ import annotations

import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import torch
from rasterio.errors import NotGeoreferencedWarning

from polyhead.data import raster_io
from polyhead.data.validation import read_csv_rows
from polyhead.distill.teacher import EnsembleTeacher, band_names, stack_uncertainty
from polyhead.errors import ConfigError
from polyhead.io import AtomicGeoTiff, Staging, geotiff_profile, write_csv

DISTILL_CSV = "distill.csv"
COLUMNS = ("image", "mask", "soft_mask", "uncertainty")
_UINT16_MAX = 65535.0


@dataclass
class DistillTargets:
    """What `write_distillation_targets` wrote."""

    csv_path: Path
    probs_paths: list[Path] = field(default_factory=list)
    uncertainty_paths: list[Path] = field(default_factory=list)
    seconds: float = 0.0


def teacher_maps(
    teacher: EnsembleTeacher,
    image: np.ndarray,
    normalize: Any = None,
    tile_size: int = 512,
    overlap: int = 64,
    batch_size: int = 4,
    device: str | torch.device = "cpu",
) -> tuple[np.ndarray, np.ndarray]:
    """Teacher mean probabilities ``[K, H, W]`` and uncertainty ``[3 + K, H, W]`` for a raw
    ``image [C, H, W]`` (``normalize`` applied first)."""
    from polyhead.inference.sliding_window import predict_maps

    teacher = teacher.to(device)

    def maps_fn(x: torch.Tensor) -> dict[str, torch.Tensor]:
        stats = teacher(x)
        return {"probs": stats["probs"], "uncertainty": stack_uncertainty(stats)}

    maps = predict_maps(maps_fn, image, tile_size, overlap, batch_size, device, normalize)
    probs = maps["probs"] / np.maximum(maps["probs"].sum(axis=0, keepdims=True), 1e-12)
    return probs, np.maximum(maps["uncertainty"], 0.0)


def _georef(path: Path) -> tuple[Any, Any]:
    if path.suffix.lower() in (*raster_io.NPY_SUFFIXES, *raster_io.PIL_SUFFIXES):
        return None, None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path) as src:
            crs, transform = src.crs, src.transform
    return crs, (None if transform.is_identity and crs is None else transform)


def quantize_probs(probs: np.ndarray) -> np.ndarray:
    """Probabilities as uint8 x 255 (each band rounded; sums stay within the soft-mask
    tolerance of K/510)."""
    return np.clip(np.rint(probs * 255.0), 0, 255).astype(np.uint8)


def quantize_uncertainty(maps: np.ndarray) -> tuple[np.ndarray, list[float]]:
    """uint16 bands and their GDAL scales (value = stored x scale, scale = band max / 65535)."""
    top = maps.reshape(maps.shape[0], -1).max(axis=1)
    scales = [float(m) / _UINT16_MAX if m > 0 else 1.0 / _UINT16_MAX for m in top]
    stored = np.stack([np.rint(b / s) for b, s in zip(maps, scales, strict=True)])
    return np.clip(stored, 0, _UINT16_MAX).astype(np.uint16), scales


def _write(
    path: Path,
    data: np.ndarray,
    crs: Any,
    transform: Any,
    names: list[str],
    scales: list[float] | None,
    tags: dict[str, str],
) -> None:
    profile = geotiff_profile(
        data.shape[1], data.shape[2], data.shape[0], data.dtype.name, crs, transform
    )
    with AtomicGeoTiff(path, profile) as writer:
        writer.write(data, 0)
        dst = writer.dataset
        for i, name in enumerate(names, start=1):
            dst.set_band_description(i, name)
        if scales is not None:
            dst.scales = tuple(float(s) for s in scales)
        if tags:
            dst.update_tags(**tags)
        writer.commit()


def _relative(path: Path, base: Path) -> str:
    return Path(os.path.relpath(path.resolve(), base.resolve())).as_posix()


def write_distillation_targets(
    teacher: EnsembleTeacher,
    csv_path: str | Path,
    out_dir: str | Path,
    tile_size: int = 512,
    overlap: int = 64,
    normalize: Any = None,
    batch_size: int = 4,
    device: str | torch.device = "cpu",
    uncertainty_dtype: str = "uint16",
) -> DistillTargets:
    """Run ``teacher`` on every image of an ``image,mask`` CSV and cache its targets.

    ``normalize`` defaults to ``teacher.normalize`` (set by `polyhead.checkpoint.load_teacher`
    from the checkpoints' validation ``Normalize``). Returns the paths written; see the module
    docstring for the layout.
    """
    if uncertainty_dtype not in ("uint16", "float32"):
        raise ConfigError(
            f"uncertainty_dtype must be 'uint16' or 'float32', got {uncertainty_dtype!r}"
        )
    start = time.perf_counter()
    rows = read_csv_rows(csv_path, soft_labels=False)
    stems = [r.image.stem for r in rows]
    dupes = sorted({s for s in stems if stems.count(s) > 1})
    if dupes:
        raise ConfigError(f"{csv_path}: image file names must be unique, repeated: {dupes[:5]}")
    out_dir = Path(out_dir)
    normalize = normalize if normalize is not None else getattr(teacher, "normalize", None)
    result = DistillTargets(out_dir / DISTILL_CSV)
    tags = {"POLYHEAD_MEMBERS": str(len(teacher.members)), "POLYHEAD_DDOF": str(teacher.ddof)}
    lines = []
    with Staging(out_dir) as stage:
        for row in rows:
            info = raster_io.raster_info(row.image)
            image = raster_io.read_window(row.image, 0, 0, info.height, info.width)
            probs, unc = teacher_maps(
                teacher, image, normalize, tile_size, overlap, batch_size, device
            )
            crs, transform = _georef(row.image)
            k = probs.shape[0]
            probs_rel = f"teacher/{row.image.stem}_probs.tif"
            names = [f"prob_class_{i}" for i in range(k)]
            _write(stage.path(probs_rel), quantize_probs(probs), crs, transform, names, None, tags)
            unc_rel = f"teacher/{row.image.stem}_uncertainty.tif"
            if uncertainty_dtype == "uint16":
                stored, scales = quantize_uncertainty(unc)
            else:
                stored, scales = unc.astype(np.float32), None
            _write(stage.path(unc_rel), stored, crs, transform, band_names(k), scales, tags)
            result.probs_paths.append(out_dir / probs_rel)
            result.uncertainty_paths.append(out_dir / unc_rel)
            paths = (row.image, row.mask, result.probs_paths[-1], result.uncertainty_paths[-1])
            lines.append([_relative(p, out_dir) for p in paths])
        write_csv(stage.path(DISTILL_CSV), COLUMNS, lines)
        stage.commit()
    result.seconds = time.perf_counter() - start
    return result
