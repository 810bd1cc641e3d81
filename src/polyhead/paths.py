"""Paths written in CSV cells: ``~`` expanded, relative ones resolved against a base folder;
and the one way polyhead opens a CSV for reading."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TextIO

#: CSVs are read as UTF-8; a byte-order mark (spreadsheet exports) is dropped
CSV_ENCODING = "utf-8-sig"


def open_csv(path: str | os.PathLike[str]) -> TextIO:
    """Open a CSV for `csv.reader`/`csv.DictReader`: UTF-8 with or without a BOM, no newline
    translation. Every CSV reader in polyhead goes through this."""
    return open(path, newline="", encoding=CSV_ENCODING)


def resolve_cell(cell: str, base: Path) -> Path:
    """``cell`` as a path: ``~`` expanded; a relative path joined to ``base`` (the CSV's folder)."""
    path = Path(cell).expanduser()
    return path if path.is_absolute() else base / path
