"""ResNet-12, the standard few-shot backbone (Oreshkin et al. 2018, TADAM; Lee et al. 2019, MetaOptNet).

Four residual blocks of three 3x3 convs (BatchNorm, LeakyReLU 0.1) with a 1x1-conv shortcut and 2x2 max-pool;
widths 64-160-320-640 (or 64-128-256-512 with `widths`), global average pooling: 640 features.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..config import option
from .layers import NORMS, norm2d
from .registry import register_backbone


@dataclass
class ResNet12Config:
    backbone: str = "resnet12"
    widths: list[int] = option(default_factory=lambda: [64, 160, 320, 640], help="channels of the four blocks")
    norm: str = option("batch", choices=NORMS)
    track_running_stats: bool = option(True)
    dropout: float = option(0.0, range=(0.0, 0.9), help="dropout after each block (0: off)")
    drop_block: float = option(0.0, range=(0.0, 0.9), help="DropBlock rate in the last two blocks (0: off)")
    block_size: int = option(5, range=(1, 15), help="DropBlock block size")
    negative_slope: float = option(0.1, range=(0.0, 1.0), help="LeakyReLU slope")

    def validate(self):
        if len(self.widths) != 4 or any(w < 1 for w in self.widths):
            from ..config import ConfigError
            raise ConfigError(f"model.widths must be four positive channel counts, got {self.widths}")


class DropBlock(nn.Module):
    """DropBlock (Ghiasi et al. 2018): drop contiguous square regions of a feature map during training."""

    def __init__(self, rate: float, block_size: int):
        super().__init__()
        self.rate, self.block_size = rate, block_size

    def forward(self, x):
        if not self.training or self.rate == 0.0:
            return x
        h, w = x.shape[-2:]
        bs = min(self.block_size, h, w)
        gamma = self.rate / (bs * bs) * (h * w) / max((h - bs + 1) * (w - bs + 1), 1)
        seeds = (torch.rand(x.shape[0], 1, h, w, device=x.device) < gamma).to(x.dtype)
        mask = 1.0 - nn.functional.max_pool2d(seeds, bs, stride=1, padding=bs // 2)[..., :h, :w]
        return x * mask * (mask.numel() / mask.sum().clamp_min(1.0))


class Block(nn.Module):
    def __init__(self, cin: int, cout: int, cfg: ResNet12Config, drop_block: float):
        super().__init__()
        act = lambda: nn.LeakyReLU(cfg.negative_slope)  # noqa: E731
        n = lambda c: norm2d(cfg.norm, c, cfg.track_running_stats)  # noqa: E731
        self.body = nn.Sequential(
            nn.Conv2d(cin, cout, 3, padding=1, bias=False), n(cout), act(),
            nn.Conv2d(cout, cout, 3, padding=1, bias=False), n(cout), act(),
            nn.Conv2d(cout, cout, 3, padding=1, bias=False), n(cout))
        self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), n(cout))
        self.out = nn.Sequential(act(), nn.MaxPool2d(2))
        self.drop = DropBlock(drop_block, cfg.block_size) if drop_block > 0 else nn.Identity()
        self.dropout = nn.Dropout(cfg.dropout) if cfg.dropout > 0 else nn.Identity()

    def forward(self, x):
        return self.dropout(self.drop(self.out(self.body(x) + self.shortcut(x))))


@register_backbone("resnet12", ResNet12Config, "ResNet-12 (64-160-320-640), global average pooling")
class ResNet12(nn.Module):
    def __init__(self, cfg: ResNet12Config, in_channels: int):
        super().__init__()
        blocks, c = [], in_channels
        for i, w in enumerate(cfg.widths):
            blocks.append(Block(c, w, cfg, cfg.drop_block if i >= 2 else 0.0))
            c = w
        self.blocks = nn.Sequential(*blocks)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="leaky_relu")

    def forward(self, x):
        return self.blocks(x).mean(dim=(-2, -1))
