"""Reads and writes beside the compute: a background reader and a background writer.

Both use a bounded queue (memory stays a few chunks) and hand an error in their thread to
the caller: `prefetch` re-raises it where the next item is taken, `BackgroundWriter` on the
next `put` or on `close`. Leaving either early stops its thread and waits for it, so no file
is touched after the caller has moved on (the writers' commit-at-end keeps holding).
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import suppress
from dataclasses import dataclass
from types import TracebackType
from typing import Any, TypeVar

T = TypeVar("T")
_POLL_S = 0.05


@dataclass
class Waits:
    """Seconds the compute thread spent waiting: for the reader (``read``: the next chunk
    was not ready), for the writer (``write``: its queue was full, or it was finishing
    after the last block), and closing, checking and renaming the files (``commit``).
    Large ``read`` or ``write`` say the disk, not the model, sets the pace."""

    read: float = 0.0
    write: float = 0.0
    commit: float = 0.0


def _put(q: queue.Queue[Any], item: Any, stop: threading.Event) -> bool:
    """Put ``item`` unless ``stop`` is set first; whether it was put."""
    while not stop.is_set():
        try:
            q.put(item, timeout=_POLL_S)
            return True
        except queue.Full:
            continue
    return False


def prefetch(items: Iterator[T], depth: int = 2, waits: Waits | None = None) -> Iterator[T]:
    """Iterate ``items`` in a background thread, up to ``depth`` items ahead.

    An exception raised by ``items`` is raised here, at the item it replaced. Closing this
    generator stops the thread (and closes ``items``) before returning. ``waits.read``
    adds up the time spent waiting for an item.
    """
    q: queue.Queue[tuple[bool, Any]] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def run() -> None:
        try:
            for item in items:
                if not _put(q, (True, item), stop):
                    return
        except BaseException as exc:  # handed to the consumer
            _put(q, (False, exc), stop)
        else:
            _put(q, (False, None), stop)
        finally:
            with suppress(Exception):
                getattr(items, "close", lambda: None)()

    thread = threading.Thread(target=run, name="polyhead-reader", daemon=True)
    thread.start()
    try:
        while True:
            start = time.perf_counter()
            ok, item = q.get()
            if waits is not None:
                waits.read += time.perf_counter() - start
            if not ok:
                if item is not None:
                    raise item
                return
            yield item
    finally:
        stop.set()
        thread.join()


class BackgroundWriter:
    """Call ``write(*args)`` in a background thread, in order, up to ``depth`` calls queued.

    `put` raises the writer's error (if it failed) instead of queueing; `close` waits for
    every queued call and raises its error. As a context manager, leaving with an exception
    drops what is queued and waits for the thread. ``waits.write`` adds up the time `put`
    and `close` wait.
    """

    def __init__(
        self, write: Callable[..., None], depth: int = 2, waits: Waits | None = None
    ) -> None:
        self._write = write
        self._waits = waits
        self._queue: queue.Queue[tuple[Any, ...] | None] = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="polyhead-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                args = self._queue.get(timeout=_POLL_S)
            except queue.Empty:
                continue
            if args is None:
                return
            try:
                self._write(*args)
            except BaseException as exc:
                self._error = exc
                self._stop.set()
                return

    def _raise(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def put(self, *args: Any) -> None:
        """Queue ``write(*args)``; raises the writer's error when it has failed."""
        self._raise()
        start = time.perf_counter()
        put = _put(self._queue, args, self._stop)
        self._waited(start)
        if not put:
            self._raise()
            raise RuntimeError("the background writer has stopped")

    def _waited(self, start: float) -> None:
        if self._waits is not None:
            self._waits.write += time.perf_counter() - start

    def close(self) -> None:
        """Wait for every queued write; raise the writer's error, if any."""
        if self._thread.is_alive():
            start = time.perf_counter()
            _put(self._queue, None, self._stop)
            self._thread.join()
            self._waited(start)
        self._raise()

    def abort(self) -> None:
        """Drop queued writes and wait for the thread."""
        self._stop.set()
        self._thread.join()

    def __enter__(self) -> BackgroundWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is not None or self._thread.is_alive():
            self.abort()
