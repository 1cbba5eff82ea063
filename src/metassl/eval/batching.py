"""How many evaluation episodes go through the model together, chosen by measuring on the device at hand.

Measured on this project's 2-core CPU (issue 22): a Conv4 5-way 1-shot episode's activations are ~15 MB and fit in
the last-level cache, 50 episodes' are ~750 MB and stream through main memory, so one episode per call ran 2.6×
faster than 50 (41 vs 16 episodes/s); on a GPU the opposite holds (small calls leave it idle). No constant is right
for both, so `EpisodeBatcher` starts at one episode per call and doubles while doing so raises episodes/s by at least
10%, then keeps the fastest size it saw; out of device memory it halves. Every episode is still evaluated exactly once
and each episode's result does not depend on its neighbours, so only the speed changes. A fixed size (> 0) disables
the search.
"""

from __future__ import annotations

import time
from typing import Callable, TypeVar

import torch

R = TypeVar("R")

AUTO = 0  # `eval.batch_episodes: 0` / `--batch-episodes 0`: measure (the default)
GAIN = 1.10  # doubling must raise episodes/s by this factor to continue


class EpisodeBatcher:
    """Yields batch sizes for a run of episodes and learns from their timings (see the module docstring)."""

    def __init__(self, fixed: int = AUTO, cap: int = 512):
        if fixed < 0:
            raise ValueError(f"batch_episodes must be >= 0 (0: measured per device), got {fixed}")
        self.fixed, self.cap = fixed, cap
        self.size = fixed or 1
        self.searching = not fixed
        self.warmed = bool(fixed)  # the first call pays one-time costs (allocator, lazy init): never compared
        self.rates: dict[int, float] = {}

    @classmethod
    def of(cls, batch_episodes: "int | EpisodeBatcher") -> "EpisodeBatcher":
        """A batcher for a size (0: search), or the given one (whose search carries over to another protocol)."""
        return batch_episodes if isinstance(batch_episodes, EpisodeBatcher) else cls(batch_episodes)

    def record(self, count: int, seconds: float) -> None:
        if not self.searching:
            return
        if not self.warmed:
            self.warmed = True
            return
        if count < self.size:  # the last, partial batch says nothing about this size
            return
        self.rates[self.size] = count / max(seconds, 1e-9)
        smaller = self.rates.get(self.size // 2)
        if (smaller is not None and self.rates[self.size] < GAIN * smaller) or 2 * self.size > self.cap:
            self.size = max(self.rates, key=self.rates.get)
            self.searching = False
        else:
            self.size *= 2

    def shrink(self) -> bool:
        """After running out of device memory: halve the size and stop growing; False if already one episode."""
        if self.size <= 1:
            return False
        self.size //= 2
        self.searching = False
        return True

    def run(self, first: int, last: int, step: Callable[[int, int], R]) -> list[R]:
        """`step(start, count)` over episodes [first, last) in batches chosen here; results in episode order."""
        out, start = [], first
        while start < last:
            count = min(self.size, last - start)
            t0 = time.perf_counter()
            try:
                out.append(step(start, count))
            except torch.OutOfMemoryError:
                if not self.shrink():
                    raise
                continue
            self.record(count, time.perf_counter() - t0)
            start += count
        return out
