"""Atomic writes: every output goes to a temp path beside its target and is moved into place
only once it is complete.

Naming rule. The temp path of ``folder/name`` (a file or a whole output folder) is
``folder/.name.polyhead.partial-<pid>-<8 hex>``: hidden, in the same folder (so on the same
filesystem, and `os.replace` is a rename), tagged with the id of the writing process. `commit`
checks the temp (it exists; an optional ``verify`` callable), flushes it to disk and renames it
to ``name``; any failure, or an exception in the writing code, deletes the temp instead. A
reader therefore sees either the previous complete file or the new complete one.

Stale rule. A process killed while writing leaves its temp behind. Such a leftover is *stale*
when the process whose id is in its name no longer runs on this machine (and, when
``min_age_s`` is given, it was last modified at least that long ago). `stale_temp_files` lists
them and `remove_stale_temp_files` deletes them; temps of running processes (this one included)
are never touched. Process ids are only meaningful on the machine that wrote the temp: on a
filesystem shared by several machines pass a ``min_age_s`` longer than any write takes. On
Windows, where liveness is not checked, nothing is stale by process id.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType

from polyhead.errors import PolyheadError

TEMP_MARKER = ".polyhead.partial-"
"""What every temp name contains, between the target's name and ``<pid>-<8 hex>``."""
_TEMP_NAME = re.compile(r"^\..*\.polyhead\.partial-(?P<pid>\d+)-[0-9a-f]{8}$")
_MAX_NAME = 200  # leaves room for the marker within the usual 255-byte name limit

PathLike = str | os.PathLike[str]
Verify = Callable[[Path], object]
"""Checks a finished temp file: raises, or returns False, when it is wrong."""


class WriteError(PolyheadError, OSError):
    """An output could not be written or failed its check; the message names its final path.

    Nothing is left under that path (a previous file there is untouched) and no temp remains.
    """


def temp_path(path: PathLike) -> Path:
    """A fresh temp path beside ``path`` (see the module docstring for the naming rule)."""
    path = Path(path)
    token = uuid.uuid4().hex[:8]
    return path.with_name(f".{path.name[:_MAX_NAME]}{TEMP_MARKER}{os.getpid()}-{token}")


def temp_owner(path: PathLike) -> int | None:
    """The process id in a temp name, or None when ``path`` is not a polyhead temp."""
    match = _TEMP_NAME.match(Path(path).name)
    return int(match["pid"]) if match else None


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    if os.name != "posix":
        return True  # os.kill would terminate the process on Windows
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        return True
    return True


def _is_stale(path: Path, min_age_s: float, now: float) -> bool:
    pid = temp_owner(path)
    if pid is None or _pid_alive(pid):
        return False
    try:
        return now - path.lstat().st_mtime >= min_age_s
    except FileNotFoundError:
        return False


def stale_temp_files(
    folder: PathLike, *, recursive: bool = False, min_age_s: float = 0.0
) -> list[Path]:
    """Temps (files or staging folders) under ``folder`` left by processes that no longer run.

    ``recursive`` also looks in sub-folders (not inside stale staging folders, which go whole).
    """
    root = Path(folder)
    if not root.is_dir():
        return []
    now = time.time()
    found: list[Path] = []
    for current, dirs, files in os.walk(root):
        base = Path(current)
        found += [base / f for f in files if _is_stale(base / f, min_age_s, now)]
        stale_dirs = {d for d in dirs if _is_stale(base / d, min_age_s, now)}
        found += [base / d for d in sorted(stale_dirs)]
        dirs[:] = [d for d in dirs if d not in stale_dirs] if recursive else []
    return sorted(found)


def remove_stale_temp_files(
    folder: PathLike, *, recursive: bool = False, min_age_s: float = 0.0
) -> list[Path]:
    """Delete what `stale_temp_files` finds; returns the paths removed."""
    removed = []
    for path in stale_temp_files(folder, recursive=recursive, min_age_s=min_age_s):
        _remove(path)
        removed.append(path)
    return removed


def clean_output_folder(out_dir: PathLike) -> list[Path]:
    """Remove what killed runs left for ``out_dir``: stale temps inside it (recursively) and
    stale staging folders of ``out_dir`` itself beside it; returns the paths removed."""
    out = Path(out_dir)
    removed = remove_stale_temp_files(out, recursive=True)
    for path in stale_temp_files(out.parent):
        if path.name.startswith(f".{out.name}."):
            _remove(path)
            removed.append(path)
    return removed


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_error(path: Path, exc: BaseException) -> WriteError:
    """``exc`` as a `WriteError` naming ``path`` (with GDAL's message when rasterio chained it)."""
    if isinstance(exc, WriteError):
        return exc
    reason = str(exc)
    cause = exc.__cause__ or exc.__context__
    if cause is not None and str(cause) not in reason:  # rasterio puts GDAL's message there
        reason = f"{reason} ({cause})"
    error = WriteError(f"could not write {path}: {reason}")
    error.errno = getattr(exc, "errno", None)
    return error


class AtomicPath:
    """A temp path beside ``path``: write it, then `commit` (check, move) or `abort` (delete)."""

    def __init__(self, path: PathLike, verify: Verify | None = None, *, fsync: bool = True):
        self.path = Path(path)
        self.tmp_path = temp_path(self.path)
        self.verify = verify
        self.fsync = fsync

    def commit(self) -> Path:
        """Check the temp file, flush it to disk and rename it to ``path``.

        Raises `WriteError` (temp deleted, ``path`` untouched) when the temp is missing,
        ``verify`` fails or the rename fails.
        """
        try:
            if not self.tmp_path.is_file():
                raise WriteError(f"could not write {self.path}: nothing was written")
            if self.fsync:
                _fsync(self.tmp_path)
            if self.verify is not None and self.verify(self.tmp_path) is False:
                raise WriteError(f"could not write {self.path}: the written file failed its check")
            os.replace(self.tmp_path, self.path)
        except BaseException as exc:
            self.abort()
            if isinstance(exc, Exception):
                raise write_error(self.path, exc) from exc
            raise
        return self.path

    def abort(self) -> None:
        """Delete the temp (idempotent)."""
        _remove(self.tmp_path)


@contextlib.contextmanager
def atomic_write(
    path: PathLike, verify: Verify | None = None, *, fsync: bool = True
) -> Iterator[Path]:
    """Yield a temp path to write ``path``'s content to; on leaving, commit it.

    The parent folder is created. An exception in the block deletes the temp and propagates
    unchanged; a failed check or move raises `WriteError`. Either way ``path`` is untouched.
    """
    target = AtomicPath(path, verify, fsync=fsync)
    target.path.parent.mkdir(parents=True, exist_ok=True)
    try:
        yield target.tmp_path
    except BaseException:
        target.abort()
        raise
    target.commit()


class Staging:
    """A whole output folder written at once: paths handed out lie in a temp folder beside
    ``out_dir`` (same naming and stale rules as files), moved into place by `commit`.

    When ``out_dir`` does not exist yet, `commit` is a single rename; otherwise the staged
    files replace those with the same names one by one (other files in ``out_dir`` stay).
    Leaving the context without `commit`, or with an exception, deletes the temp folder, so
    ``out_dir`` gets no new file.
    """

    def __init__(self, out_dir: PathLike) -> None:
        self.out_dir = Path(out_dir).resolve()
        self.root = temp_path(self.out_dir)
        self.committed = False

    def __enter__(self) -> Staging:
        self.root.mkdir(parents=True)
        return self

    def path(self, relative: PathLike) -> Path:
        """Where to write the file that will end up at ``out_dir / relative``."""
        target = self.root / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        return target

    def commit(self) -> Path:
        """Move every staged file into ``out_dir``; returns ``out_dir``."""
        try:
            if not self.out_dir.exists():
                os.replace(self.root, self.out_dir)
            else:
                for src in sorted(p for p in self.root.rglob("*") if not p.is_dir()):
                    dst = self.out_dir / src.relative_to(self.root)
                    dst.parent.mkdir(parents=True, exist_ok=True)
                    os.replace(src, dst)
                _remove(self.root)
        except Exception as exc:
            self.abort()
            raise write_error(self.out_dir, exc) from exc
        self.committed = True
        return self.out_dir

    def abort(self) -> None:
        """Delete the temp folder (idempotent)."""
        _remove(self.root)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if not self.committed:
            self.abort()
