"""Which process this is. Read once from the torchrun environment and passed around explicitly: no globals."""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Only the main process writes checkpoints, logs, TensorBoard events and figures."""
        return self.rank == 0

    @classmethod
    def from_env(cls) -> "DistInfo":
        return cls(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                   int(os.environ.get("LOCAL_RANK", 0)))


def resolve_device(name: str, dist: DistInfo | None = None):
    import torch

    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", (dist or DistInfo()).local_rank)
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except RuntimeError as e:
        raise ValueError(f"train.device {name!r} is not a device name (auto, cpu, cuda, cuda:1, mps)") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"train.device is {name!r} but CUDA is not available here; use train.device=cpu or auto")
    return dev
