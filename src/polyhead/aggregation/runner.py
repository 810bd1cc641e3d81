"""Where the per-image tasks of mask aggregation run: threads here, or a Dask cluster.

`make_runner` returns an object with ``map(fn, items, description, **shared)``, which calls
``fn(item, **shared)`` for every item and returns the results in input order (``shared``
values go to each Dask worker once, not with every task), showing progress
(images/s) as tasks complete. Threads suffice on one machine (GDAL and numpy release the
GIL while decoding, encoding and looking up); ``scheduler`` hands the tasks to
``dask.distributed``: an address (``tcp://host:8786``) or ``local:N`` (a LocalCluster of N
worker processes, one thread each). Dask is imported only then.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import contextmanager
from functools import partial
from typing import Any, TypeVar

from polyhead.errors import ConfigError

T = TypeVar("T")
R = TypeVar("R")
DASK_HINT = "pip install 'polyhead[distributed]'"


@contextmanager
def _progress(description: str, total: int, enabled: bool) -> Iterator[Callable[[], None]]:
    """Yield ``advance()``; a rich bar with images/s when enabled."""
    if not enabled:
        yield lambda: None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]} images/s"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=Console(stderr=True), transient=False) as bar:
        task = bar.add_task(description, total=total, rate="-")

        def advance() -> None:
            bar.advance(task)
            elapsed = bar.tasks[task].elapsed or 0.0
            done = bar.tasks[task].completed
            bar.update(task, rate=f"{done / elapsed:.1f}" if elapsed > 0 else "-")

        yield advance


class LocalRunner:
    """Runs tasks in a thread pool of ``workers`` threads (1: in this thread)."""

    def __init__(self, workers: int, progress: bool = True) -> None:
        self.workers = max(1, int(workers))
        self.progress = progress

    def map(
        self, fn: Callable[..., R], items: Sequence[T], description: str, **shared: Any
    ) -> list[R]:
        """``[fn(x, **shared) for x in items]``, in parallel, in input order."""
        fn = partial(fn, **shared) if shared else fn
        out: list[Any] = [None] * len(items)
        with _progress(description, len(items), self.progress) as advance:
            if self.workers == 1:
                for i, item in enumerate(items):
                    out[i] = fn(item)
                    advance()
                return out
            with ThreadPoolExecutor(self.workers) as pool:
                futures = {pool.submit(fn, item): i for i, item in enumerate(items)}
                try:
                    for fut in as_completed(futures):
                        out[futures[fut]] = fut.result()
                        advance()
                except BaseException:
                    for fut in futures:
                        fut.cancel()
                    raise
        return out

    def close(self) -> None:
        """Nothing to release."""


class DaskRunner:
    """Runs tasks on a ``dask.distributed`` cluster; the driver only sums and fits."""

    def __init__(self, scheduler: str, progress: bool = True) -> None:
        try:
            from dask.distributed import Client, LocalCluster
        except ImportError as err:
            raise ConfigError(
                f"--scheduler needs dask.distributed, which is not installed: {DASK_HINT}"
            ) from err
        self.progress = progress
        self._cluster = None
        if scheduler.startswith("local:"):
            n = _local_workers(scheduler)
            self._cluster = LocalCluster(
                n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None
            )
            self.client = Client(self._cluster)
        else:
            self.client = Client(scheduler)

    def map(
        self, fn: Callable[..., R], items: Sequence[T], description: str, **shared: Any
    ) -> list[R]:
        """``[fn(x, **shared) for x in items]`` as Dask tasks, in input order."""
        from dask.distributed import as_completed as dask_completed

        sent = {k: self.client.scatter(v, broadcast=True) for k, v in shared.items()}
        futures = self.client.map(fn, list(items), pure=False, **sent)
        index = {f.key: i for i, f in enumerate(futures)}
        out: list[Any] = [None] * len(items)
        with _progress(description, len(items), self.progress) as advance:
            try:
                for fut in dask_completed(futures):
                    out[index[fut.key]] = fut.result()
                    advance()
            except BaseException:
                self.client.cancel(futures)
                raise
        return out

    def close(self) -> None:
        """Close the client (and the LocalCluster it started)."""
        self.client.close()
        if self._cluster is not None:
            self._cluster.close()


def _local_workers(scheduler: str) -> int:
    text = scheduler.removeprefix("local:")
    if not text.isdigit() or int(text) < 1:
        raise ConfigError(f"scheduler {scheduler!r}: expected local:N with N >= 1 workers")
    return int(text)


def default_workers() -> int:
    """Threads for a local run: twice the CPUs this process may use (fsync and disk waits
    overlap with the other threads' work), at most 4 (memory: one image strip each)."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        n = os.cpu_count() or 1
    return max(1, min(4, 2 * n))


def make_runner(
    scheduler: str | None, workers: int | None, progress: bool
) -> LocalRunner | DaskRunner:
    """A `DaskRunner` for ``scheduler`` (address or ``local:N``), else a `LocalRunner`."""
    if scheduler:
        if scheduler.startswith("local:"):
            _local_workers(scheduler)  # a bad value fails before dask is imported
        return DaskRunner(scheduler, progress)
    return LocalRunner(default_workers() if workers is None else workers, progress)
