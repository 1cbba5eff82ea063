"""MLP on flattened pixels: a baseline and a fast backbone for tests."""

from __future__ import annotations

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
    image_size: int = option(28, range=(1, 4096), help="images are resized to this before flattening")

    def validate(self):
        if not self.hidden or any(h < 1 for h in self.hidden):
            from ..config import ConfigError
            raise ConfigError(f"model.hidden must be a non-empty list of positive widths, got {self.hidden}")


@register_backbone("mlp", MLPConfig, "fully connected layers on pixels")
class MLP(nn.Module):
    def __init__(self, cfg: MLPConfig, in_channels: int):
        super().__init__()
        self.size = cfg.image_size
        layers: list[nn.Module] = [nn.Flatten()]
        d = in_channels * cfg.image_size * cfg.image_size
        for i, h in enumerate(cfg.hidden):
            layers.append(nn.Linear(d, h))
            if i < len(cfg.hidden) - 1:
                if cfg.norm == "batch":
                    layers.append(nn.BatchNorm1d(h, track_running_stats=cfg.track_running_stats))
                layers.append(nn.ReLU())
            d = h
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        if x.shape[-1] != self.size or x.shape[-2] != self.size:
            x = nn.functional.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False,
                                          antialias=True)
        return self.net(x)
