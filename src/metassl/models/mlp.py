"""MLP on flattened pixels, or on vectors (table rows, the sinusoid's x, signals): a baseline and a fast backbone.

Images [C, H, W] are resized to `image_size` and flattened; any other input ([D], [C, L]) is flattened as it is.
`final_relu` puts a ReLU after the last layer too, so a linear head on top makes e.g. the MAML paper's sinusoid
network 1 -> 40 -> 40 -> 1 with ReLU after both hidden layers (`hidden: [40, 40], norm: none, final_relu: true`)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import nn

from ..config import option
from .registry import register_backbone


@dataclass
class MLPConfig:
    backbone: str = "mlp"
    hidden: list[int] = option(default_factory=lambda: [256, 128], help="hidden layer widths; the last is the output")
    norm: str = option("batch", choices=("batch", "none"))
    track_running_stats: bool = option(True)
    image_size: int = option(28, range=(1, 4096), help="images are resized to this before flattening (other "
                             "inputs are not resized)")
    final_relu: bool = option(False, help="a ReLU (and norm) after the last layer too (for a linear head on top)")

    def validate(self):
        if not self.hidden or any(h < 1 for h in self.hidden):
            from ..config import ConfigError
            raise ConfigError(f"model.hidden must be a non-empty list of positive widths, got {self.hidden}")


@register_backbone("mlp", MLPConfig, "fully connected layers on pixels")
class MLP(nn.Module):
    def __init__(self, cfg: MLPConfig, in_channels: int, input_shape: tuple[int, ...] | None = None):
        super().__init__()
        self.size = cfg.image_size
        self.images = input_shape is None or len(input_shape) == 3
        layers: list[nn.Module] = [nn.Flatten()]
        d = in_channels * cfg.image_size * cfg.image_size if self.images else math.prod(input_shape)
        for i, h in enumerate(cfg.hidden):
            layers.append(nn.Linear(d, h))
            if i < len(cfg.hidden) - 1 or cfg.final_relu:
                if cfg.norm == "batch":
                    layers.append(nn.BatchNorm1d(h, track_running_stats=cfg.track_running_stats))
                layers.append(nn.ReLU())
            d = h
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        if self.images and (x.shape[-1] != self.size or x.shape[-2] != self.size):
            x = nn.functional.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False,
                                          antialias=True)
        return self.net(x)
