"""Paths written in CSV cells: ``~`` expanded, relative ones resolved against a base folder."""

from __future__ import annotations

from pathlib import Path


def resolve_cell(cell: str, base: Path) -> Path:
    """``cell`` as a path: ``~`` expanded; a relative path joined to ``base`` (the CSV's folder)."""
    path = Path(cell).expanduser()
    return path if path.is_absolute() else base / path
