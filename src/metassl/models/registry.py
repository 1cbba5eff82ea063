"""Backbones: a backbone is one module in `models/` (or a plugin package) with a config class and a `build`
function, registered with `register_backbone` and found by plugin discovery."""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from ..registry import BACKBONES


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    config: type  # dataclass with a `backbone` field and the backbone's options
    build: Callable[[Any, int], nn.Module]  # (config, in_channels) -> encoder mapping images to [B, D]
    description: str = ""


def register_backbone(spec_or_name: BackboneSpec | str, config: type | None = None, description: str = ""):
    """Register a backbone: `register_backbone(BackboneSpec(...))`, or as a class decorator

        @register_backbone("conv4", Conv4Config, "4 x [conv3x3, norm, ReLU, max-pool]")
        class Conv4(nn.Module):
            def __init__(self, cfg: Conv4Config, in_channels: int): ...
    """
    if isinstance(spec_or_name, BackboneSpec):
        return BACKBONES.add(spec_or_name.name, spec_or_name)
    if config is None:
        raise TypeError(f"backbone {spec_or_name!r}: give its config class")

    def deco(cls):
        BACKBONES.add(spec_or_name, BackboneSpec(spec_or_name, config, cls, description))
        return cls

    return deco


def get_backbone(name: str) -> BackboneSpec:
    return BACKBONES.lookup(name)


def build_backbone(config: Any, in_channels: int, input_shape: tuple[int, ...] | None = None) -> nn.Module:
    """The encoder for inputs of `in_channels` channels. A backbone whose build takes `input_shape` (the shape of one
    input: images [C, H, W], vectors [D], signals [C, L]) gets it; the others take images only."""
    build = get_backbone(config.backbone).build
    if "input_shape" in inspect.signature(build).parameters:
        return build(config, in_channels, input_shape=None if input_shape is None else tuple(input_shape))
    if input_shape is not None and len(input_shape) != 3:
        from ..errors import ConfigError
        takes = sorted(n for n, s in BACKBONES.items() if "input_shape" in inspect.signature(s.build).parameters)
        raise ConfigError(f"model.backbone={config.backbone} takes images [C, H, W], but the data set's inputs have "
                          f"shape {list(input_shape)}: use model.backbone={' or '.join(takes)}")
    return build(config, in_channels)


@torch.no_grad()
def feature_dim(model: nn.Module, image_shape: tuple[int, ...]) -> int:
    """The embedding size for inputs of this shape (one dry forward pass in eval mode)."""
    was = model.training
    model.eval()
    p = next(model.parameters())
    # two images: BatchNorm without running statistics normalizes with batch statistics even in eval mode
    out = model(torch.zeros(2, *image_shape, device=p.device, dtype=p.dtype))
    model.train(was)
    return out.shape[-1]
