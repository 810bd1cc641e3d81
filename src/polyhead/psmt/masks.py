"""psmt's hard masks from a second CSV, merged into polyhead's ``image,mask,soft_mask`` CSV.

psmt trains a dual head from two CSVs: ``input_csv_path`` (``image,mask``, ``mask`` being the
soft mask) and ``hard_mask_csv`` (``image,mask``, ``mask`` being the hard mask). polyhead
reads one CSV whose rows carry ``image, mask (hard), soft_mask``. Rows are matched by image
path (psmt matched them by order); relative paths resolve against psmt's ``root_dir`` when
given, else against the CSV's folder, and are written absolute.
"""

from __future__ import annotations

import csv
import hashlib
import os
import tempfile
from pathlib import Path

from polyhead.errors import DataError

HEADER = ("image", "mask", "soft_mask")
#: folder (under the system temp folder) of the CSVs merged for `polyhead train`
CACHE_DIR = "polyhead-psmt"


def _resolve(cell: str, base: Path) -> str:
    path = Path(cell)
    return str(path if path.is_absolute() else (base / path).resolve())


def read_pairs(
    csv_path: str | os.PathLike, root_dir: str | os.PathLike | None = None
) -> list[tuple[int, str, str]]:
    """``(row number, image, mask)`` of a psmt ``image,mask`` CSV, paths resolved."""
    path = Path(csv_path)
    if not path.is_file():
        raise DataError(f"{path}: CSV file not found")
    base = Path(root_dir) if root_dir is not None else path.resolve().parent
    with path.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        columns = [c.strip() for c in reader.fieldnames or []]
        missing = [c for c in ("image", "mask") if c not in columns]
        if missing:
            raise DataError(
                f"{path}: missing column(s) {', '.join(missing)}; header is "
                f"{','.join(columns) or '(empty)'}, expected image,mask"
            )
        pairs = []
        for number, record in enumerate(reader, start=1):
            cells = {(k or "").strip(): (v or "").strip() for k, v in record.items()}
            if not cells["image"] or not cells["mask"]:
                raise DataError(f"{path}: row {number}: empty image or mask cell")
            pairs.append((number, _resolve(cells["image"], base), _resolve(cells["mask"], base)))
    if not pairs:
        raise DataError(f"{path}: the CSV has a header but no data rows")
    return pairs


def merge_hard_masks(
    soft_csv: str | os.PathLike,
    hard_csv: str | os.PathLike,
    root_dir: str | os.PathLike | None = None,
) -> list[tuple[str, str, str]]:
    """``(image, hard mask, soft mask)`` rows: each row of ``soft_csv`` with the hard mask of
    the ``hard_csv`` row naming the same image. A DataError names the first row without a
    match (either way) or an image listed twice."""
    soft = read_pairs(soft_csv, root_dir)
    hard = read_pairs(hard_csv, root_dir)
    by_image: dict[str, tuple[int, str]] = {}
    for number, image, mask in hard:
        if image in by_image:
            raise DataError(
                f"{hard_csv}: rows {by_image[image][0]} and {number} both name image {image}"
            )
        by_image[image] = (number, mask)
    rows, used = [], set()
    for number, image, soft_mask in soft:
        if image not in by_image:
            raise DataError(
                f"{soft_csv}: row {number} (image {image}) has no row in hard_mask_csv {hard_csv}"
            )
        if image in used:
            raise DataError(f"{soft_csv}: row {number} names image {image} a second time")
        used.add(image)
        rows.append((image, by_image[image][1], soft_mask))
    extra = [(n, image) for n, image, _ in hard if image not in used]
    if extra:
        number, image = extra[0]
        raise DataError(
            f"{hard_csv}: row {number} (image {image}) has no row in input_csv_path {soft_csv}"
            + (f" ({len(extra) - 1} more such rows)" if len(extra) > 1 else "")
        )
    return rows


def csv_text(rows: list[tuple[str, str, str]]) -> str:
    """The merged rows as polyhead CSV text (header ``image,mask,soft_mask``)."""
    lines = [",".join(HEADER)]
    lines += [",".join(_quote(cell) for cell in row) for row in rows]
    return "\n".join(lines) + "\n"


def _quote(cell: str) -> str:
    return f'"{cell.replace(chr(34), chr(34) * 2)}"' if any(c in cell for c in ',"\n') else cell


def cached_merge(
    soft_csv: str | os.PathLike,
    hard_csv: str | os.PathLike,
    root_dir: str | os.PathLike | None = None,
) -> Path:
    """The merged CSV in the system temp folder, named by its content (written once; every
    process of a run gets the same file)."""
    from polyhead.io import write_text

    text = csv_text(merge_hard_masks(soft_csv, hard_csv, root_dir))
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    path = Path(tempfile.gettempdir()) / CACHE_DIR / f"{Path(soft_csv).stem}-{digest}.csv"
    if not path.is_file():
        write_text(path, text)
    return path
