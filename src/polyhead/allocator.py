"""The command line's memory allocator setting: glibc keeps large freed blocks for reuse.

glibc's malloc gives every block above a threshold (dynamic, at most 32 MiB) its own
``mmap`` and hands it back to the system when it is freed. PyTorch on a CPU allocates and
frees activations and output tiles of tens to hundreds of MiB for every batch, so each is
faulted in again page by page, and the page faults can cost more than the arithmetic.
Raising the mmap and trim thresholds keeps such blocks in the heap for the next batch:
`predict_raster` with a ResNet-18 dual-head UPerNet on 2 CPU threads then takes 0.82x the
time, for a peak resident memory 10% higher (`benchmarks/allocator.py`,
`benchmarks/results/allocator_cpu.md`). PyTorch's CPU launch scripts get the same effect by
preloading jemalloc or tcmalloc.

`keep_freed_memory` is called by ``polyhead``'s `main`, never on import: a library does
not change its host process's allocator. It does nothing off glibc, or when the user set a
``MALLOC_*`` variable, ``GLIBC_TUNABLES`` or preloads another allocator.
"""

from __future__ import annotations

import ctypes
import os
import platform
import sys

#: blocks up to this size come from the heap, not their own mmap
MMAP_THRESHOLD = 1 << 30
#: free memory at the top of the heap kept for reuse (a C int)
TRIM_THRESHOLD = (1 << 31) - 1
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_USER_SETTINGS = ("GLIBC_TUNABLES",)
_OTHER_ALLOCATORS = ("jemalloc", "tcmalloc", "mimalloc")


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds (see the module docstring); whether they were
    set. Linux with glibc only, and only when the user chose nothing themselves."""
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return False
    if any(k.startswith("MALLOC_") or k in _USER_SETTINGS for k in os.environ):
        return False
    if any(name in os.environ.get("LD_PRELOAD", "") for name in _OTHER_ALLOCATORS):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )
