"""Reading and checking the ``image,annotator,mask`` CSV before any pixel is read.

Relative paths resolve against the CSV's folder. Checks done here, each failing with
a `DataError` that names the CSV line: missing columns or cells, duplicate
``(image, annotator)`` pairs, mask files that do not exist or do not open, masks
with more than one band or a non-integer dtype, masks of one image with different
sizes, fewer than two annotators in the whole CSV, and an ``image`` that exists but
does not open or whose size differs from its masks. An ``image`` path that does not
exist only warns (the ``image`` column may be a key mapped by ``images=``), since
``train.csv`` then points at a missing file.

`MaskReader` then reads the pixels, one row strip of every mask of an image at a
time, and checks class ids (``< K`` or ``ignore_index``) as it goes.
"""

from __future__ import annotations

import csv
import os
import re
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from polyhead.data import raster_io
from polyhead.errors import DataError
from polyhead.paths import open_csv, resolve_cell

MASK_COLUMNS = ("image", "annotator", "mask")
LABEL_COLUMNS = ("item", "annotator", "label")


@dataclass
class MaskRow:
    """One annotator mask; ``line`` is the CSV line number (header = line 1)."""

    line: int
    image: str
    annotator: str
    path: Path
    annotator_index: int = -1
    info: raster_io.RasterInfo | None = None

    def where(self, csv_path: Path) -> str:
        """Human-readable location of the row, for error messages."""
        return (
            f"{csv_path}, line {self.line} (image {self.image!r}, annotator "
            f"{self.annotator!r}, mask {self.path})"
        )


@dataclass
class ImageEntry:
    """All masks of one image, in CSV order, and where its outputs go."""

    key: str
    image_path: Path
    rows: list[MaskRow] = field(default_factory=list)
    name: str = ""
    height: int = 0
    width: int = 0


def read_header(csv_path: Path) -> list[str]:
    """Column names of a CSV (stripped), or a `DataError` if it cannot be read."""
    try:
        with open_csv(csv_path) as fh:
            return [c.strip() for c in next(csv.reader(fh), [])]
    except OSError as err:
        raise DataError(f"cannot read {csv_path}: {err}") from err


def detect_kind(csv_path: str | os.PathLike[str]) -> str:
    """``"masks"`` for an ``image,annotator,mask`` CSV, ``"labels"`` for ``item,annotator,label``."""
    cols = set(read_header(Path(csv_path)))
    if set(MASK_COLUMNS) <= cols:
        return "masks"
    if set(LABEL_COLUMNS) <= cols:
        return "labels"
    raise DataError(
        f"{csv_path}: columns {sorted(cols)} are neither image,annotator,mask "
        "(segmentation masks) nor item,annotator,label (classification)"
    )


def iter_csv(
    csv_path: Path, required: tuple[str, ...], nonempty: tuple[str, ...] | None = None
) -> Iterator[tuple[int, dict[str, str]]]:
    """Yield ``(line, {column: stripped cell})`` for every non-blank data row.

    ``required`` columns must exist; ``nonempty`` ones (default: all required) must
    hold a value on every row.
    """
    nonempty = required if nonempty is None else nonempty
    try:
        fh = open_csv(csv_path)
    except OSError as err:
        raise DataError(f"cannot read {csv_path}: {err}") from err
    with fh:
        reader = csv.DictReader(fh)
        cols = [c.strip() for c in (reader.fieldnames or [])]
        missing = [c for c in required if c not in cols]
        if missing:
            raise DataError(
                f"{csv_path}: missing column(s) {', '.join(missing)}; found "
                f"{','.join(cols) or '(none)'}, expected {','.join(required)}"
            )
        reader.fieldnames = cols
        for rec in reader:
            cells = {k: (v or "").strip() for k, v in rec.items() if k is not None}
            if not any(cells.values()):
                continue
            line = reader.line_num
            empty = [c for c in nonempty if not cells.get(c)]
            if empty:
                raise DataError(f"{csv_path}, line {line}: empty cell(s) {', '.join(empty)}")
            yield line, cells


def load_image_map(images: str | os.PathLike[str] | Mapping[str, str]) -> dict[str, Path]:
    """``image`` key -> imagery path, from a mapping or an ``image,path`` CSV."""
    if isinstance(images, Mapping):
        return {str(k): Path(v) for k, v in images.items()}
    path = Path(images)
    return {
        cells["image"]: resolve_cell(cells["path"], path.parent)
        for _, cells in iter_csv(path, ("image", "path"))
    }


def output_names(keys: list[str]) -> list[str]:
    """File stems for outputs: the image file stem, or the whole path when stems clash."""
    stems = [Path(k).stem or "image" for k in keys]
    if len(set(stems)) == len(stems):
        return stems
    names = [
        re.sub(r"[^A-Za-z0-9._-]+", "__", str(Path(k).with_suffix(""))).strip("_") for k in keys
    ]
    if len(set(names)) != len(names):
        names = [f"{i:05d}_{s}" for i, s in enumerate(stems)]
    return names


def read_mask_csv(
    csv_path: str | os.PathLike[str],
    images: str | os.PathLike[str] | Mapping[str, str] | None = None,
) -> tuple[list[ImageEntry], list[str]]:
    """Parse and check the mask CSV (headers only): images in CSV order and annotator names."""
    csv_path = Path(csv_path)
    base = csv_path.parent
    image_map = None if images is None else load_image_map(images)
    entries: dict[str, ImageEntry] = {}
    annotators: dict[str, int] = {}
    seen: dict[tuple[str, str], int] = {}
    for line, cells in iter_csv(csv_path, MASK_COLUMNS):
        key, ann = cells["image"], cells["annotator"]
        if (key, ann) in seen:
            raise DataError(
                f"{csv_path}, line {line}: annotator {ann!r} already has a mask for image "
                f"{key!r} on line {seen[key, ann]}"
            )
        seen[key, ann] = line
        idx = annotators.setdefault(ann, len(annotators))
        entry = entries.get(key)
        if entry is None:
            if image_map is not None:
                if key not in image_map:
                    raise DataError(f"{csv_path}, line {line}: image {key!r} is not in images=")
                image_path = image_map[key]
            else:
                image_path = resolve_cell(key, base)
            entry = entries[key] = ImageEntry(key=key, image_path=image_path)
        entry.rows.append(MaskRow(line, key, ann, resolve_cell(cells["mask"], base), idx))
    if not entries:
        raise DataError(f"{csv_path}: no rows")
    if len(annotators) < 2:
        only = next(iter(annotators))
        raise DataError(
            f"{csv_path}: only one annotator ({only!r}); aggregation needs masks from at "
            "least two annotators"
        )
    result = list(entries.values())
    for entry, name in zip(result, output_names([e.key for e in result]), strict=True):
        entry.name = name
        _check_entry(csv_path, entry)
    return result, list(annotators)


def _check_entry(csv_path: Path, entry: ImageEntry) -> None:
    first: MaskRow | None = None
    for row in entry.rows:
        if not row.path.is_file():
            raise DataError(f"{row.where(csv_path)}: mask file does not exist")
        try:
            row.info = raster_io.raster_info(row.path)
        except DataError as err:
            raise DataError(f"{row.where(csv_path)}: {err}") from err
        info = row.info
        if info.count != 1:
            raise DataError(f"{row.where(csv_path)}: mask has {info.count} bands, expected 1")
        if not np.issubdtype(np.dtype(info.dtype), np.integer):
            raise DataError(
                f"{row.where(csv_path)}: mask dtype {info.dtype} is not an integer type "
                "(masks hold class ids)"
            )
        if first is None:
            first = row
        elif (info.height, info.width) != (first.info.height, first.info.width):  # type: ignore[union-attr]
            raise DataError(
                f"{row.where(csv_path)}: mask is {info.height}x{info.width} but the mask of "
                f"the same image on line {first.line} is "
                f"{first.info.height}x{first.info.width}"  # type: ignore[union-attr]
            )
    assert first is not None and first.info is not None
    entry.height, entry.width = first.info.height, first.info.width
    if not entry.image_path.exists():
        warnings.warn(
            f"{csv_path}, line {first.line}: image {entry.image_path} does not exist; "
            "train.csv will name it anyway",
            stacklevel=4,
        )
        return
    try:
        img = raster_io.raster_info(entry.image_path)
    except DataError as err:
        raise DataError(f"{csv_path}, line {first.line}: image {entry.key!r}: {err}") from err
    if (img.height, img.width) != (entry.height, entry.width):
        raise DataError(
            f"{csv_path}, line {first.line}: image {entry.image_path} is {img.height}x"
            f"{img.width} but its masks are {entry.height}x{entry.width}"
        )


class MaskReader:
    """Reads one strip of every mask of an image as a ``[A, n]`` uint8 label stack."""

    def __init__(
        self, csv_path: Path, n_annotators: int, n_classes: int, ignore_index: int
    ) -> None:
        self.csv_path = csv_path
        self.n_annotators = n_annotators
        self.n_classes = n_classes
        self.ignore_index = ignore_index
        self.cache = raster_io.HandleCache()

    def _fail(self, row: MaskRow, message: str) -> DataError:
        return DataError(f"{row.where(self.csv_path)}: {message}")

    def stack(self, entry: ImageEntry, row_off: int, height: int) -> np.ndarray:
        """Labels ``[A, height * width]``; ``K`` where an annotator gave no label."""
        k, w = self.n_classes, entry.width
        out = np.full((self.n_annotators, height * w), k, dtype=np.uint8)
        for row in entry.rows:
            try:
                arr = raster_io.read_window(row.path, row_off, 0, height, w, self.cache)
            except DataError as err:
                raise self._fail(row, str(err)) from err
            except Exception as err:  # GDAL decoding errors are not always RasterioError
                raise self._fail(row, f"cannot read: {type(err).__name__}: {err}") from err
            values = arr[0].ravel()
            ignore = values == self.ignore_index
            bad = ~ignore & ((values < 0) | (values >= k))
            if bad.any():
                first = int(np.flatnonzero(bad)[0])
                shown = ", ".join(str(v) for v in np.unique(values[bad])[:5])
                raise self._fail(
                    row,
                    f"class id(s) {shown} outside [0, {k}) and not ignore_index="
                    f"{self.ignore_index} ({int(bad.sum())} pixel(s) in this strip, first at "
                    f"row {row_off + first // w}, col {first % w})",
                )
            out[row.annotator_index] = np.where(ignore, k, values)
        return out

    def georef(self, entry: ImageEntry) -> tuple[Any, Any]:
        """CRS and transform of the image's first mask (None for non-GeoTIFF masks)."""
        path = entry.rows[0].path
        if path.suffix.lower() in raster_io.PIL_SUFFIXES | raster_io.NPY_SUFFIXES:
            return None, None
        src = self.cache.get(path)
        return src.crs, (None if src.transform.is_identity else src.transform)
