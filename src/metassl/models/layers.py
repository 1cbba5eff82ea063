"""Small layers shared by backbones."""

from __future__ import annotations

from torch import nn


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
