"""The few collective operations the layers above need when training runs on several processes (torchrun), as
plain functions that are the identity on one process. The engine creates the process group
(`engine.distributed`); learners only call these.

- `gather(x)`: every rank's `x` concatenated along dim 0 in rank order, differentiable: the backward hands each
  rank the gradient of its own slice summed over all ranks (an all-reduce of the gathered gradient). A loss
  computed on the gathered batch by every rank, scaled by 1/world, therefore back-propagates to exactly the
  single-process gradient once the engine sums the parameter gradients (the bug lightly #1458 had was a gather whose
  backward dropped the other ranks' share).
- `all_reduce_sum(x)`: the sum over ranks, differentiable (used by `GlobalBatchNorm` for global batch statistics).
"""

from __future__ import annotations

import torch
import torch.distributed as dist

__all__ = ["active", "all_reduce_sum", "gather", "rank", "world_size"]


def active() -> bool:
    """True when a process group of more than one process is running."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def rank() -> int:
    return dist.get_rank() if active() else 0


class _AllReduceSum(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        y = x.clone()
        dist.all_reduce(y)
        return y

    @staticmethod
    def backward(ctx, grad):
        g = grad.clone()
        dist.all_reduce(g)  # every rank's loss depends on every rank's x through the sum
        return g


class _Gather(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, sizes):
        ctx.sizes, ctx.rank = sizes, dist.get_rank()
        pad = max(sizes) - x.shape[0]
        xp = torch.cat([x, x.new_zeros(pad, *x.shape[1:])]) if pad else x.contiguous()
        parts = [torch.empty_like(xp) for _ in sizes]
        dist.all_gather(parts, xp)
        return torch.cat([p[:k] for p, k in zip(parts, sizes)], 0)

    @staticmethod
    def backward(ctx, grad):
        g = grad.contiguous().clone()
        dist.all_reduce(g)  # the gradient of every rank's loss with respect to the gathered batch
        start = sum(ctx.sizes[:ctx.rank])
        return g[start:start + ctx.sizes[ctx.rank]], None


def gather(x: torch.Tensor) -> torch.Tensor:
    """[n_r, ...] on each rank -> [sum_r n_r, ...] on every rank (rank order), with gradients to every rank. The
    ranks' first dimensions may differ (uneven shards)."""
    if not active():
        return x
    sizes = [torch.zeros(1, dtype=torch.int64, device=x.device) for _ in range(world_size())]
    dist.all_gather(sizes, torch.tensor([x.shape[0]], dtype=torch.int64, device=x.device))
    return _Gather.apply(x, [int(s) for s in sizes])


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """The sum of `x` over the ranks, differentiable (the gradient is summed over the ranks as well)."""
    if not active():
        return x
    return _AllReduceSum.apply(x)
