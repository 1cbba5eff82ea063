"""ResNet-18 (He et al. 2016) as an encoder: 512 features after global average pooling (no classifier), the
representation self-supervised methods put their projection heads on.

`stem: cifar` (default): a 3x3 convolution with stride 1 and no max-pool, the standard change for 32x32 images
(SimCLR's CIFAR-10 experiments, lightly's ResNetGenerator, solo-learn); `stem: imagenet`: the original 7x7 stride-2
convolution + 3x3 stride-2 max-pool. Four stages of two basic blocks, widths 64-128-256-512 (x `width / 64`).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ..config import option
from .layers import NORMS, norm2d
from .registry import register_backbone


@dataclass
class ResNet18Config:
    backbone: str = "resnet18"
    stem: str = option("cifar", choices=("cifar", "imagenet"),
                       help="cifar: 3x3 conv stride 1, no max-pool; imagenet: 7x7 stride 2 + max-pool")
    width: int = option(64, range=(1, 1024), help="channels of the first stage (64: the standard ResNet-18)")
    norm: str = option("batch", choices=NORMS)
    track_running_stats: bool = option(True)
    zero_init_residual: bool = option(False, help="initialize each block's last BN scale to 0 (Goyal et al. 2017)")


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, cfg: ResNet18Config):
        super().__init__()
        n = lambda c: norm2d(cfg.norm, c, cfg.track_running_stats)  # noqa: E731
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = n(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = n(cout)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), n(cout))

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


@register_backbone("resnet18", ResNet18Config, "ResNet-18 (CIFAR stem by default), global average pooling: 512 features")
class ResNet18(nn.Module):
    def __init__(self, cfg: ResNet18Config, in_channels: int):
        super().__init__()
        w = cfg.width
        if cfg.stem == "cifar":
            self.stem = nn.Sequential(nn.Conv2d(in_channels, w, 3, stride=1, padding=1, bias=False),
                                      norm2d(cfg.norm, w, cfg.track_running_stats), nn.ReLU(inplace=True))
        else:
            self.stem = nn.Sequential(nn.Conv2d(in_channels, w, 7, stride=2, padding=3, bias=False),
                                      norm2d(cfg.norm, w, cfg.track_running_stats), nn.ReLU(inplace=True),
                                      nn.MaxPool2d(3, stride=2, padding=1))
        stages, c = [], w
        for i, mult in enumerate((1, 2, 4, 8)):
            cout = w * mult
            stride = 1 if i == 0 else 2
            stages.append(nn.Sequential(BasicBlock(c, cout, stride, cfg), BasicBlock(cout, cout, 1, cfg)))
            c = cout
        self.stages = nn.Sequential(*stages)
        self.out_dim = c
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        if cfg.zero_init_residual and cfg.norm == "batch":
            for m in self.modules():
                if isinstance(m, BasicBlock):
                    nn.init.zeros_(m.bn2.weight)

    def forward(self, x):
        return self.stages(self.stem(x)).mean(dim=(-2, -1))
