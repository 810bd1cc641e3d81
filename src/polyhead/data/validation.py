"""Checks run on a segmentation CSV before any training starts.

Problems (up to ``MAX_PROBLEMS``) are collected and raised as one ``DataError``, one
line each naming the CSV data row (1-based, header not counted), the file and the fault.
"""

from __future__ import annotations

import csv
import functools
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from polyhead.data import raster_io
from polyhead.data.scan import (
    Report,
    check_nonfinite_mode,
    report_nonfinite,
    scan_image,
    scan_mask,
)
from polyhead.errors import ConfigError, DataError
from polyhead.paths import open_csv, resolve_cell

REQUIRED_COLUMNS = ("image", "mask")
SOFT_COLUMN = "soft_mask"
MAX_PROBLEMS = 20


@dataclass(frozen=True)
class CsvRow:
    """One data row of the CSV with its paths resolved."""

    number: int  # 1-based data row, header not counted
    image: Path
    mask: Path
    soft_mask: Path | None = None  # None: no soft_mask column, or an empty cell (no soft target)


@dataclass(frozen=True)
class ImageSummary:
    """Facts about one CSV row's files."""

    row: int
    image: Path
    height: int
    width: int
    bands: int
    dtype: str
    mask_dtype: str
    soft_dtype: str | None = None
    nonfinite: int = 0  # NaN/inf pixels (ignored as nodata; with nonfinite="error" a problem)


@dataclass
class DataSummary:
    """What ``check_data`` found: image sizes and the class histogram of the hard masks."""

    csv_path: Path
    n_classes: int
    ignore_index: int
    soft_labels: bool
    images: list[ImageSummary] = field(default_factory=list)
    class_counts: list[int] = field(default_factory=list)
    ignored_pixels: int = 0
    #: ``{CSV column: (rows with a value, rows without)}``, every column but image and mask
    target_counts: dict[str, tuple[int, int]] = field(default_factory=dict)

    @property
    def n_images(self) -> int:
        return len(self.images)

    @property
    def total_pixels(self) -> int:
        return sum(im.height * im.width for im in self.images)

    @property
    def nonfinite_pixels(self) -> int:
        """NaN/inf image pixels, ignored as nodata (``nonfinite="nodata"``)."""
        return sum(im.nonfinite for im in self.images)

    def image_table(self) -> Any:
        """Per-image sizes, band counts and dtypes as a ``rich.table.Table``."""
        from rich.table import Table

        table = Table(
            "row", "image", "H x W", "bands", "dtype", "mask dtype", "soft dtype", title="Images"
        )
        for im in self.images:
            size = f"{im.height} x {im.width}"
            cells = (im.row, im.image, size, im.bands, im.dtype, im.mask_dtype, im.soft_dtype)
            table.add_row(*(str(c) if c is not None else "-" for c in cells))
        return table

    def class_table(self) -> Any:
        """Pixel count and share of every class id (plus ignored pixels)."""
        from rich.table import Table

        total = max(1, sum(self.class_counts) + self.ignored_pixels)
        entries = [*map(str, range(len(self.class_counts)))] + [f"ignored ({self.ignore_index})"]
        table = Table("class", "pixels", "percent", title="Class histogram (hard masks)")
        for name, count in zip(entries, [*self.class_counts, self.ignored_pixels], strict=True):
            table.add_row(name, f"{count:,}", f"{100.0 * count / total:.2f}%")
        return table

    def target_table(self) -> Any:
        """Rows with and without a value in each optional column (a head's target)."""
        from rich.table import Table

        table = Table("column", "rows with a target", "rows without", title="Targets per column")
        for column, counts in self.target_counts.items():
            table.add_row(column, *map(str, counts))
        return table

    def to_table(self) -> Any:
        """Everything in one ``rich.table.Table`` (the image and class tables nested)."""
        from rich.table import Table

        table = Table(title=f"Data check: {self.csv_path}", show_header=False)
        for name, value in [
            ("CSV", str(self.csv_path)),
            ("images", str(self.n_images)),
            ("total pixels", f"{self.total_pixels:,}"),
            ("classes", str(self.n_classes)),
            ("soft labels", "yes" if self.soft_labels else "no"),
            ("NaN/inf pixels (ignored)", f"{self.nonfinite_pixels:,}"),
            ("per image", self.image_table()),
            ("class histogram", self.class_table()),
            *([("targets per column", self.target_table())] if self.target_counts else []),
        ]:
            table.add_row(name, value)
        return table


class _Problems:
    """Collects problem lines up to a limit."""

    def __init__(self, csv_path: Path, limit: int) -> None:
        self.csv_path = csv_path
        self.limit = limit
        self.lines: list[str] = []

    @property
    def full(self) -> bool:
        return len(self.lines) >= self.limit

    def add(self, line: str) -> None:
        if not self.full:
            self.lines.append(line)

    def add_row(self, row: CsvRow, role: str, path: Path | None, problem: str) -> None:
        what = f"{role} {path}" if path is not None else role
        self.add(f"row {row.number} (image {row.image.name}): {what}: {problem}")

    def raise_if_any(self) -> None:
        if not self.lines:
            return
        more = f" (stopped after the first {self.limit})" if self.full else ""
        head = f"{self.csv_path}: {len(self.lines)} problem(s) found{more}; rows count from 1 after the header:"
        raise DataError("\n".join([head, *(f"  - {line}" for line in self.lines)]))


def read_csv_rows(csv_path: str | Path, soft_labels: bool | None = False) -> list[CsvRow]:
    """Read an ``image,mask[,soft_mask]`` CSV; relative paths resolve against its folder.

    ``soft_labels=True`` requires the ``soft_mask`` column, ``False`` ignores it and
    ``None`` uses it when present. An empty ``soft_mask`` cell: that row has no soft target
    (the soft heads skip it). Raises ``DataError`` for a missing file, missing columns, no
    data rows, empty image/mask cells or every soft_mask cell empty.
    """
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise DataError(f"{csv_path}: CSV file not found")
    base = csv_path.resolve().parent
    with open_csv(csv_path) as fh:
        reader = csv.DictReader(fh)
        columns = [c.strip() for c in (reader.fieldnames or [])]
        required = list(REQUIRED_COLUMNS) + ([SOFT_COLUMN] if soft_labels else [])
        missing = [c for c in required if c not in columns]
        if missing:
            hint = " (soft_labels=True needs a soft_mask column)" if SOFT_COLUMN in missing else ""
            raise DataError(
                f"{csv_path}: missing column(s) {', '.join(missing)}; header is "
                f"{','.join(columns) or '(empty)'}, expected image,mask[,soft_mask]{hint}"
            )
        use_soft = SOFT_COLUMN in columns if soft_labels is None else soft_labels
        records = [{(k or "").strip(): v for k, v in rec.items() if k} for rec in reader]
    if not records:
        raise DataError(f"{csv_path}: the CSV has a header but no data rows")

    problems = _Problems(csv_path, MAX_PROBLEMS)
    rows = []
    names = [*REQUIRED_COLUMNS, SOFT_COLUMN] if use_soft else list(REQUIRED_COLUMNS)
    for number, rec in enumerate(records, start=1):
        cells = {name: (rec.get(name) or "").strip() for name in names}
        empty = [name for name in REQUIRED_COLUMNS if not cells[name]]
        if empty:
            problems.add(f"row {number}: empty {', '.join(empty)} cell(s)")
            continue
        paths = [resolve_cell(cells[name], base) if cells[name] else None for name in names]
        rows.append(CsvRow(number, *paths))
    problems.raise_if_any()
    if use_soft and soft_labels and rows and all(r.soft_mask is None for r in rows):
        raise DataError(f"{csv_path}: soft_labels=True but every soft_mask cell is empty")
    return rows


def _open_info(role: str, path: Path, report: Report) -> raster_io.RasterInfo | None:
    """The file's header, or None (and a problem line) when it is missing or unreadable.

    Pixels are decoded by the scans that follow (`polyhead.data.scan`), all of them."""
    if not path.is_file():
        report(role, path, "file not found")
        return None
    try:
        return raster_io.raster_info(path)
    except DataError as err:
        report(role, path, f"unreadable ({raster_io.error_detail(err)})")
        return None


def _size(info: raster_io.RasterInfo) -> str:
    return f"H x W = {info.height} x {info.width} px"


@dataclass(frozen=True)
class _Options:
    """What every row is checked against."""

    n_classes: int
    crop_size: int | None
    soft_labels: bool
    ignore_index: int
    nonfinite: str


def _mask_headers_ok(
    image: raster_io.RasterInfo, mask: raster_io.RasterInfo, report: Report, problems: _Problems
) -> bool:
    before = len(problems.lines)
    if mask.count != 1:
        report("mask", mask.path, f"has {mask.count} bands, expected 1 (class ids)")
    if np.dtype(mask.dtype).kind not in "iuf":
        report("mask", mask.path, f"dtype {mask.dtype} cannot hold class ids")
    if (mask.height, mask.width) != (image.height, image.width):
        report("mask", mask.path, f"size {_size(mask)} differs from the image's {_size(image)}")
    return len(problems.lines) == before


def _soft_headers_ok(
    image: raster_io.RasterInfo,
    soft: raster_io.RasterInfo,
    n_classes: int,
    report: Report,
    problems: _Problems,
) -> bool:
    before = len(problems.lines)
    if soft.count != n_classes:
        report("soft mask", soft.path, f"has {soft.count} bands, expected n_classes={n_classes}")
    if (soft.height, soft.width) != (image.height, image.width):
        report(
            "soft mask", soft.path, f"size {_size(soft)} differs from the image's {_size(image)}"
        )
    if raster_io.soft_scale(soft.dtype) is None:
        supported = "float probabilities or uint8 scaled 0-255"
        report("soft mask", soft.path, f"dtype {soft.dtype} not supported (use {supported})")
    return len(problems.lines) == before


def _scan_image(image: raster_io.RasterInfo, nonfinite: str, report: Report) -> int | None:
    """Decode the whole image; its NaN/inf pixel count, or None when it cannot be decoded."""
    try:
        scan = scan_image(image)
    except DataError as err:
        report("image", image.path, f"unreadable ({raster_io.error_detail(err)})")
        return None
    if scan.nonfinite and nonfinite == "error":
        report_nonfinite(scan, image, report)
    return scan.nonfinite


def _check_row(
    row: CsvRow, opts: _Options, counts: np.ndarray, problems: _Problems
) -> tuple[ImageSummary | None, int]:
    report: Report = functools.partial(problems.add_row, row)
    image = _open_info("image", row.image, report)
    mask = _open_info("mask", row.mask, report)
    soft = None
    if opts.soft_labels and row.soft_mask is not None:
        soft = _open_info("soft mask", row.soft_mask, report)
    if image is None or mask is None or (row.soft_mask is not None and soft is None):
        return None, 0

    crop = opts.crop_size or 0
    if crop > image.height or crop > image.width:
        report("image", image.path, f"crop_size {crop} is larger than the image ({_size(image)})")
    mask_ok = _mask_headers_ok(image, mask, report, problems)
    soft_ok = soft is not None and _soft_headers_ok(image, soft, opts.n_classes, report, problems)
    nonfinite = _scan_image(image, opts.nonfinite, report) if not problems.full else 0
    if nonfinite is None:
        return None, 0

    ignored = 0
    if mask_ok and not problems.full:
        try:
            scan_soft = soft if soft_ok else None
            ignored = scan_mask(mask, scan_soft, opts.n_classes, opts.ignore_index, counts, report)
        except DataError as err:
            report("mask", None, f"unreadable while scanning ({err})")
            return None, 0
    soft_dtype = soft.dtype if soft is not None else None
    info = (image.height, image.width, image.count, image.dtype, mask.dtype, soft_dtype)
    return ImageSummary(row.number, image.path, *info, nonfinite=nonfinite), ignored


def _check_bands(images: list[ImageSummary], problems: _Problems) -> None:
    """Every image must have the band count of the first one (the model reads one count)."""
    if not images:
        return
    ref = images[0]
    for im in images[1:]:
        if im.bands != ref.bands:
            problems.add(
                f"row {im.row} (image {im.image.name}): image {im.image}: has {im.bands} "
                f"band(s), row {ref.row}'s image has {ref.bands}; every image needs the same bands"
            )


def validate_rows(
    csv_path: str | os.PathLike[str],
    rows: list[CsvRow],
    n_classes: int,
    crop_size: int | None = None,
    soft_labels: bool = False,
    ignore_index: int = 255,
    max_problems: int = MAX_PROBLEMS,
    nonfinite: str = "error",
) -> DataSummary:
    """Check every row's files; raise one ``DataError`` listing up to ``max_problems`` problems.

    Every image is decoded whole (so a truncated file fails here) and, like the masks, read
    in bounded row strips, so memory does not grow with raster size. NaN/inf image pixels
    are a problem with ``nonfinite="error"`` and counted in the summary with ``"nodata"``
    (the dataset then ignores them). Every image must have the same band count. Returns the
    summary (sizes, dtypes, class histogram) when nothing is wrong.
    """
    if n_classes < 1:
        raise ConfigError(f"n_classes must be >= 1, got {n_classes}")
    opts = _Options(
        n_classes, crop_size, soft_labels, ignore_index, check_nonfinite_mode(nonfinite)
    )
    csv_path = Path(csv_path)
    problems = _Problems(csv_path, max_problems)
    counts = np.zeros(n_classes, dtype=np.int64)
    summary = DataSummary(csv_path, n_classes, ignore_index, soft_labels)
    if soft_labels and rows and all(r.soft_mask is None for r in rows):
        raise DataError(f"{csv_path}: soft_labels=True but the CSV has no soft_mask column")
    for row in rows:
        if problems.full:
            break
        image, ignored = _check_row(row, opts, counts, problems)
        if image is not None:
            summary.images.append(image)
        summary.ignored_pixels += ignored
    _check_bands(summary.images, problems)
    problems.raise_if_any()
    summary.class_counts = counts.tolist()
    from polyhead.data.image_targets import column_counts  # it builds on this module

    summary.target_counts = column_counts(csv_path)
    return summary


def check_data(
    csv_path: str | os.PathLike[str],
    n_classes: int,
    crop_size: int | None = None,
    soft_labels: bool | None = None,
    ignore_index: int = 255,
    nonfinite: str = "error",
) -> DataSummary:
    """Run every data check on one CSV and return its summary.

    ``soft_labels=None`` checks the soft_mask column when the CSV has one; ``nonfinite`` is
    the dataset option of that name (see `validate_rows`).
    """
    rows = read_csv_rows(csv_path, soft_labels)
    use_soft = any(r.soft_mask is not None for r in rows)
    return validate_rows(
        csv_path, rows, n_classes, crop_size, use_soft, ignore_index, nonfinite=nonfinite
    )
