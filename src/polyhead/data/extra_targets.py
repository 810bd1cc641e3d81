"""Extra per-pixel targets read alongside the masks (e.g. a teacher's uncertainty maps).

An extra target is a raster named in its own CSV column. It is read with the crop's window,
padded with 0, moved by the same albumentations call as the masks (as an additional ``mask``
target, so flips/rotations stay aligned and pixel-level transforms leave it alone) and
returned as float32 ``[bands, c, c]`` under ``item["targets"][key]``.

Stored values are turned into floats like this: a GeoTIFF whose bands carry GDAL scale/offset
metadata gets ``raw * scale + offset``; otherwise floats are taken as they are, uint8 is divided
by 255 (as soft masks are) and uint16 by 65535. Other integer types are rejected.
"""

from __future__ import annotations

import csv
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import torch
from rasterio.errors import NotGeoreferencedWarning

from polyhead.data import raster_io
from polyhead.data.validation import CsvRow
from polyhead.errors import ConfigError, DataError
from polyhead.paths import resolve_cell

#: albumentations name of an extra target: ``extra_<key>`` (an additional "mask" target)
PREFIX = "extra_"
_RESERVED = frozenset({"hard", "soft"})
_INT_DIVISORS = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}


def target_name(key: str) -> str:
    """The albumentations target name used for extra target ``key``."""
    return PREFIX + key


def read_columns(
    csv_path: Path, columns: list[str], what: str = "extra_targets"
) -> list[dict[str, str]]:
    """Every data row of the CSV as ``{column: stripped cell}``; ``DataError`` naming the
    ``what`` option when a column is missing from the header."""
    with open(csv_path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        header = [c.strip() for c in (reader.fieldnames or [])]
        missing = [c for c in columns if c not in header]
        if missing:
            raise DataError(
                f"{csv_path}: {what} column(s) {', '.join(missing)} not in the header "
                f"{','.join(header)}"
            )
        return [
            {(k or "").strip(): (v or "").strip() for k, v in rec.items() if k} for rec in reader
        ]


def value_transform(path: Path, dtype: str, bands: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-band ``(scale, offset)`` turning stored values into target values."""
    scales, offsets = np.ones(bands, np.float32), np.zeros(bands, np.float32)
    if path.suffix.lower() not in (*raster_io.NPY_SUFFIXES, *raster_io.PIL_SUFFIXES):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            src = rasterio.open(path)
        with src:
            meta_s = np.asarray(src.scales, np.float32)
            meta_o = np.asarray(src.offsets, np.float32)
        if np.any(meta_s != 1.0) or np.any(meta_o != 0.0):
            return meta_s, meta_o
    kind = np.dtype(dtype)
    if np.issubdtype(kind, np.floating):
        return scales, offsets
    if kind in _INT_DIVISORS:
        return scales / np.float32(_INT_DIVISORS[kind]), offsets
    raise DataError(
        f"{path}: dtype {dtype} is not supported for an extra target (use float32, uint8 or "
        "uint16, optionally with GDAL band scale/offset metadata)"
    )


@dataclass
class _Source:
    path: Path
    scale: np.ndarray
    offset: np.ndarray


class ExtraTargets:
    """The extra-target files of every CSV row, checked at construction.

    Args:
        csv_path: the data set's CSV (paths resolve against its folder).
        rows: the rows read by `polyhead.data.validation.read_csv_rows`, in CSV order.
        image_sizes: ``(height, width)`` of each row's image.
        columns: ``{target key: CSV column}``.

    Raises ``DataError`` naming the row and file for a missing column, an empty cell, a
    missing or unreadable file, a size different from the image's, or band counts that differ
    between rows (crops of one key must stack into a batch).
    """

    def __init__(
        self,
        csv_path: Path,
        rows: list[CsvRow],
        image_sizes: list[tuple[int, int]],
        columns: Mapping[str, str],
    ) -> None:
        if not isinstance(columns, Mapping) or not columns:
            raise ConfigError(f"extra_targets must be a non-empty mapping, got {columns!r}")
        bad = sorted(set(columns) & _RESERVED)
        if bad:
            raise ConfigError(f"extra_targets keys {bad} are reserved for the masks")
        self.columns = {str(k): str(v) for k, v in columns.items()}
        records = read_columns(csv_path, list(self.columns.values()))
        base = csv_path.resolve().parent
        self.sources: list[dict[str, _Source]] = []
        self.bands: dict[str, int] = {}
        for row, (height, width) in zip(rows, image_sizes, strict=True):
            rec = records[row.number - 1]
            per_key = {}
            for key, column in self.columns.items():
                where = f"{csv_path}: row {row.number} (image {row.image.name}): {column}"
                cell = rec.get(column, "")
                if not cell:
                    raise DataError(f"{where}: empty cell")
                path = resolve_cell(cell, base)
                if not path.is_file():
                    raise DataError(f"{where} {path}: file not found")
                try:
                    info = raster_io.raster_info(path)
                    scale, offset = value_transform(path, info.dtype, info.count)
                except DataError as err:
                    raise DataError(f"{where} {path}: {err}") from err
                if (info.height, info.width) != (height, width):
                    raise DataError(
                        f"{where} {path}: size {info.height} x {info.width} differs from the "
                        f"image's {height} x {width}"
                    )
                if self.bands.setdefault(key, info.count) != info.count:
                    raise DataError(
                        f"{where} {path}: {info.count} bands, earlier rows have {self.bands[key]}"
                    )
                per_key[key] = _Source(path, scale, offset)
            self.sources.append(per_key)

    @property
    def keys(self) -> list[str]:
        return list(self.columns)

    def read(
        self,
        image: int,
        row_off: int,
        col_off: int,
        h: int,
        w: int,
        cache: raster_io.HandleCache | None = None,
    ) -> dict[str, np.ndarray]:
        """Window of every extra target of row ``image`` as float32 ``[bands, h, w]``."""
        out = {}
        for key, src in self.sources[image].items():
            raw = raster_io.read_window(src.path, row_off, col_off, h, w, cache)
            values = raw.astype(np.float32) * src.scale[:, None, None] + src.offset[:, None, None]
            out[key] = np.where(np.isfinite(values), values, np.float32(0.0))
        return out


def pad(arrays: dict[str, np.ndarray], crop: int) -> dict[str, np.ndarray]:
    """Pad every ``[bands, h, w]`` array at the bottom/right with 0 up to ``crop``."""
    out = {}
    for key, arr in arrays.items():
        h, w = arr.shape[-2:]
        out[key] = (
            arr if (h, w) == (crop, crop) else np.pad(arr, ((0, 0), (0, crop - h), (0, crop - w)))
        )
    return out


def register(transform: Any, keys: list[str]) -> None:
    """Make an ``A.Compose`` move each extra target like a mask (idempotent)."""
    if transform is None:
        return
    new = {
        target_name(k): "mask" for k in keys if target_name(k) not in transform.additional_targets
    }
    if new:
        transform.add_targets(new)


def as_inputs(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Albumentations keyword inputs (HWC arrays) for the extra targets."""
    return {target_name(k): np.ascontiguousarray(a.transpose(1, 2, 0)) for k, a in arrays.items()}


def mask_to_chw(value: Any, transposed: bool) -> torch.Tensor:
    """An augmented mask-like target (HWC array/tensor, or CHW if ``transposed``) as float CHW."""
    if isinstance(value, torch.Tensor):
        tensor = value if transposed else value.permute(2, 0, 1)
    else:
        tensor = torch.from_numpy(np.ascontiguousarray(value).transpose(2, 0, 1))
    return tensor.float().contiguous()


def from_outputs(
    out: Mapping[str, Any], keys: list[str], transposed: bool
) -> dict[str, torch.Tensor]:
    """The augmented extra targets as float32 ``[bands, c, c]`` tensors."""
    return {k: mask_to_chw(out[target_name(k)], transposed) for k in keys}


def to_tensors(arrays: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """Un-augmented extra targets as float32 tensors."""
    return {
        k: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)) for k, a in arrays.items()
    }
