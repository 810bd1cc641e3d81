"""polyhead.io: temp files beside the target, moved into place only when complete."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.errors import RasterioIOError

import polyhead.io.geotiff as geotiff_mod
from polyhead.errors import PolyheadError
from polyhead.io import (
    TEMP_MARKER,
    AtomicGeoTiff,
    Staging,
    WriteError,
    atomic_write,
    geotiff_profile,
    remove_stale_temp_files,
    save_figure,
    stale_temp_files,
    temp_owner,
    temp_path,
    write_csv,
    write_json,
    write_text,
)


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# ---------------------------------------------------------------- single files


def test_temp_path_is_beside_the_target_and_names_this_process(tmp_path):
    tmp = temp_path(tmp_path / "out.csv")
    assert tmp.parent == tmp_path
    assert tmp.name.startswith(".out.csv" + TEMP_MARKER)
    assert temp_owner(tmp) == os.getpid()
    assert temp_owner(tmp_path / "out.csv") is None
    assert temp_path(tmp_path / "out.csv") != tmp


def test_success_moves_into_place(tmp_path):
    target = tmp_path / "sub" / "a.txt"
    with atomic_write(target) as tmp:
        assert tmp.parent == target.parent and temp_owner(tmp) == os.getpid()
        tmp.write_text("new")
        assert not target.exists()
    assert target.read_text() == "new"
    assert _names(target.parent) == ["a.txt"]


def test_failure_midway_leaves_previous_file_and_no_temp(tmp_path):
    target = tmp_path / "a.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError, match="boom"), atomic_write(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("boom")
    assert target.read_text() == "old"
    assert _names(tmp_path) == ["a.txt"]


def test_failed_check_or_nothing_written_raises_write_error(tmp_path):
    target = tmp_path / "a.txt"
    with pytest.raises(WriteError, match=r"a\.txt: the written file failed its check"):
        with atomic_write(target, verify=lambda p: p.read_text() == "ok") as tmp:
            tmp.write_text("bad")
    with pytest.raises(WriteError, match=r"a\.txt: nothing was written"):
        with atomic_write(target):
            pass

    def strict(path: Path) -> None:
        raise ValueError("wrong header")

    with pytest.raises(WriteError, match="wrong header") as info:
        with atomic_write(target, verify=strict) as tmp:
            tmp.write_text("x")
    assert isinstance(info.value, PolyheadError) and isinstance(info.value, OSError)
    assert _names(tmp_path) == []


def test_text_json_csv_helpers(tmp_path):
    assert write_text(tmp_path / "t.txt", "héllo\n").read_bytes() == "héllo\n".encode()
    write_json(tmp_path / "d" / "j.json", {"a": [1, 2]})
    assert json.loads((tmp_path / "d" / "j.json").read_text()) == {"a": [1, 2]}
    assert (tmp_path / "d" / "j.json").read_text().endswith("]\n}\n")
    write_csv(tmp_path / "c.csv", ("x", "y"), ([i, i * i] for i in range(3)))
    assert (tmp_path / "c.csv").read_text().splitlines() == ["x,y", "0,0", "1,1", "2,4"]
    assert _names(tmp_path) == ["c.csv", "d", "t.txt"]


def test_csv_whose_rows_fail_leaves_nothing(tmp_path):
    def rows():
        yield ["1", "2"]
        raise RuntimeError("row 2 broke")

    with pytest.raises(RuntimeError, match="row 2 broke"):
        write_csv(tmp_path / "c.csv", ("a", "b"), rows())
    assert _names(tmp_path) == []


def test_save_figure(tmp_path):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(1, 1))
    FigureCanvasAgg(fig)
    fig.add_subplot(1, 1, 1).plot([0, 1])
    path = save_figure(fig, tmp_path / "f.png", dpi=20)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    class Broken:
        def savefig(self, fname, **kwargs):
            Path(fname).write_bytes(b"\x89PNG partial")
            raise OSError(errno.EIO, "device error")

    with pytest.raises(WriteError, match=r"could not write .*g\.png: .*device error"):
        save_figure(Broken(), tmp_path / "g.png")
    assert _names(tmp_path) == ["f.png"]


# ---------------------------------------------------------------- output folders


def test_staging_new_folder_and_merge_into_existing(tmp_path):
    out = tmp_path / "out"
    with Staging(out) as stage:
        write_text(stage.path("a/x.txt"), "1")
        assert stage.root.parent == tmp_path and temp_owner(stage.root) == os.getpid()
        assert not out.exists()
        stage.commit()
    assert (out / "a" / "x.txt").read_text() == "1"
    (out / "keep.txt").write_text("keep")
    with Staging(out) as stage:
        write_text(stage.path("a/x.txt"), "2")
        stage.commit()
    assert (out / "a" / "x.txt").read_text() == "2" and (out / "keep.txt").read_text() == "keep"
    assert _names(tmp_path) == ["out"]


def test_staging_failure_leaves_nothing(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="boom"), Staging(out) as stage:
        write_text(stage.path("x.txt"), "1")
        raise RuntimeError("boom")
    with Staging(out) as stage:  # left without commit
        write_text(stage.path("x.txt"), "1")
    assert _names(tmp_path) == []


# ---------------------------------------------------------------- stale temps


def test_stale_temps_are_those_of_dead_processes(tmp_path):
    dead = _dead_pid()
    mine = temp_path(tmp_path / "a.tif")
    mine.write_text("in progress")
    stale_file = tmp_path / f".b.tif{TEMP_MARKER}{dead}-0123abcd"
    stale_file.write_text("left by a killed run")
    stale_dir = tmp_path / f".out{TEMP_MARKER}{dead}-89abcdef"
    (stale_dir / "soft").mkdir(parents=True)
    (stale_dir / "soft" / "x.tif").write_text("x")
    nested = tmp_path / "sub" / f".c.csv{TEMP_MARKER}{dead}-00000000"
    nested.parent.mkdir()
    nested.write_text("c")
    (tmp_path / ".not-ours.tmp").write_text("other tool")

    assert stale_temp_files(tmp_path) == sorted([stale_file, stale_dir])
    assert stale_temp_files(tmp_path, recursive=True) == sorted([stale_file, stale_dir, nested])
    assert stale_temp_files(tmp_path, min_age_s=3600.0) == []
    old = time.time() - 7200.0
    os.utime(stale_file, (old, old))
    assert stale_temp_files(tmp_path, min_age_s=3600.0) == [stale_file]

    removed = remove_stale_temp_files(tmp_path, recursive=True)
    assert removed == sorted([stale_file, stale_dir, nested])
    assert _names(tmp_path) == sorted([".not-ours.tmp", mine.name, "sub"])
    assert _names(tmp_path / "sub") == []


# ---------------------------------------------------------------- GeoTIFF


def _profile(height: int = 300, width: int = 280, count: int = 2) -> dict:
    transform = rasterio.Affine(10.0, 0.0, 500000.0, 0.0, -10.0, 5200000.0)
    return geotiff_profile(height, width, count, "float32", "EPSG:32633", transform)


def _data(height: int = 300, width: int = 280, count: int = 2) -> np.ndarray:
    return np.random.default_rng(0).random((count, height, width), dtype=np.float32)


def test_geotiff_written_in_strips_round_trips(tmp_path):
    data, target = _data(), tmp_path / "pred.tif"
    with AtomicGeoTiff(target, _profile()) as writer:
        assert writer.tmp_path.parent == tmp_path
        writer.write(data[:, :100], 0)
        writer.write(data[:, 100:, :140], 100)
        writer.write(data[:, 100:, 140:], 100, 140)
        assert writer.commit() == target
    with rasterio.open(target) as src:
        np.testing.assert_array_equal(src.read(), data)
        assert src.crs.to_epsg() == 32633
    assert _names(tmp_path) == ["pred.tif"]


class _Proxy:
    """A rasterio writer whose ``write`` fails, or whose file loses its tail on close."""

    def __init__(self, dst, fail: str) -> None:
        self._dst, self._fail = dst, fail

    def __getattr__(self, name):
        return getattr(self._dst, name)

    def write(self, *args, **kwargs):
        if self._fail == "write":
            raise RasterioIOError("TIFFAppendToStrip:Write error at scanline 0")
        return self._dst.write(*args, **kwargs)

    def close(self) -> None:
        name = self._dst.name
        self._dst.close()
        if self._fail == "close":  # what a flush lost to a full disk leaves behind
            with open(name, "r+b") as fh:
                fh.truncate(os.path.getsize(name) // 2)


@pytest.mark.parametrize("fail", ["write", "close"])
def test_geotiff_write_or_flush_failure_leaves_nothing(tmp_path, monkeypatch, fail):
    target = tmp_path / "pred.tif"
    target.write_bytes(b"previous run")
    real_open = rasterio.open

    def fake_open(path, mode="r", **kwargs):
        dst = real_open(path, mode, **kwargs)
        return _Proxy(dst, fail) if mode == "w" else dst

    monkeypatch.setattr(geotiff_mod.rasterio, "open", fake_open)
    with pytest.raises(WriteError, match=r"could not write .*pred\.tif") as info:
        with AtomicGeoTiff(target, _profile()) as writer:
            writer.write(_data(), 0)
            writer.commit()
    assert isinstance(info.value, OSError)
    assert target.read_bytes() == b"previous run"
    assert _names(tmp_path) == ["pred.tif"]


def test_geotiff_exception_in_block_or_wrong_shape_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError, match="boom"), AtomicGeoTiff(tmp_path / "a.tif", _profile()):
        raise RuntimeError("boom")
    with AtomicGeoTiff(tmp_path / "b.tif", _profile()) as writer:
        writer.write(_data(), 0)  # never committed
    wrong = dict(_profile(), height=301)
    with AtomicGeoTiff(tmp_path / "c.tif", _profile()) as writer:
        writer.write(_data(), 0)
        writer.profile = wrong  # as if the file came out with another size
        with pytest.raises(WriteError, match=r"c\.tif: .*expected \(280, 301, 2, 'float32'\)"):
            writer.commit()
    assert _names(tmp_path) == []


@pytest.fixture
def full_disk(tmp_path):
    """A 64 KiB tmpfs (needs root and mount; skipped otherwise)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if not sys.platform.startswith("linux") or os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("a small tmpfs needs root and mount")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(disk)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {done.stderr.decode().strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", str(disk)], check=False)


@pytest.mark.parametrize("rows", [300, 100])  # 100: the last block is flushed by the close
def test_geotiff_on_a_full_disk(full_disk, rows):
    target = full_disk / "pred.tif"
    target.write_bytes(b"previous run")
    with pytest.raises(WriteError, match=r"could not write .*pred\.tif"):
        with AtomicGeoTiff(target, _profile()) as writer:
            writer.write(_data()[:, :rows], 0)
            writer.commit()
    assert target.read_bytes() == b"previous run"
    assert _names(full_disk) == ["pred.tif"]


def test_text_on_a_full_disk(full_disk):
    with pytest.raises(WriteError, match=r"could not write .*big\.txt") as info:
        write_text(full_disk / "big.txt", "x" * 200_000)
    assert info.value.errno == errno.ENOSPC
    assert _names(full_disk) == []
