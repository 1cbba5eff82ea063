"""Small layers shared by backbones."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .. import parallel


def norm2d(kind: str, channels: int, track_running_stats: bool = True) -> nn.Module:
    """Normalization by name. MAML-style learners use `track_running_stats=False` (batch statistics always),
    which also keeps the module free of in-place buffer updates under `torch.func.vmap`."""
    if kind == "batch":
        return nn.BatchNorm2d(channels, track_running_stats=track_running_stats)
    if kind == "group":
        return nn.GroupNorm(min(32, channels), channels)
    if kind == "instance":
        return nn.GroupNorm(channels, channels)  # instance norm with affine parameters, no running stats
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm {kind!r}; use batch, group, instance or none")


NORMS = ("batch", "group", "instance", "none")


class GlobalBatchNorm(nn.Module):
    """BatchNorm whose training-mode statistics are those of the global batch over every process (torchrun), so N
    processes normalize exactly as one process with the whole batch would (SyncBatchNorm, which runs on GPUs only;
    this one is elementary ops plus a differentiable all-reduce, so it also runs on CPUs with gloo).

    Same parameter and buffer names and values as the BatchNorm it replaces (checkpoints move between world sizes);
    biased variance for normalizing, unbiased for the running estimate, as torch's. In evaluation mode (running
    statistics, or the batch's own when none are tracked) nothing is communicated: evaluation episodes stay local."""

    def __init__(self, bn: nn.Module):
        super().__init__()
        self.num_features, self.eps, self.momentum = bn.num_features, bn.eps, bn.momentum
        self.affine, self.track_running_stats = bn.affine, bn.track_running_stats
        self.weight, self.bias = bn.weight, bn.bias
        if bn.track_running_stats:
            self.register_buffer("running_mean", bn.running_mean)
            self.register_buffer("running_var", bn.running_var)
            self.register_buffer("num_batches_tracked", bn.num_batches_tracked)
        self.train(bn.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            return self._global_train(x) if parallel.active() else self._local_train(x)
        if self.track_running_stats:
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)
        return F.batch_norm(x, None, None, self.weight, self.bias, True, 0.0, self.eps)

    def _global_train(self, x: torch.Tensor) -> torch.Tensor:
        dims = [0, *range(2, x.dim())]
        # the element count rides with the sums in one all-reduce (no tensor made on the host per layer)
        sums = parallel.all_reduce_sum(torch.cat([x.sum(dims), x.new_full((1,), x.numel() // x.shape[1])]))
        mean, count = sums[:-1] / sums[-1], sums[-1].detach()
        shape = (1, -1) + (1,) * (x.dim() - 2)
        centered = x - mean.view(shape)
        var = parallel.all_reduce_sum((centered * centered).sum(dims)) / count
        if self.track_running_stats:
            with torch.no_grad():
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked + 1)
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(var.detach() * count / (count - 1).clamp_min(1), alpha=m)
                self.num_batches_tracked.add_(1)
        y = centered * torch.rsqrt(var.view(shape) + self.eps)
        if self.weight is not None:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y

    def _local_train(self, x: torch.Tensor) -> torch.Tensor:
        # one process: exactly torch's BatchNorm in training mode (fused kernel, running statistics updated)
        m = self.momentum if self.momentum is not None else 0.0
        if self.track_running_stats:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:
                m = 1.0 / float(self.num_batches_tracked)
        return F.batch_norm(x, self.running_mean if self.track_running_stats else None,
                            self.running_var if self.track_running_stats else None, self.weight, self.bias, True, m,
                            self.eps)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, global batch statistics"


def use_global_batch_statistics(module: nn.Module) -> int:
    """Replace every torch BatchNorm in `module` by a `GlobalBatchNorm` (same tensors); returns how many."""
    n = 0
    for name, child in list(module.named_children()):
        if isinstance(child, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)):
            setattr(module, name, GlobalBatchNorm(child))
            n += 1
        else:
            n += use_global_batch_statistics(child)
    return n
