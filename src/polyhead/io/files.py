"""Text, CSV, JSON and figure files written through `polyhead.io.atomic.atomic_write`.

Each helper creates the parent folder, returns the final path and raises `WriteError` (naming
that path) when writing fails; nothing is then left under the path or beside it.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from polyhead.io.atomic import PathLike, Verify, WriteError, atomic_write, write_error


def _not_empty(tmp: Path) -> bool:
    return tmp.stat().st_size > 0


def _write(path: PathLike, fill: Callable[[Path], None], verify: Verify | None) -> Path:
    """Run ``fill(tmp)``; an OSError there becomes a `WriteError` naming ``path``."""
    path = Path(path)
    try:
        with atomic_write(path, verify) as tmp:
            fill(tmp)
    except WriteError:
        raise
    except OSError as exc:
        raise write_error(path, exc) from exc
    return path


def write_bytes(path: PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (the written size is checked)."""

    def fill(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            fh.write(data)

    return _write(path, fill, lambda tmp: tmp.stat().st_size == len(data))


def write_text(path: PathLike, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically, without newline translation."""
    return write_bytes(path, text.encode(encoding))


def write_json(path: PathLike, obj: Any, indent: int | None = 2) -> Path:
    """Write ``obj`` as JSON (indented, with a final newline) atomically."""
    return write_text(path, json.dumps(obj, indent=indent) + "\n")


def write_csv(path: PathLike, header: Sequence[Any], rows: Iterable[Sequence[Any]]) -> Path:
    """Write a CSV with a header line atomically; ``rows`` may be a generator."""

    def fill(tmp: Path) -> None:
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(header)
            writer.writerows(rows)

    return _write(path, fill, _not_empty)


def save_figure(fig: Any, path: PathLike, **savefig_kwargs: Any) -> Path:
    """``fig.savefig`` (a matplotlib Figure) to ``path`` atomically.

    The format defaults to ``path``'s suffix (the temp name has none matplotlib knows).
    """
    path = Path(path)
    savefig_kwargs.setdefault("format", path.suffix.lstrip(".").lower() or "png")
    return _write(path, lambda tmp: fig.savefig(tmp, **savefig_kwargs), _not_empty)
