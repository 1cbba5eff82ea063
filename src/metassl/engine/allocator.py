"""CPU memory allocator settings for training and evaluation.

glibc serves allocations above its mmap threshold (at most 32 MB) with fresh `mmap` pages and returns them with
`munmap` on free, so every training step's large activations are zero-filled by the kernel anew: measured on this
project's 2-core CPU, the demo (ProtoNet, Conv4, 60-way Omniglot) spent 4.6 of its 5.6 minutes in the kernel, and
100 steps took 45 s. With mmap off for the heap and no trimming (`mallopt(M_MMAP_MAX, 0)`,
`mallopt(M_TRIM_THRESHOLD, 1 TB)`, what PyTorch's CPU tuning guide does with jemalloc/tcmalloc or these variables)
the freed blocks are reused: 24 s, the same numbers bit for bit (benchmarks/bench_allocator.py measures it against
glibc as it comes and jemalloc/tcmalloc preloaded: results/allocator.md).

The price is that freed memory stays with the process, and a heap that fragments (long runs whose tensor sizes vary:
multi-crop views, validation between steps) kept growing: Omniglot SSL runs at batch 256 reached 10-13 GB. So
`MemoryGuard` watches the resident size after each step and, when it has doubled since the run settled (and by at
least 1 GB), hands the free part back once with `malloc_trim(0)`; the reuse and its speed stay, the growth is bounded.
Only glibc (Linux) has `mallopt`; elsewhere, with METASSL_SYSTEM_MALLOC=1, or when jemalloc or tcmalloc is preloaded
(`LD_PRELOAD=.../libtcmalloc_minimal.so.4 metassl train ...`: tcmalloc measured faster still, results/allocator.md),
nothing changes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import sys
from typing import Callable

M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
OPT_OUT = "METASSL_SYSTEM_MALLOC"


def opted_out() -> bool:
    """METASSL_SYSTEM_MALLOC set to anything but "", "0", "false" or "no" keeps the system's allocator settings."""
    return os.environ.get(OPT_OUT, "").strip().lower() not in ("", "0", "false", "no")


def preloaded_allocator() -> str | None:
    """The name of a jemalloc / tcmalloc / mimalloc library in LD_PRELOAD (it serves malloc instead of glibc)."""
    for lib in os.environ.get("LD_PRELOAD", "").replace(":", " ").split():
        name = os.path.basename(lib)
        if any(k in name for k in ("jemalloc", "tcmalloc", "mimalloc")):
            return name
    return None


@functools.cache
def _libc():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt, libc.malloc_trim  # noqa: B018 - AttributeError if this is not glibc
        return libc
    except (OSError, AttributeError):
        return None


@functools.cache
def tune_allocator() -> bool:
    """Keep freed heap memory for reuse (see the module docstring), once per process; True if applied."""
    if opted_out() or preloaded_allocator() or not sys.platform.startswith("linux"):
        return False
    libc = _libc()
    return libc is not None and libc.mallopt(M_MMAP_MAX, 0) == 1 and libc.mallopt(M_TRIM_THRESHOLD, 1 << 40) == 1


def resident_bytes() -> int:
    """The process's resident memory (Linux /proc/self/statm; 0 where unavailable)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def release_free_memory() -> bool:
    """Give the heap's free pages back to the system (glibc `malloc_trim(0)`); False where that is not possible."""
    libc = _libc()
    return bool(libc is not None and libc.malloc_trim(0))


class MemoryGuard:
    """Bounds the resident memory a tuned allocator keeps (module docstring). `check()` after every step: the first
    `settle` calls only set the baseline (the largest resident size seen); afterwards, above `factor` × baseline and
    baseline + `min_growth` bytes, the free memory is released once and the baseline becomes what stays resident.
    Inactive (never reads memory) when the allocator was not tuned."""

    def __init__(self, active: bool, settle: int = 5, factor: float = 2.0, min_growth: int = 1 << 30,
                 rss: Callable[[], int] = resident_bytes, release: Callable[[], bool] = release_free_memory):
        self.active, self.settle, self.factor, self.min_growth = active, settle, factor, min_growth
        self.rss, self.release = rss, release
        self.calls, self.baseline, self.releases = 0, 0, 0

    def check(self) -> bool:
        """True when memory was released by this call."""
        if not self.active:
            return False
        self.calls += 1
        now = self.rss()
        if self.calls <= self.settle:
            self.baseline = max(self.baseline, now)
            return False
        if now <= max(self.factor * self.baseline, self.baseline + self.min_growth):
            return False
        self.release()
        self.releases += 1
        self.baseline = max(self.baseline, self.rss())  # what stayed is live memory: the new reference
        return True
