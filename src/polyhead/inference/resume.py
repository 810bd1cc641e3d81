"""Resuming a prediction: which images of a run already have their outputs.

The run tag is a digest of the model's weights and of the options that shape a prediction,
stored in every raster ``predict_files`` writes (GeoTIFF metadata ``POLYHEAD_RUN``; a VRT
mosaic carries its parts'). ``skip_existing`` skips an image only when its outputs carry
the tag of the run asking, so outputs of another model or other options are predicted
again rather than kept.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import torch
from rasterio.errors import RasterioError

from polyhead.inference.distributed import Group

#: the metadata key (default domain) of the tag
RUN_TAG = "POLYHEAD_RUN"


def model_digest(model: torch.nn.Module) -> str:
    """A hex digest of ``model``'s class and every entry of its state dict (names, dtypes,
    shapes, values)."""
    digest = hashlib.blake2b(type(model).__qualname__.encode(), digest_size=16)
    for name, value in model.state_dict().items():
        if not isinstance(value, torch.Tensor):
            digest.update(f"{name}={_canonical(value)}".encode())
            continue
        t = value.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}|{t.dtype}|{tuple(value.shape)}".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def run_tag(model: torch.nn.Module, options: Mapping[str, Any]) -> str:
    """The tag of a prediction by ``model`` with ``options`` (those that change what is
    written: head, test-time augmentation, tiles, normalisation, precision, class table...;
    not where or how fast)."""
    text = _canonical(dict(options))
    return hashlib.blake2b(f"{model_digest(model)}|{text}".encode(), digest_size=16).hexdigest()


def read_run_tag(path: Path) -> str | None:
    """The tag stored in the raster ``path`` (None when it has none or cannot be read)."""
    try:
        with rasterio.open(path) as src:
            return src.tags().get(RUN_TAG)
    except (RasterioError, OSError):
        return None


def finished_outputs(
    images: Sequence[Path],
    output_dir: str | Path,
    write_probabilities: bool = False,
    write_uncertainty: bool = False,
    vector: str | None = None,
    preview: bool = False,
    tag: str | None = None,
) -> dict[Path, Path]:
    """The images whose every requested output is already in ``output_dir``, with their
    class map (``<stem>_classes.tif``, or ``.vrt`` for a raster split across processes):
    what ``predict_files(skip_existing=True)`` skips. Outputs are written whole or not at
    all, so an existing one is complete. With ``tag``, every raster output must also carry
    it (`polyhead.inference.resume`): one from another model or other options does not
    count."""
    output_dir, done = Path(output_dir), {}
    for image in images:
        for suffix in (".tif", ".vrt"):
            kinds = ["classes"]
            kinds += ["proba"] * write_probabilities + ["uncertainty"] * write_uncertainty
            wanted = [output_dir / f"{image.stem}_{kind}{suffix}" for kind in kinds]
            if vector:
                wanted.append(output_dir / f"{image.stem}_classes.{vector}")
            if preview:
                wanted.append(output_dir / f"{image.stem}_preview.png")
            rasters = [path for path in wanted if path.suffix in (".tif", ".vrt")]
            if all(path.is_file() for path in wanted) and (
                tag is None or all(read_run_tag(path) == tag for path in rasters)
            ):
                done[image] = wanted[0]
                break
    return done


def finished_by_rank0(
    group: Group, images: Sequence[Path], output_dir: Path, kinds: tuple, tag: str
) -> dict[Path, Path]:
    """`finished_outputs` of this run's ``tag`` as rank 0 sees them before any rank writes,
    so that every process plans the same parts."""
    found = finished_outputs(images, output_dir, *kinds, tag=tag) if group.rank == 0 else {}
    report = group.exchange({str(k): str(v) for k, v in found.items()})[0]
    return {Path(k): Path(v) for k, v in report.items()}


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=_plain)


def _plain(value: Any) -> Any:
    """A JSON-able stand-in for an option value: albumentations transforms by their own
    serialisation, dataclasses (a class table) by their fields, arrays as lists, other
    callables by their qualified name."""
    if type(value).__module__.startswith("albumentations"):
        import albumentations as A

        return A.to_dict(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, (np.ndarray, torch.Tensor, np.generic)):
        return np.asarray(value).tolist()
    if isinstance(value, (Path, torch.device)):
        return str(value)
    if isinstance(value, (set, frozenset)):
        return sorted(map(str, value))
    kind = value if callable(value) and hasattr(value, "__qualname__") else type(value)
    return f"{kind.__module__}.{kind.__qualname__}"
