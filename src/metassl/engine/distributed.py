"""Which process this is, and the collectives the engine runs when training on several (torchrun).

`DistInfo` is read once from the torchrun environment (RANK, WORLD_SIZE, LOCAL_RANK) and passed around explicitly;
`setup` creates the process group (NCCL on CUDA, gloo otherwise). The training scheme (see ARCHITECTURE.md):
every rank draws the same global batch from the same generator and keeps its share (`shard`), so N processes see
exactly the tasks and views one process sees; gradients are summed over the ranks (`all_reduce_gradients`) after
each rank back-propagated its share of the global objective; only rank 0 writes files.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Only the main process writes checkpoints, logs, TensorBoard events and figures."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @classmethod
    def from_env(cls) -> "DistInfo":
        return cls(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                   int(os.environ.get("LOCAL_RANK", 0)))

    def share(self, total: int) -> tuple[int, int]:
        """This rank's contiguous share [start, stop) of `total` items: the first `total % world` ranks get one
        more (np.array_split); a rank may get none when total < world."""
        base, extra = divmod(total, self.world_size)
        start = self.rank * base + min(self.rank, extra)
        return start, start + base + (1 if self.rank < extra else 0)


def resolve_device(name: str, dist: DistInfo | None = None):
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
    if dev.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"train.device {name!r}: metassl runs on cpu, cuda or mps, not {dev.type}; use train.device=auto")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()):
        raise ValueError(f"train.device is {name!r} but the Apple GPU (MPS) is not available here; use train.device=cpu "
                         f"or auto")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"train.device is {name!r} but CUDA is not available here; use train.device=cpu or auto")
    if dev.type == "cuda" and dev.index is None and dist is not None and dist.active:
        dev = torch.device("cuda", dist.local_rank)
    return dev


def setup(dist: DistInfo, device: torch.device, timeout_s: float = 600.0) -> None:
    """Create the default process group for a torchrun launch (no-op on one process or when it exists)."""
    import torch.distributed as td

    if not dist.active or td.is_initialized():
        return
    if "MASTER_ADDR" not in os.environ:
        raise RuntimeError(f"WORLD_SIZE={dist.world_size} but MASTER_ADDR is not set: launch several processes with "
                           f"torchrun (e.g. `torchrun --nproc_per_node={dist.world_size} -m metassl train ...`)")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    td.init_process_group(backend, rank=dist.rank, world_size=dist.world_size,
                          timeout=datetime.timedelta(seconds=timeout_s))


def teardown() -> None:
    import torch.distributed as td

    if td.is_available() and td.is_initialized():
        td.destroy_process_group()


def barrier(dist: DistInfo) -> None:
    if dist.active:
        import torch.distributed as td

        td.barrier()


def broadcast_tensors(dist: DistInfo, tensors: dict[str, torch.Tensor]) -> None:
    """Make every rank hold rank 0's values (in place)."""
    if not dist.active:
        return
    import torch.distributed as td

    with torch.no_grad():
        for t in tensors.values():
            td.broadcast(t.data if hasattr(t, "data") else t, src=0)


def all_reduce_gradients(dist: DistInfo, params: list[torch.Tensor]) -> None:
    """Sum the parameters' gradients over the ranks, in one flat all-reduce. A parameter that got a gradient on no
    rank keeps `grad = None` (so optimizers skip it, as on one process); on some ranks only: zeros elsewhere."""
    if not dist.active:
        return
    import torch.distributed as td

    has = torch.tensor([p.grad is not None for p in params], dtype=torch.float32, device=params[0].device)
    td.all_reduce(has)
    used = [p for p, h in zip(params, has.tolist()) if h > 0]
    if not used:
        return
    for p in used:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    flat = torch.cat([p.grad.reshape(-1) for p in used])
    td.all_reduce(flat)
    offset = 0
    for p in used:
        n = p.numel()
        p.grad.copy_(flat[offset:offset + n].view_as(p.grad))
        offset += n


def all_reduce_sum(dist: DistInfo, values: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Sum 0-d tensors over the ranks (one all-reduce; used for the logged metrics, each already weighted)."""
    if not dist.active or not values:
        return values
    import torch.distributed as td

    keys = sorted(values)
    flat = torch.stack([values[k].detach().float().reshape(()) for k in keys])
    td.all_reduce(flat)
    return dict(zip(keys, flat.unbind(0)))


def gather_objects(dist: DistInfo, obj):
    """Every rank's `obj`, in rank order (a list of length world_size; [obj] on one process)."""
    if not dist.active:
        return [obj]
    import torch.distributed as td

    out = [None] * dist.world_size
    td.all_gather_object(out, obj)
    return out
