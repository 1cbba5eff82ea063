"""CPU memory allocator settings for training.

glibc serves allocations above its mmap threshold (at most 32 MB) with fresh `mmap` pages and returns them with
`munmap` on free, so every training step's large activations are zero-filled by the kernel anew: measured on this
project's 2-core CPU, the demo (ProtoNet, Conv4, 60-way Omniglot) spent 4.6 of its 5.6 minutes in the kernel, and
100 steps took 45 s. With mmap off for the heap and no trimming (`mallopt(M_MMAP_MAX, 0)`,
`mallopt(M_TRIM_THRESHOLD, 1 TB)`, what PyTorch's CPU tuning guide does with jemalloc/tcmalloc or these variables)
the freed blocks are reused: 24 s, the same numbers bit for bit. The price is that the process keeps its peak memory
until it exits. Only glibc (Linux) has `mallopt`; elsewhere, or with METASSL_SYSTEM_MALLOC=1, nothing changes.
"""

from __future__ import annotations

import ctypes
import functools
import ctypes.util
import os
import sys

M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4


@functools.cache
def tune_allocator() -> bool:
    """Keep freed heap memory for reuse (see the module docstring), once per process; True if applied."""
    if os.environ.get("METASSL_SYSTEM_MALLOC") or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc.mallopt(M_MMAP_MAX, 0) == 1 and libc.mallopt(M_TRIM_THRESHOLD, 1 << 40) == 1
    except (OSError, AttributeError):  # not glibc
        return False
