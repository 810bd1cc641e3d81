"""The per-image work of mask aggregation: pass 1 (pattern counts) and pass 2 (outputs).

Both are plain functions of picklable arguments, so the same code runs in a thread of
this process or as a Dask task on another machine (`polyhead.aggregation.runner`). Pass 1
maps an image to its table of label-pattern counts; the tables are summed and EM runs on
the sum; pass 2 maps an image and the fitted lookup table (pattern -> posterior) to its
soft and hard masks.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from polyhead.aggregation.inputs import ImageEntry, MaskReader
from polyhead.aggregation.patterns import PatternCodec, merge_counts
from polyhead.data import raster_io
from polyhead.errors import DataError
from polyhead.io import AtomicGeoTiff, BlockRows, geotiff_profile

HARD_IGNORE = 255
SOFT_DTYPES = ("float32", "uint8")


@dataclass(frozen=True)
class PassContext:
    """What a worker needs to read an image's masks (shipped with every task)."""

    csv_path: Path
    n_slots: int
    n_classes: int
    ignore_index: int

    def reader(self) -> MaskReader:
        """A reader with its own file handles (one per task: tasks may run in threads)."""
        return MaskReader(self.csv_path, self.n_slots, self.n_classes, self.ignore_index)


@dataclass
class ImageCounts:
    """Pass-1 result of one image."""

    codes: np.ndarray
    """Sorted distinct codes of the labelled patterns (int64)."""
    counts: np.ndarray
    """Pixels per code (int64)."""
    unlabelled: int
    """Pixels nobody labelled."""
    pixel_codes: np.ndarray | None = None
    """Every pixel's code, kept for pass 2 when asked (saves reading the masks again)."""
    georef: tuple[Any, Any] = (None, None)
    """CRS and transform of the image's first mask, for its outputs."""

    @property
    def labelled(self) -> int:
        """Labelled pixels of the image."""
        return int(self.counts.sum())


def strips(entry: ImageEntry) -> list[tuple[int, int]]:
    """``(row_off, rows)`` full-width strips of about a million pixels covering the image."""
    rows = raster_io.strip_rows(entry.height, entry.width)
    return [(off, min(rows, entry.height - off)) for off in range(0, entry.height, rows)]


def _small_codes(codes: np.ndarray, codec: PatternCodec) -> np.ndarray:
    if codec.packed and codec.n_codes <= 1 << 16:
        return codes.astype(np.uint16)
    if codec.packed and codec.n_codes <= 1 << 31:
        return codes.astype(np.int32)
    return codes


def count_image(
    ctx: PassContext, codec: PatternCodec, entry: ImageEntry, keep_codes: bool = False
) -> ImageCounts:
    """Pass 1 for one image: its labelled pattern codes and their pixel counts."""
    reader = ctx.reader()
    try:
        parts, kept = [], []
        for off, h in strips(entry):
            codes = codec.encode(reader.stack(entry, off, h))
            parts.append(codec.count(codes))
            if keep_codes:
                kept.append(_small_codes(codes, codec))
        georef = reader.georef(entry)  # its file is open now
    finally:
        reader.cache.close()
    codes, counts = merge_counts(parts) if len(parts) > 1 else parts[0]
    keep = codes != codec.all_missing
    return ImageCounts(
        codes=codes[keep],
        counts=counts[keep],
        unlabelled=int(counts[~keep].sum()),
        pixel_codes=np.concatenate(kept) if keep_codes else None,
        georef=georef,
    )


@dataclass
class LookupTable:
    """Pattern -> output values for pass 2 (one per data set, or per image)."""

    codes: np.ndarray
    """Sorted codes (int64, ``[P]``)."""
    soft: np.ndarray
    """``[K, P + 1]`` soft values in the output dtype; the last column (zeros) is for
    pixels nobody labelled."""
    hard: np.ndarray
    """``[P + 1]`` uint8 class ids; the last is `HARD_IGNORE`."""
    dense_index: np.ndarray | None = None
    """``code -> column`` for every possible code when they are few (``-1``: unseen)."""

    @classmethod
    def build(
        cls,
        codes: np.ndarray,
        posteriors: np.ndarray,
        hard: np.ndarray,
        soft_dtype: str,
        n_codes: int | None,
    ) -> LookupTable:
        """From codes ``[P]``, posteriors ``[P, K]`` and hard labels ``[P]`` (-1: none)."""
        k = posteriors.shape[1]
        post = np.concatenate([posteriors, np.zeros((1, k))]).T
        if soft_dtype == "uint8":
            soft = np.round(post * 255.0).astype(np.uint8)
        else:
            soft = post.astype(np.float32)
        hard_ext = np.append(np.where(hard < 0, HARD_IGNORE, hard), HARD_IGNORE).astype(np.uint8)
        dense = None
        if n_codes is not None and n_codes <= 1 << 22:
            dense = np.full(n_codes, -1, np.int32)
            dense[codes] = np.arange(codes.size, dtype=np.int32)
        return cls(np.ascontiguousarray(codes), np.ascontiguousarray(soft), hard_ext, dense)

    def index(self, codes: np.ndarray) -> np.ndarray:
        """Column of each code (``-1`` for codes not in the table)."""
        if self.dense_index is not None:
            return self.dense_index[codes]
        if self.codes.size == 0:
            return np.full(codes.size, -1, np.int64)
        idx = np.minimum(np.searchsorted(self.codes, codes), self.codes.size - 1)
        return np.where(self.codes[idx] == codes, idx, -1)


def _profiles(
    entry: ImageEntry, georef: tuple[Any, Any], k: int, soft_dtype: str
) -> tuple[dict, dict]:
    crs, transform = georef
    h, w = entry.height, entry.width
    soft = geotiff_profile(h, w, k, soft_dtype, crs, transform)
    hard = geotiff_profile(h, w, 1, "uint8", crs, transform)
    hard["nodata"] = HARD_IGNORE
    # posteriors take few distinct values: no predictor and a fast codec (zstd level 1 for
    # floats, deflate level 1 for bytes) write 8x quicker than predictor=3 and smaller files
    for profile in (soft, hard):
        profile.update(predictor=1, zlevel=1)
    if soft_dtype == "float32":
        soft.update(compress="zstd", zstd_level=1)
        soft.pop("zlevel")
    return soft, hard


def write_image(
    ctx: PassContext,
    codec: PatternCodec,
    entry: ImageEntry,
    table: LookupTable,
    paths: tuple[Path, Path],
    soft_dtype: str = "float32",
    pixel_codes: np.ndarray | None = None,
    georef: tuple[Any, Any] | None = None,
) -> None:
    """Pass 2 for one image: each pixel's posterior (a table lookup) into the soft mask
    ``paths[0]`` (K bands) and its argmax into the hard mask ``paths[1]`` (uint8, 255: no
    label), strip by strip, with the georeferencing of the image's first mask (``georef``,
    else read from it); ``pixel_codes`` (from pass 1) spare reading the masks again."""
    reader = ctx.reader()
    k, w = table.soft.shape[0], entry.width
    none, last = codec.all_missing, table.soft.shape[1] - 1
    georef = reader.georef(entry) if georef is None else georef
    soft_profile, hard_profile = _profiles(entry, georef, k, soft_dtype)
    try:
        with (
            AtomicGeoTiff(paths[0], soft_profile) as soft_out,
            AtomicGeoTiff(paths[1], hard_profile) as hard_out,
        ):
            # whole block rows: GDAL compresses them as they are written, not at the close
            soft_rows = BlockRows(soft_out.write, soft_profile["blockysize"], entry.height)
            hard_rows = BlockRows(hard_out.write, hard_profile["blockysize"], entry.height)
            start = 0
            for off, rows in strips(entry):
                if pixel_codes is None:
                    codes = codec.encode(reader.stack(entry, off, rows))
                else:
                    codes = pixel_codes[start : start + rows * w]
                    start += rows * w
                idx = table.index(codes)
                missing = idx < 0
                if missing.any():
                    if np.any(codes[missing] != none):
                        raise DataError(
                            f"{entry.rows[0].where(ctx.csv_path)}: masks of image "
                            f"{entry.key!r} changed while aggregating (label pattern unseen "
                            "in pass 1)"
                        )
                    idx[missing] = last
                soft_rows.add(np.take(table.soft, idx, axis=1).reshape(k, rows, w), off)
                hard_rows.add(table.hard[idx].reshape(1, rows, w), off)
            soft_rows.flush(), hard_rows.flush()
            soft_out.commit()
            hard_out.commit()
    finally:
        reader.cache.close()
