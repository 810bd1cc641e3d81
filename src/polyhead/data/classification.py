"""Image classification data from a CSV, with one label per named head.

The CSV lists ``path,label`` (relative paths resolve against the CSV's folder or ``root``):
either with that header, or without a header as in the two-headed-classifier article (first
column the image, second the class id). More columns need a header, e.g.
``path,screen,other`` with one column per head. Each head's label comes from a rule:

- ``{"from": "label", "positive": [2]}``: binary, 1 when the class id is in ``positive``;
- ``{"from": "label", "map": {0: 0, 1: 1, 2: 1}}``: class id -> head class (-1 or null: missing);
- ``{"from": "label"}``: the class id itself (a K-class head);
- ``{"column": "screen"}`` (or just ``"screen"``): that column's integer value.

An empty cell is a missing label (-1): it is masked out of that head's loss and metrics.
Images are read with PIL, EXIF orientation applied, converted to RGB, resized to
``image_size`` and normalised. With ``validate=True`` every row is checked before training
(file present, image decodable, labels known); all problems found are raised as one
``DataError`` naming the rows.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset

from polyhead.data.loader import loader_options, make_loader
from polyhead.errors import ConfigError, DataError
from polyhead.paths import open_csv, resolve_cell

MISSING = -1
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MAX_PROBLEMS = 20


@dataclass(frozen=True)
class HeadRule:
    """How one head's label is read from a CSV row."""

    name: str
    column: str
    num_classes: int
    positive: frozenset[int] | None = None
    mapping: Mapping[int, int] | None = None

    @classmethod
    def from_config(cls, name: str, spec: Any, classes: int | None) -> HeadRule:
        """Parse one ``heads`` entry (see the module docstring)."""
        if isinstance(spec, str):
            spec = {"column": spec}
        if not isinstance(spec, Mapping):
            raise ConfigError(f"heads.{name}: expected a mapping, got {spec!r}")
        spec = dict(spec)
        unknown = set(spec) - {"from", "column", "positive", "map", "num_classes"}
        if unknown or ("from" in spec) == ("column" in spec):
            raise ConfigError(
                f"heads.{name}: give either 'from' (with 'positive' or 'map') or 'column', "
                f"plus optional 'num_classes'; got keys {sorted(spec)}"
            )
        column = str(spec.get("from", spec.get("column")))
        if "column" in spec and ("positive" in spec or "map" in spec):
            raise ConfigError(f"heads.{name}: 'positive'/'map' go with 'from', not 'column'")
        positive = mapping = None
        if spec.get("positive") is not None:
            values = spec["positive"]
            values = [values] if isinstance(values, int) else list(values)
            positive, n = frozenset(int(v) for v in values), 2
        elif spec.get("map") is not None:
            mapping = {int(k): (MISSING if v is None else int(v)) for k, v in spec["map"].items()}
            n = max(mapping.values()) + 1
        elif "from" in spec:
            n = spec.get("num_classes", classes)
            if n is None:
                raise ConfigError(f"heads.{name}: a class-id head needs the dataset's 'classes'")
        else:
            n = 2
        n = int(spec.get("num_classes", n))
        return cls(name, column, n, positive, mapping)

    def label(self, cell: str) -> int:
        """The head's label for one CSV cell; raises ``ValueError`` for an unknown value."""
        cell = cell.strip()
        if cell == "":
            return MISSING
        try:
            number = float(cell)
        except ValueError:
            number = 0.5
        if not number.is_integer():
            raise ValueError(f"{self.column}={cell!r} is not an integer")
        value = int(number)
        if value == MISSING:
            return MISSING
        if self.positive is not None:
            return int(value in self.positive)
        if self.mapping is not None:
            if value not in self.mapping:
                raise ValueError(f"unknown {self.column} {value} (known: {sorted(self.mapping)})")
            return self.mapping[value]
        if not 0 <= value < self.num_classes:
            raise ValueError(f"unknown {self.column} {value} (expected 0..{self.num_classes - 1})")
        return value


@dataclass(frozen=True)
class ClassificationRow:
    """One parsed CSV data row."""

    number: int  # 1-based data row, header not counted
    path: Path
    labels: tuple[int, ...]  # per head, in head order; -1 = missing


def read_rows(
    csv_path: Path,
    rules: Sequence[HeadRule],
    root: Path | None,
    classes: int | None,
) -> tuple[list[ClassificationRow], list[str]]:
    """Parse the CSV into rows; returns (good rows, problem lines naming bad rows)."""
    if not csv_path.is_file():
        raise DataError(f"{csv_path}: CSV file not found")
    base = root if root is not None else csv_path.resolve().parent
    with open_csv(csv_path) as fh:
        records = [r for r in csv.reader(fh) if any(c.strip() for c in r)]
    if not records:
        raise DataError(f"{csv_path}: the CSV is empty")
    header = [c.strip() for c in records[0]]
    if header[0] == "path":
        records = records[1:]
    else:
        header = ["path", "label"] + [f"column{i}" for i in range(2, len(header))]
    needed = {r.column for r in rules} | ({"label"} if classes else set())
    absent = sorted(needed - set(header))
    if absent:
        raise DataError(
            f"{csv_path}: no column(s) {', '.join(absent)}; header is {','.join(header)} "
            "(a CSV without header has the columns path,label)"
        )
    index = {name: i for i, name in enumerate(header)}
    check_label = HeadRule("label", "label", classes) if classes else None
    rows, problems = [], []
    for number, record in enumerate(records, start=1):
        cells = [c.strip() for c in record] + [""] * (len(header) - len(record))
        where = f"row {number} ({cells[0] or 'no path'})"
        if not cells[0]:
            problems.append(f"{where}: empty path cell")
            continue
        path = resolve_cell(cells[0], base)
        try:
            if check_label is not None:
                check_label.label(cells[index["label"]])
            labels = tuple(r.label(cells[index[r.column]]) for r in rules)
        except ValueError as err:
            problems.append(f"{where}: {err}")
            continue
        rows.append(ClassificationRow(number, path, labels))
    if not rows and not problems:
        raise DataError(f"{csv_path}: the CSV has no data rows")
    return rows, problems


def load_image(path: str | os.PathLike, size: int | tuple[int, int]) -> Image.Image:
    """Open an image, apply its EXIF orientation, convert to RGB and resize (bilinear)."""
    hw = (size, size) if isinstance(size, int) else tuple(size)
    with Image.open(path) as im:
        im.draft("RGB", (hw[1], hw[0]))  # JPEG: decode at reduced size when possible
        im = ImageOps.exif_transpose(im).convert("RGB")
    return im.resize((hw[1], hw[0]), Image.Resampling.BILINEAR)


def to_tensor(image: Image.Image, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """``[3, H, W]`` float32, scaled to 0..1 and normalised."""
    x = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)
    x = x.view(image.height, image.width, 3).permute(2, 0, 1).float().div_(255.0)
    m = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
    return (x - m) / s


def _build_transforms(augmentation_list: Any) -> list[Callable[[Image.Image], Image.Image]]:
    """Check that every augmentation is a built callable (configs are built by the app layer)."""
    if not augmentation_list:
        return []
    out = []
    for i, item in enumerate(augmentation_list):
        if isinstance(item, Mapping):
            raise ConfigError(
                f"augmentation_list[{i}]: got the config {dict(item).get('_target_', item)!r}; "
                "pass a built transform (polyhead.config.build instantiates a config)"
            )
        if not callable(item):
            raise ConfigError(f"augmentation_list[{i}]: {item!r} is not callable")
        out.append(item)
    return out


class ClassificationCSVDataset(Dataset):
    """Images and per-head labels from a CSV; items are
    ``{"image": float32 [3, H, W], "targets": {head: int64 scalar}, "index": int}``.

    Args:
        input_csv_path: the CSV (see the module docstring).
        heads: ``{head: rule}``, rules as in the module docstring.
        image_size: output size, an int (square) or ``[H, W]``.
        classes: number of class ids in the ``label`` column; when given, ids outside
            ``0..classes-1`` are rejected as unknown labels.
        augmentation_list: built PIL-image transforms (e.g. a
            ``torchvision.transforms.RandomRotation``) applied after resizing.
        mean, std: normalisation (ImageNet by default).
        root: folder that relative paths resolve against (default: the CSV's folder).
        data_loader: ``torch.utils.data.DataLoader`` options for :meth:`make_loader`.
        validate: check every row (file, decodable image, labels) now, before training.
    """

    ignore_index = MISSING  # read by polyhead.train.build_task: the "missing label" value

    def __init__(
        self,
        input_csv_path: str | os.PathLike,
        heads: Mapping[str, Any],
        image_size: int | Sequence[int] = 224,
        classes: int | None = None,
        augmentation_list: Any = None,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        root: str | os.PathLike | None = None,
        data_loader: Any = None,
        validate: bool = True,
    ) -> None:
        if not heads:
            raise ConfigError(
                "heads: give at least one head rule, e.g. {screen: {from: label, positive: [2]}}"
            )
        self.csv_path = Path(input_csv_path)
        self.rules = [HeadRule.from_config(str(n), s, classes) for n, s in dict(heads).items()]
        self.head_names = [r.name for r in self.rules]
        self.num_classes = {r.name: r.num_classes for r in self.rules}
        size = image_size if isinstance(image_size, int) else tuple(int(v) for v in image_size)
        if isinstance(size, tuple) and len(size) != 2:
            raise ConfigError(f"image_size must be an int or [H, W], got {image_size!r}")
        self.image_size = size
        self.mean, self.std = tuple(mean), tuple(std)
        self.transforms = _build_transforms(augmentation_list)
        self.loader_options = loader_options(data_loader)
        root_path = Path(root) if root is not None else None
        self.rows, problems = read_rows(self.csv_path, self.rules, root_path, classes)
        if validate:
            problems += self._check_images()
        if problems:
            more = f" (first {MAX_PROBLEMS} shown)" if len(problems) > MAX_PROBLEMS else ""
            raise DataError(
                "\n".join(
                    [
                        f"{self.csv_path}: {len(problems)} bad row(s){more}; rows count from 1 after "
                        "the header:",
                        *(f"  - {p}" for p in problems[:MAX_PROBLEMS]),
                    ]
                )
            )

    def _check_images(self) -> list[str]:
        problems = []
        for row in self.rows:
            where = f"row {row.number} ({row.path})"
            if not row.path.is_file():
                problems.append(f"{where}: file not found")
                continue
            try:
                with Image.open(row.path) as im:
                    im.verify()
            except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
                problems.append(f"{where}: unreadable image ({err})")
        return problems

    def __len__(self) -> int:
        return len(self.rows)

    def labels(self, head: str) -> torch.Tensor:
        """All labels of one head (int64, -1 = missing), in row order."""
        i = self.head_names.index(head)
        return torch.tensor([row.labels[i] for row in self.rows], dtype=torch.int64)

    def __getitem__(self, index: int) -> dict[str, Any]:
        row = self.rows[index]
        try:
            image = load_image(row.path, self.image_size)
        except (OSError, ValueError) as err:
            raise DataError(f"{self.csv_path}: row {row.number} ({row.path}): {err}") from err
        for transform in self.transforms:
            image = transform(image)
        targets = {
            name: torch.tensor(label, dtype=torch.int64)
            for name, label in zip(self.head_names, row.labels, strict=True)
        }
        return {"image": to_tensor(image, self.mean, self.std), "targets": targets, "index": index}

    def make_loader(self, **overrides: Any) -> DataLoader:
        """A DataLoader with the ``data_loader`` options given at construction (``overrides``
        win); see `polyhead.data.loader.make_loader`."""
        return make_loader(self, self.loader_options, **overrides)
