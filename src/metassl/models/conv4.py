"""Conv4: the standard few-shot backbone (Vinyals et al. 2016; Snell et al. 2017; Finn et al. 2017).

Four blocks of [3x3 conv with `hidden` filters, normalization, ReLU, 2x2 max-pool], flattened: 64 features for
28x28 inputs (256 with `pool_ceil`), 1,600 for 84x84 with 64 filters. The ReLU is applied after the pool: the same
function and gradients, on a quarter of the elements (benchmarks/profile_training.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ..config import option
from .layers import NORMS, norm2d
from .registry import register_backbone


@dataclass
class Conv4Config:
    backbone: str = "conv4"
    hidden: int = option(64, range=(1, 4096), help="filters per conv layer (64 standard; 32 for MAML on miniImageNet)")
    depth: int = option(4, range=(1, 8), help="number of conv blocks")
    norm: str = option("batch", choices=NORMS)
    track_running_stats: bool = option(True, help="false: BatchNorm always uses batch statistics (MAML)")
    pool: str = option("max", choices=("max", "stride"), help="max-pool, or stride-2 convs without pooling")
    flatten: str = option("flatten", choices=("flatten", "avg"), help="flatten the last map or average-pool it")
    pool_ceil: bool = option(False, help="max-pool with ceil mode: 28x28 -> 2x2 maps, 256 features with 64 filters "
                                         "(the conv4 of PsCo's code), instead of 1x1 and 64")
    pool_blocks: int | None = option(None, range=(0, 8), help="max-pool only after the first this many blocks "
                                     "(Relation Networks: 2 of 4, 64x7x7 maps from 28x28); null: after every block")


@register_backbone("conv4", Conv4Config, "4 x [conv3x3, norm, ReLU, max-pool], flattened")
class Conv4(nn.Module):
    def __init__(self, cfg: Conv4Config, in_channels: int):
        super().__init__()
        layers: list[nn.Module] = []
        c = in_channels
        for i in range(cfg.depth):
            stride = 2 if cfg.pool == "stride" else 1
            layers += [nn.Conv2d(c, cfg.hidden, 3, stride=stride, padding=1), norm2d(cfg.norm, cfg.hidden,
                       cfg.track_running_stats)]
            # ReLU after the max-pool: the same values and gradients (a non-decreasing function commutes with max;
            # where the max is <= 0 both pass no gradient) on a quarter of the elements; parameter names unchanged
            if cfg.pool == "max" and (cfg.pool_blocks is None or i < cfg.pool_blocks):
                layers.append(nn.MaxPool2d(2, ceil_mode=cfg.pool_ceil))
            layers.append(nn.ReLU())
            c = cfg.hidden
        self.features = nn.Sequential(*layers)
        self.avg = cfg.flatten == "avg"

    def forward(self, x):
        x = self.features(x)
        return x.mean(dim=(-2, -1)) if self.avg else x.flatten(1)
