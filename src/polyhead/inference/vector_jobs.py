"""Polygonising finished class maps beside them, at once or in worker processes.

``predict --vector`` polygonises each class map once it is written. One process polygonises
7-10 MP/s (`benchmarks/results/polygonize_cpu.md`), well below a GPU's prediction, and
rasterio's ``shapes`` holds the GIL, so threads do not help. `VectorJobs` hands the class
maps to spawned worker processes instead, which import this module and
`polyhead.inference.vector` only (no torch), while the caller predicts the next files.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from polyhead.classes import ClassTable

if TYPE_CHECKING:
    from polyhead.inference.vector import VectorResult


def polygonize_beside(
    class_map: Path,
    classes: ClassTable | None = None,
    min_area: float = 0.0,
    simplify: float = 0.0,
) -> VectorResult:
    """The polygons of ``<stem>_classes.tif`` (or ``.vrt``) in ``<stem>_classes.gpkg``
    beside it (`polyhead.inference.vector.polygonize_raster`)."""
    from polyhead.inference.vector import polygonize_raster

    stem = class_map.name.removesuffix(class_map.suffix).removesuffix("_classes")
    out = class_map.with_name(f"{stem}_classes.gpkg")
    return polygonize_raster(
        class_map, out_path=out, classes=classes, min_area=min_area, simplify=simplify
    )


class VectorJobs:
    """``write(class_map)`` for each class map handed in (``jobs(path)``): at once with no
    ``workers``, else queued to that many spawned processes. `wait` returns once every
    queued one is done and raises the first error; `close` stops the workers. ``write``
    must pickle (a module-level function or a ``functools.partial`` of one)."""

    def __init__(self, write: Callable[[Path], Any], workers: int = 0) -> None:
        self.write, self.workers = write, workers
        self._pool: ProcessPoolExecutor | None = None
        self._queued: list[Future] = []

    def __call__(self, class_map: Path) -> None:
        if not self.workers:
            self.write(class_map)
            return
        if self._pool is None:  # started on the first class map: none without vectors
            spawn = multiprocessing.get_context("spawn")  # never fork the torch process
            self._pool = ProcessPoolExecutor(self.workers, mp_context=spawn)
        self._queued.append(self._pool.submit(self.write, class_map))

    def wait(self) -> None:
        """Block until every queued class map is polygonised; raise the first error."""
        queued, self._queued = self._queued, []
        errors = [f.exception() for f in queued]
        for error in errors:
            if error is not None:
                raise error

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def __enter__(self) -> VectorJobs:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
