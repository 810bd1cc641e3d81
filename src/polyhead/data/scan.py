"""Streamed scans of whole rasters: every pixel of an image decoded and checked, every class id
of a mask counted, in row strips of bounded size (`polyhead.data.raster_io.iter_strips`).

`scan_image` proves an image decodes to its last row (a truncated file fails here, not in
the middle of training) and counts its NaN/inf pixels; `scan_mask` counts the class ids of a
hard mask and checks a soft mask against it. Both report problems through a callback
``report(role, path, problem)`` (one line each, see `polyhead.data.validation`).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

from polyhead.data import raster_io
from polyhead.errors import ConfigError

# report(role, path, problem): one problem line for the CSV row being checked.
Report = Callable[..., None]

#: what a dataset does with NaN/inf image pixels: refuse the image, or ignore those pixels
NONFINITE_MODES = ("error", "nodata")


def check_nonfinite_mode(value: str) -> str:
    """``value`` if it is a valid ``nonfinite`` option, else a `ConfigError` naming the key."""
    if value not in NONFINITE_MODES:
        raise ConfigError(
            f"nonfinite must be one of {', '.join(NONFINITE_MODES)} ('error': refuse images "
            f"with NaN/inf pixels; 'nodata': ignore those pixels), got {value!r}"
        )
    return value


def at(pixel: tuple[int, int]) -> str:
    """``pixel row r, col c`` for a problem line."""
    return f"pixel row {pixel[0]}, col {pixel[1]}"


def first(flags: np.ndarray, row_off: int) -> tuple[int, int]:
    """(row, col) of the first True of a 2-D strip that starts at row ``row_off``."""
    r, c = np.unravel_index(int(np.argmax(flags)), flags.shape)
    return row_off + int(r), int(c)


@dataclass(frozen=True)
class ImageScan:
    """What a full scan of an image found."""

    nonfinite: int = 0  # pixels with a NaN or inf value in any band
    first_nonfinite: tuple[int, int] | None = None


def nonfinite_pixels(pixels: np.ndarray) -> np.ndarray | None:
    """``[h, w]`` True where any band of ``pixels [C, h, w]`` is NaN or inf; None when none is
    (the common case is decided by one float32 sum: NaN and inf propagate through it)."""
    if pixels.dtype.kind != "f" or np.isfinite(np.add.reduce(pixels, axis=None)):
        return None
    bad = ~np.isfinite(pixels).all(axis=0)
    return bad if bad.any() else None  # the sum overflowed on finite values


def scan_image(info: raster_io.RasterInfo) -> ImageScan:
    """Decode every pixel of an image strip by strip and count its NaN/inf pixels.

    Raises `DataError` (from `raster_io`) when a strip cannot be decoded: a truncated or
    corrupt file fails here whichever part of it is broken. Memory is one strip.
    """
    count, where = 0, None
    for row_off, strip in raster_io.iter_strips(info.path, info):
        bad = nonfinite_pixels(strip)
        if bad is not None:
            count += int(bad.sum())
            where = where or first(bad, row_off)
    return ImageScan(count, where)


def report_nonfinite(scan: ImageScan, info: raster_io.RasterInfo, report: Report) -> None:
    """One problem line for an image with NaN/inf pixels under ``nonfinite: error``."""
    assert scan.first_nonfinite is not None
    report(
        "image",
        info.path,
        f"{scan.nonfinite} pixel(s) are NaN or inf (first at {at(scan.first_nonfinite)}); "
        "fix the file, or set the dataset's nonfinite: nodata to ignore those pixels",
    )


def _soft_strips(
    soft: raster_io.RasterInfo | None,
) -> Iterable[tuple[int, np.ndarray] | None]:
    if soft is None:
        return itertools.repeat(None)
    return raster_io.iter_strips(soft.path, soft)


class _SoftCheck:
    """Running check that a soft mask's per-pixel probabilities sum to 1 and lie in [0, 1]."""

    def __init__(self, soft: raster_io.RasterInfo, n_classes: int) -> None:
        self.info = soft
        self.scale = raster_io.soft_scale(soft.dtype) or 1.0
        self.tol = raster_io.soft_tolerance(soft.dtype, n_classes)
        self.worst_dev, self.worst_at, self.n_off = 0.0, (0, 0), 0
        self.out_of_range: tuple[float, float] | None = None

    def update(self, strip: np.ndarray, ignore: np.ndarray, row_off: int) -> None:
        probs = strip.astype(np.float32) / np.float32(self.scale)
        sums = probs.sum(axis=0, dtype=np.float64)
        dev = np.abs(sums - 1.0)
        dev[ignore & (sums == 0)] = 0.0  # unlabelled pixels may carry no probabilities
        dev[np.isnan(dev)] = np.inf
        self.n_off += int((dev > self.tol).sum())
        if dev.max() > self.worst_dev:
            self.worst_dev, self.worst_at = float(dev.max()), first(dev == dev.max(), row_off)
        lo, hi = float(np.nanmin(probs)), float(np.nanmax(probs))
        if lo < -self.tol or hi > 1 + self.tol:
            self.out_of_range = self.out_of_range or (lo, hi)

    def report(self, report: Report) -> None:
        if self.n_off:
            report(
                "soft mask",
                self.info.path,
                f"probabilities do not sum to 1 at {self.n_off} pixel(s): max |sum - 1| = "
                f"{self.worst_dev:.4g} at {at(self.worst_at)} (tolerance {self.tol:.4g})",
            )
        if self.out_of_range is not None:
            lo, hi = self.out_of_range
            report(
                "soft mask", self.info.path, f"values outside [0, 1] (min {lo:.4g}, max {hi:.4g})"
            )


def scan_mask(
    mask: raster_io.RasterInfo,
    soft: raster_io.RasterInfo | None,
    n_classes: int,
    ignore_index: int,
    counts: np.ndarray,
    report: Report,
) -> int:
    """Scan the hard (and soft) mask strip by strip; add class counts to ``counts`` and
    return the ignored pixel count."""
    ignored, bad_ids = 0, set()
    bad_at: tuple[int, int] | None = None
    non_integer_at = bad_at
    is_float = np.issubdtype(np.dtype(mask.dtype), np.floating)
    soft_check = _SoftCheck(soft, n_classes) if soft is not None else None
    strips = zip(raster_io.iter_strips(mask.path, mask), _soft_strips(soft), strict=False)
    for (row_off, strip), soft_item in strips:
        values = strip[0]
        if is_float:
            broken = ~np.isfinite(values) | (values != np.round(values))
            if broken.any() and non_integer_at is None:
                non_integer_at = first(broken, row_off)
            values = np.where(broken, ignore_index, values)
        values = values.astype(np.int64)
        ignore = values == ignore_index
        valid = (values >= 0) & (values < n_classes) & ~ignore
        ignored += int(ignore.sum())
        counts += np.bincount(values[valid], minlength=n_classes)[:n_classes]
        bad = ~(valid | ignore)
        if bad.any():
            bad_ids.update(np.unique(values[bad])[:10].tolist())
            bad_at = bad_at or first(bad, row_off)
        if soft_check is not None and soft_item is not None:
            soft_check.update(soft_item[1], ignore, row_off)

    if non_integer_at is not None:
        report("mask", mask.path, f"non-integer or NaN class ids (first at {at(non_integer_at)})")
    if bad_at is not None:
        ids = ", ".join(str(i) for i in sorted(bad_ids)[:10])
        report(
            "mask",
            mask.path,
            f"class id(s) {ids} outside 0..{n_classes - 1} (n_classes={n_classes}) and not "
            f"ignore_index={ignore_index}; first at {at(bad_at)}",
        )
    if soft_check is not None:
        soft_check.report(report)
    return ignored
