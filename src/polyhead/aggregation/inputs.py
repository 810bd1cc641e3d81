"""Reading and checking the ``image,annotator,mask`` CSV before any pixel is read.

Relative paths resolve against the CSV's folder. An annotator may appear several times
for one image (repeated ratings): each mask is one rating and gets its own *slot* (the
``r``-th mask of annotator ``a`` in an image); a label pattern is the tuple over slots.
A gold mask per image (a ``gold_mask`` column, or an ``image,gold_mask`` CSV) is one more
slot, the last. Checks done here, each failing with a `DataError` that names the CSV
line: missing columns or cells, mask files that do not exist or do not open, masks
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
GOLD_COLUMN = "gold_mask"
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
    slot: int = -1
    """Row of this mask in the label stack `MaskReader.stack` returns."""
    source: str = ""
    """The file this row comes from when it is not the annotators CSV (a gold CSV)."""

    def where(self, csv_path: Path) -> str:
        """Human-readable location of the row, for error messages."""
        return (
            f"{self.source or csv_path}, line {self.line} (image {self.image!r}, annotator "
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
    gold: MaskRow | None = None
    """The image's gold mask (``annotator`` = ``"gold"``), if any."""

    def all_rows(self) -> list[MaskRow]:
        """Annotator masks, then the gold mask if there is one."""
        return self.rows + ([self.gold] if self.gold is not None else [])


@dataclass
class MaskSet:
    """A checked mask CSV: images in CSV order, annotator names and the slot layout."""

    entries: list[ImageEntry]
    annotators: list[str]
    slot_annotators: list[int]
    """Annotator index of each rating slot (without the gold slot)."""
    has_gold: bool = False

    @property
    def n_slots(self) -> int:
        """Rows of a label stack: rating slots plus the gold slot."""
        return len(self.slot_annotators) + int(self.has_gold)


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


def _gold_cells(
    gold: str | os.PathLike[str] | Mapping[str, str] | None, base: Path
) -> dict[str, tuple[str, int, Path]]:
    """``image`` -> (file name, line, gold mask path) from an ``image,gold_mask`` CSV/mapping."""
    if gold is None:
        return {}
    if isinstance(gold, Mapping):
        return {str(k): ("gold", 0, resolve_cell(str(v), base)) for k, v in gold.items()}
    path = Path(gold)
    return {
        cells["image"]: (str(path), line, resolve_cell(cells[GOLD_COLUMN], path.parent))
        for line, cells in iter_csv(path, ("image", GOLD_COLUMN))
    }


def _set_gold(entry: ImageEntry, line: int, path: Path, where: str) -> None:
    if entry.gold is not None and entry.gold.path != path:
        raise DataError(
            f"{where}, line {line}: image {entry.key!r} already has gold mask {entry.gold.path} "
            f"(line {entry.gold.line}), not {path}"
        )
    entry.gold = MaskRow(line, entry.key, "gold", path, source=where)


def read_mask_csv(
    csv_path: str | os.PathLike[str],
    images: str | os.PathLike[str] | Mapping[str, str] | None = None,
    gold: str | os.PathLike[str] | Mapping[str, str] | None = None,
) -> MaskSet:
    """Parse and check the mask CSV (headers only) and any gold masks."""
    csv_path = Path(csv_path)
    base = csv_path.parent
    image_map = None if images is None else load_image_map(images)
    entries: dict[str, ImageEntry] = {}
    annotators: dict[str, int] = {}
    slots: dict[tuple[int, int], int] = {}
    repeats: dict[tuple[str, int], int] = {}
    for line, cells in iter_csv(csv_path, MASK_COLUMNS):
        key, ann = cells["image"], cells["annotator"]
        idx = annotators.setdefault(ann, len(annotators))
        nth = repeats[key, idx] = repeats.get((key, idx), -1) + 1
        entry = entries.get(key)
        if entry is None:
            if image_map is not None:
                if key not in image_map:
                    raise DataError(f"{csv_path}, line {line}: image {key!r} is not in images=")
                image_path = image_map[key]
            else:
                image_path = resolve_cell(key, base)
            entry = entries[key] = ImageEntry(key=key, image_path=image_path)
        path = resolve_cell(cells["mask"], base)
        for prev in entry.rows:
            if prev.annotator_index == idx and prev.path == path:
                raise DataError(
                    f"{csv_path}, line {line}: annotator {ann!r} already has mask {path} for "
                    f"image {key!r} on line {prev.line} (a repeated rating needs its own file)"
                )
        slot = slots.setdefault((idx, nth), len(slots))
        entry.rows.append(MaskRow(line, key, ann, path, idx, slot=slot))
        if cells.get(GOLD_COLUMN):
            _set_gold(entry, line, resolve_cell(cells[GOLD_COLUMN], base), str(csv_path))
    if not entries:
        raise DataError(f"{csv_path}: no rows")
    if len(annotators) < 2 and not any(n > 0 for n in repeats.values()):
        only = next(iter(annotators))
        raise DataError(
            f"{csv_path}: only one annotator ({only!r}); aggregation needs masks from at "
            "least two annotators (or repeated masks)"
        )
    for key, (where, line, path) in _gold_cells(gold, base).items():
        if key not in entries:
            raise DataError(f"{where}, line {line}: image {key!r} is not in {csv_path}")
        _set_gold(entries[key], line, path, where)
    result = list(entries.values())
    has_gold = any(e.gold is not None for e in result)
    missing = []
    for entry, name in zip(result, output_names([e.key for e in result]), strict=True):
        entry.name = name
        if entry.gold is not None:
            entry.gold.slot = len(slots)
        gone = _check_entry(csv_path, entry)
        if gone is not None:
            missing.append(gone)
    if missing:
        warnings.warn(
            f"{csv_path}: {len(missing)} image(s) do not exist, e.g. {missing[0]}; train.csv "
            "will name them anyway",
            stacklevel=3,
        )
    slot_annotators = [a for (a, _), _s in sorted(slots.items(), key=lambda kv: kv[1])]
    return MaskSet(result, list(annotators), slot_annotators, has_gold)


def _check_entry(csv_path: Path, entry: ImageEntry) -> str | None:
    """Check an image's masks (and imagery); returns where its imagery is missing, if so."""
    first: MaskRow | None = None
    for row in entry.all_rows():
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
        return f"line {first.line}: {entry.image_path}"
    try:
        img = raster_io.raster_info(entry.image_path)
    except DataError as err:
        raise DataError(f"{csv_path}, line {first.line}: image {entry.key!r}: {err}") from err
    if (img.height, img.width) != (entry.height, entry.width):
        raise DataError(
            f"{csv_path}, line {first.line}: image {entry.image_path} is {img.height}x"
            f"{img.width} but its masks are {entry.height}x{entry.width}"
        )
    return None


class MaskReader:
    """Reads one strip of every mask of an image as a ``[A, n]`` uint8 label stack."""

    def __init__(self, csv_path: Path, n_slots: int, n_classes: int, ignore_index: int) -> None:
        self.csv_path = csv_path
        self.n_slots = n_slots
        self.n_classes = n_classes
        self.ignore_index = ignore_index
        self.cache = raster_io.HandleCache()

    def _fail(self, row: MaskRow, message: str) -> DataError:
        return DataError(f"{row.where(self.csv_path)}: {message}")

    def stack(self, entry: ImageEntry, row_off: int, height: int) -> np.ndarray:
        """Labels ``[slots, height * width]`` uint8; ``K`` where a slot holds no label."""
        k, w = self.n_classes, entry.width
        out = np.full((self.n_slots, height * w), k, dtype=np.uint8)
        for row in entry.all_rows():
            try:
                arr = raster_io.read_window(row.path, row_off, 0, height, w, self.cache)
            except DataError as err:
                raise self._fail(row, str(err)) from err
            except Exception as err:  # GDAL decoding errors are not always RasterioError
                raise self._fail(row, f"cannot read: {type(err).__name__}: {err}") from err
            values = arr[0].ravel()
            ignore = values == self.ignore_index
            bad = (
                ~ignore & (values >= k)
                if values.dtype.kind == "u"
                else ~ignore & ((values < 0) | (values >= k))
            )
            if bad.any():
                first = int(np.flatnonzero(bad)[0])
                shown = ", ".join(str(v) for v in np.unique(values[bad])[:5])
                raise self._fail(
                    row,
                    f"class id(s) {shown} outside [0, {k}) and not ignore_index="
                    f"{self.ignore_index} ({int(bad.sum())} pixel(s) in this strip, first at "
                    f"row {row_off + first // w}, col {first % w})",
                )
            np.copyto(out[row.slot], values, casting="unsafe", where=~ignore)
        return out

    def georef(self, entry: ImageEntry) -> tuple[Any, Any]:
        """CRS and transform of the image's first mask (None for non-GeoTIFF masks)."""
        path = entry.rows[0].path
        if path.suffix.lower() in raster_io.PIL_SUFFIXES | raster_io.NPY_SUFFIXES:
            return None, None
        src = self.cache.get(path)
        return src.crs, (None if src.transform.is_identity else src.transform)
