"""Image-level predictions (classification, multi-label, regression heads) as one CSV.

A whole image is not resized (the heads learnt on crops at the data's resolution): it is cut
into a grid of ``tile_size`` tiles, the last row and column shifted inward so every tile is
full-size (a few pixels are seen twice), and each head's activated output is averaged over
the tiles: mean class probabilities (the class is their arg-max), mean label probabilities,
mean values. An image smaller than a tile is one tile, padded (reflect) to the encoder's
output stride. For regression targets defined per crop (``fraction_of``), the mean over
equal tiles is the whole image's value.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Iterator, Sequence
from itertools import islice
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
import torch.nn.functional as F

from polyhead.data import raster_io
from polyhead.errors import ConfigError, DataError
from polyhead.inference.tiling import Normalize, normalize_tile
from polyhead.io import atomic_write

T = TypeVar("T")


def tile_origins(size: int, tile: int) -> list[int]:
    """Starts of full tiles covering ``size`` pixels (the last shifted to end at ``size``)."""
    if size <= tile:
        return [0]
    starts = list(range(0, size - tile + 1, tile))
    if starts[-1] + tile < size:
        starts.append(size - tile)
    return starts


def columns_for(model: Any, heads: Sequence[str]) -> list[str]:
    """CSV columns: ``image``, then per head its class and ``{head}_p{k}`` probabilities
    (classification), ``{head}_{k}`` (multilabel, regression with several values) or
    ``{head}`` (one value)."""
    columns = ["image"]
    for name in heads:
        head = model.heads[name]
        if head.role == "classification":
            columns += [name, *(f"{name}_p{k}" for k in range(head.classes))]
        elif head.classes == 1:
            columns.append(name)
        else:
            columns += [f"{name}_{k}" for k in range(head.classes)]
    return columns


def _row(model: Any, heads: Sequence[str], image: Path, means: dict[str, np.ndarray]) -> list:
    row: list[Any] = [str(image)]
    for name in heads:
        values = [f"{v:.6g}" for v in means[name]]
        if model.heads[name].role == "classification":
            row.append(int(np.argmax(means[name])))
        row += values
    return row


def _check(model: Any, heads: Sequence[str] | None, images: Sequence[Path], bands) -> list[str]:
    """The heads to run; one-line errors for unknown heads or unreadable/mismatched images."""
    available = model.image_level_heads() if hasattr(model, "image_level_heads") else []
    if not available:
        raise ConfigError(
            "the model has no image-level head (classification/multilabel/regression)"
        )
    names = list(heads) if heads else available
    unknown = [n for n in names if n not in available]
    if unknown:
        raise ConfigError(f"{unknown} are not image-level heads of this model; valid: {available}")
    for image in images:
        if not Path(image).is_file():
            raise DataError(f"{image}: image not found")
        count = len(bands) if bands else raster_io.raster_info(image).count
        if count != model.in_channels:
            raise DataError(
                f"{image}: {count} band(s) read, the model takes {model.in_channels}; "
                "choose bands with bands=[...]"
            )
    return names


def _tiles(path: Path, tile: int, bands: Sequence[int] | None, cache) -> Iterator[np.ndarray]:
    """The image's tiles (float32 ``[C, h, w]``), read one at a time: memory stays a batch
    of tiles however large the image."""
    info = raster_io.raster_info(path)
    for r in tile_origins(info.height, tile):
        for c in tile_origins(info.width, tile):
            h, w = min(tile, info.height), min(tile, info.width)
            pixels = raster_io.read_window(path, r, c, h, w, cache)
            if bands:
                pixels = pixels[[b - 1 for b in bands]]
            yield pixels.astype(np.float32)


@torch.inference_mode()
def _image_means(model, names, tiles: Iterable[np.ndarray], normalize, batch_size, device, path):
    stride = model.encoder.output_stride
    sums = {n: 0.0 for n in names}
    count = 0
    for batch in batched(tiles, batch_size):
        chunk = []
        for pixels in batch:
            if not np.isfinite(pixels).all():
                raise DataError(f"{path}: NaN/inf pixels; image-level prediction needs finite ones")
            hwc = normalize_tile(normalize, np.ascontiguousarray(pixels.transpose(1, 2, 0)))
            chunk.append(torch.from_numpy(np.ascontiguousarray(hwc.transpose(2, 0, 1))))
        count += len(chunk)
        x = torch.stack(chunk).to(device)
        h, w = x.shape[-2:]
        ph, pw = -h % stride, -w % stride
        if ph or pw:
            mode = "reflect" if ph < h and pw < w else "replicate"
            x = F.pad(x, (0, pw, 0, ph), mode=mode)
        raw = model.forward_heads(x, names)
        for n in names:
            sums[n] = sums[n] + model.heads[n].activate(raw[n]).float().sum(0).cpu()
    return {n: (sums[n] / count).numpy() for n in names}


def batched(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """Lists of up to ``size`` consecutive ``items``."""
    it = iter(items)
    while batch := list(islice(it, size)):
        yield batch


def predict_image_level(
    model: Any,
    image_paths: Sequence[str | Path],
    out_csv: str | Path,
    normalize: Normalize | None = None,
    heads: Sequence[str] | None = None,
    tile_size: int = 512,
    batch_size: int = 4,
    device: str | torch.device = "cpu",
    bands: Sequence[int] | None = None,
    progress: bool = True,
) -> Path:
    """Write one CSV row per image with its image-level heads' outputs (see `columns_for`).

    ``model``: a polyhead model with image-level heads (``heads``: which, default all).
    ``normalize``: the training normalisation (albumentations ``Normalize`` or a callable on
    float32 HWC tiles, as for `polyhead.inference.rasters.predict_raster`). ``bands``: 1-based
    band indexes to read. Inputs are checked before any is predicted; the CSV is written to a
    temp name and moved into place, so a failure leaves no partial file.
    """
    images = [Path(p) for p in image_paths]
    names = check_image_level(model, heads, images, bands, tile_size, batch_size)
    rows = image_level_rows(
        model, images, names, normalize, tile_size, batch_size, device, bands, progress
    )
    return write_image_level_csv(out_csv, model, names, rows)


def check_image_level(
    model: Any,
    heads: Sequence[str] | None,
    images: Sequence[Path],
    bands: Sequence[int] | None = None,
    tile_size: int = 512,
    batch_size: int = 4,
) -> list[str]:
    """The image-level heads to run; one-line errors for unknown heads, unreadable or
    mismatched images, or bad sizes."""
    names = _check(model, heads, images, bands)
    if tile_size < 1 or batch_size < 1:
        raise ConfigError(f"tile_size and batch_size must be >= 1, got {tile_size}, {batch_size}")
    return names


def image_level_rows(
    model: Any,
    images: Sequence[Path],
    names: Sequence[str],
    normalize: Normalize | None = None,
    tile_size: int = 512,
    batch_size: int = 4,
    device: str | torch.device = "cpu",
    bands: Sequence[int] | None = None,
    progress: bool = True,
) -> list[list]:
    """The CSV row of each image (`predict_image_level`, checked inputs)."""
    model = model.eval().to(device)
    cache = raster_io.HandleCache()
    rows = []
    try:
        for path in _progress(list(images), progress):
            tiles = _tiles(path, tile_size, bands, cache)
            means = _image_means(model, names, tiles, normalize, batch_size, device, path)
            rows.append(_row(model, names, path, means))
    finally:
        cache.close()
    return rows


def write_image_level_csv(
    out_csv: str | Path, model: Any, names: Sequence[str], rows: Sequence[list]
) -> Path:
    """``rows`` under their header (`columns_for`), written whole or not at all."""
    out_csv = Path(out_csv)
    with atomic_write(out_csv) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(columns_for(model, names))
        writer.writerows(rows)
    return out_csv


def _progress(images: list[Path], show: bool):
    if not show:
        return images
    from rich.progress import track

    return track(images, description="image-level heads", total=len(images))
