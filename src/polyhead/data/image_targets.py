"""Image-level targets: one value or vector per image, for classification/regression heads.

``image_targets`` on a segmentation dataset maps a target key (the head's name) to where the
value comes from:

- ``{column: land_use, kind: class, classes: 5}``: an integer class id per row -> int64 ``[]``;
- ``{columns: [water, road], kind: binary}``: 0/1 labels -> float32 ``[n]``;
- ``{columns: [height]}`` or the column name alone: numbers (``kind: value``) -> float32 ``[n]``;
- ``{fraction_of: hard}``: computed from each crop, the share of every class among the
  crop's labelled pixels of its (augmented) hard mask -> float32 ``[n_classes]``.

CSV values describe the whole image and are given to every crop of it: right for properties
of the whole scene (its land-use class, the sensor's date), wrong for quantities that change
with the crop (the share of a class); for those use ``fraction_of`` or train on whole images
(``crop_size`` = image size). An empty cell means "no target": the item's
``present[key]`` is False, the target a placeholder (0) and the head skips the sample.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from polyhead.data.validation import REQUIRED_COLUMNS, CsvRow
from polyhead.errors import ConfigError, DataError
from polyhead.paths import open_csv

if TYPE_CHECKING:  # torch is imported where targets are made: check-data needs none of it
    import torch

KINDS = ("class", "binary", "value")
FRACTION_SOURCES = ("hard",)
_RESERVED = frozenset({"hard", "soft"})


@dataclass(frozen=True)
class ImageTargetSpec:
    """Where one image-level target comes from (see the module docstring)."""

    key: str
    columns: tuple[str, ...] = ()
    kind: str = "value"
    classes: int | None = None
    fraction_of: str | None = None

    @classmethod
    def from_config(cls, key: str, cfg: Any) -> ImageTargetSpec:
        """A spec from a column name or a mapping (``column``/``columns``, ``kind``,
        ``classes``, ``fraction_of``)."""
        where = f"image_targets.{key}"
        if key in _RESERVED:
            raise ConfigError(f"{where}: the key {key!r} is reserved for the masks")
        if isinstance(cfg, str):
            return cls(key, (cfg,))
        if not isinstance(cfg, Mapping):
            raise ConfigError(f"{where}: expected a column name or a mapping, got {cfg!r}")
        cfg = dict(cfg)
        unknown = sorted(set(cfg) - {"column", "columns", "kind", "classes", "fraction_of"})
        if unknown:
            raise ConfigError(f"{where}: unknown option(s) {unknown}")
        fraction = cfg.get("fraction_of")
        columns = [cfg["column"]] if "column" in cfg else list(cfg.get("columns") or [])
        if fraction is not None:
            if fraction not in FRACTION_SOURCES or columns:
                raise ConfigError(
                    f"{where}.fraction_of is {fraction!r}; valid: {list(FRACTION_SOURCES)}, "
                    "without column(s)"
                )
            return cls(key, (), "value", None, str(fraction))
        kind = str(cfg.get("kind", "value"))
        if kind not in KINDS:
            raise ConfigError(f"{where}.kind is {kind!r}; valid: {list(KINDS)}")
        if not columns:
            raise ConfigError(f"{where}: give column, columns or fraction_of")
        if kind == "class" and len(columns) != 1:
            raise ConfigError(f"{where}: kind class reads one column, got {columns}")
        classes = cfg.get("classes")
        return cls(key, tuple(map(str, columns)), kind, None if classes is None else int(classes))


def _parse(spec: ImageTargetSpec, cells: list[str], where: str) -> np.ndarray:
    """One row's cells as the target array; raises DataError naming the bad cell."""
    values = []
    for column, cell in zip(spec.columns, cells, strict=True):
        try:
            value = float(cell)
        except ValueError:
            raise DataError(f"{where}: {column} is {cell!r}, not a number") from None
        if not math.isfinite(value):
            raise DataError(f"{where}: {column} is {cell!r}, not a finite number")
        if spec.kind == "binary" and value not in (0.0, 1.0):
            raise DataError(f"{where}: {column} is {cell!r}; a binary label is 0 or 1")
        if spec.kind == "class":
            top = spec.classes
            if value != int(value) or value < 0 or (top is not None and value >= top):
                limit = f" in [0, {top})" if top is not None else " >= 0"
                raise DataError(f"{where}: {column} is {cell!r}; a class id is an integer{limit}")
        values.append(value)
    if spec.kind == "class":
        return np.asarray(int(values[0]), dtype=np.int64)
    return np.asarray(values, dtype=np.float32)


class ImageTargets:
    """Every row's image-level targets, read and checked at construction.

    Raises ``DataError`` naming the CSV, row and column for a missing column, a value that
    is not a number (or not 0/1, or not a class id in range), or a row where some columns of
    one target are filled and others empty.
    """

    def __init__(
        self, csv_path: Path, rows: list[CsvRow], specs: Mapping[str, Any], n_classes: int
    ) -> None:
        if not isinstance(specs, Mapping) or not specs:
            raise ConfigError(f"image_targets must be a non-empty mapping, got {specs!r}")
        self.specs = [ImageTargetSpec.from_config(str(k), v) for k, v in specs.items()]
        self.n_classes, self.n_rows = n_classes, len(rows)
        from polyhead.data.extra_targets import read_columns

        columns = sorted({c for s in self.specs for c in s.columns})
        records = read_columns(csv_path, columns, "image_targets") if columns else []
        self.values: dict[str, list[np.ndarray | None]] = {}
        for spec in self.specs:
            if spec.fraction_of is not None:
                continue
            per_row: list[np.ndarray | None] = []
            for row in rows:
                where = f"{csv_path}: row {row.number} (image {row.image.name})"
                cells = [records[row.number - 1].get(c, "") for c in spec.columns]
                filled = [bool(c) for c in cells]
                if not any(filled):
                    per_row.append(None)
                elif not all(filled):
                    empty = [c for c, f in zip(spec.columns, filled, strict=True) if not f]
                    raise DataError(
                        f"{where}: image_targets.{spec.key}: empty {', '.join(empty)} while "
                        "other columns of this target are filled; fill all or none"
                    )
                else:
                    per_row.append(_parse(spec, cells, where))
            if all(v is None for v in per_row):
                raise DataError(
                    f"{csv_path}: image_targets.{spec.key}: every cell of "
                    f"{', '.join(spec.columns)} is empty"
                )
            self.values[spec.key] = per_row

    @property
    def keys(self) -> list[str]:
        return [s.key for s in self.specs]

    def counts(self) -> dict[str, tuple[int, int]]:
        """``{key: (rows with a target, rows without)}`` (``fraction_of`` targets: all rows)."""
        out = {}
        for spec in self.specs:
            values = self.values.get(spec.key)
            if values is None:
                out[spec.key] = (self.n_rows, 0)
            else:
                have = sum(v is not None for v in values)
                out[spec.key] = (have, len(values) - have)
        return out

    def read(
        self, image: int, hard: torch.Tensor, ignore_index: int
    ) -> tuple[dict[str, torch.Tensor], dict[str, bool]]:
        """Row ``image``'s targets and presence flags; ``hard`` is the crop's augmented mask."""
        import torch

        targets, present = {}, {}
        for spec in self.specs:
            if spec.fraction_of is not None:
                targets[spec.key], present[spec.key] = self.fractions(hard, ignore_index)
                continue
            value = self.values[spec.key][image]
            present[spec.key] = value is not None
            if value is None:
                dtype = np.int64 if spec.kind == "class" else np.float32
                shape = () if spec.kind == "class" else (len(spec.columns),)
                value = np.zeros(shape, dtype=dtype)
            targets[spec.key] = torch.from_numpy(value)
        return targets, present

    def fractions(self, hard: torch.Tensor, ignore_index: int) -> tuple[torch.Tensor, bool]:
        """Share of each class among the labelled pixels of ``hard``; (zeros, False) if none."""
        import torch

        labelled = hard[hard != ignore_index].reshape(-1)
        if labelled.numel() == 0:
            return torch.zeros(self.n_classes), False
        counts = torch.bincount(labelled.long(), minlength=self.n_classes)[: self.n_classes]
        return counts.float() / labelled.numel(), True


def column_counts(csv_path: str | Path) -> dict[str, tuple[int, int]]:
    """``{column: (rows with a value, rows without)}`` for every column but image and mask."""
    with open_csv(Path(csv_path)) as fh:
        records = [
            {(k or "").strip(): (v or "").strip() for k, v in r.items() if k}
            for r in csv.DictReader(fh)
        ]
    columns = [c for c in (records[0] if records else {}) if c not in REQUIRED_COLUMNS]
    have = {c: sum(bool(r.get(c)) for r in records) for c in columns}
    return {c: (have[c], len(records) - have[c]) for c in columns}
