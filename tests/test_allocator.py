"""polyhead.allocator: glibc keeps large freed blocks; the user's own choice wins."""

import ctypes
import os
import platform
import subprocess
import sys

import pytest

from polyhead import allocator

GLIBC = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"


FAULTS = """
import resource, sys, numpy as np
from polyhead.allocator import keep_freed_memory
if sys.argv[1] == "tuned":
    assert keep_freed_memory()
block = np.ones(64 * 2**20, np.uint8)  # 64 MiB, every page touched
del block
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
block = np.ones(64 * 2**20, np.uint8)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str) -> int:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    env.pop("GLIBC_TUNABLES", None)
    env["LD_PRELOAD"] = ""
    out = subprocess.run(
        [sys.executable, "-c", FAULTS, mode], capture_output=True, text=True, env=env, check=True
    )
    return int(out.stdout.split()[-1])


@pytest.mark.skipif(not GLIBC, reason="glibc only")
def test_a_freed_large_block_is_reused_without_page_faults() -> None:
    """In fresh processes (this one may be tuned already by in-process CLI tests): a 64 MiB
    block freed and allocated again faults its pages in again by default, not once tuned."""
    plain, tuned = _faults("plain"), _faults("tuned")
    assert plain > 0 and tuned * 10 < plain


@pytest.mark.parametrize(
    "env", [{"MALLOC_ARENA_MAX": "2"}, {"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=0"},
            {"LD_PRELOAD": "/usr/lib/libjemalloc.so.2"}],
)  # fmt: skip
def test_the_users_own_allocator_settings_win(monkeypatch, env) -> None:
    calls = []
    monkeypatch.setattr(ctypes, "CDLL", lambda *a: calls.append(a))
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert not allocator.keep_freed_memory()
    assert not calls  # mallopt never reached
