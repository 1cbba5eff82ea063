"""A 1-D convolutional backbone for fixed-length signals (time series, spectra, rows of a table read as a sequence):
blocks of [Conv1d(k, padding k // 2), norm, ReLU, MaxPool1d(2)] and the features averaged over the remaining
positions, so the embedding size is the last block's channels whatever the length. The 1-D analogue of Conv4
(Vinyals et al. 2016; Snell et al. 2017), as parallel-metalearn's few-shot time-series models use.

Inputs are [B, C, L] (`data.options.shape: [C, L]` for table rows, or an .npz `x` of shape [M, C, L]); vectors
[B, L] are read as one channel. Pooling stops once a block's input has fewer than 2 positions, so short signals
work. BatchNorm with `track_running_stats: false` for the MAML family, as for images.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ..config import ConfigError, option
from .registry import register_backbone


@dataclass
class Conv1dConfig:
    backbone: str = "conv1d"
    channels: list[int] = option(default_factory=lambda: [64, 64, 64, 64], help="output channels of each block")
    kernel: int = option(3, range=(1, 101), help="convolution width (odd keeps the length)")
    norm: str = option("batch", choices=("batch", "none"))
    track_running_stats: bool = option(True)

    def validate(self):
        if not self.channels or any(c < 1 for c in self.channels):
            raise ConfigError(f"model.channels must be a non-empty list of positive widths, got {self.channels}")


@register_backbone("conv1d", Conv1dConfig, "1-D conv blocks for signals [C, L], averaged over positions")
class Conv1d(nn.Module):
    def __init__(self, cfg: Conv1dConfig, in_channels: int, input_shape: tuple[int, ...] | None = None):
        super().__init__()
        if input_shape is None or len(input_shape) not in (1, 2):
            raise ConfigError(f"model.backbone=conv1d takes signals [C, L] or vectors [L]; the data set's inputs have "
                              f"shape {None if input_shape is None else list(input_shape)}: use conv4 / resnet12 for "
                              f"images, or data.options.shape=[C, L] for table rows")
        self.vector = len(input_shape) == 1
        c, length = (1, input_shape[0]) if self.vector else input_shape
        layers: list[nn.Module] = []
        for out in cfg.channels:
            layers.append(nn.Conv1d(c, out, cfg.kernel, padding=cfg.kernel // 2))
            if cfg.norm == "batch":
                layers.append(nn.BatchNorm1d(out, track_running_stats=cfg.track_running_stats))
            layers.append(nn.ReLU())
            length = length + 2 * (cfg.kernel // 2) - cfg.kernel + 1
            if length >= 2:
                layers.append(nn.MaxPool1d(2))
                length //= 2
            c = out
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        if self.vector:
            x = x.unsqueeze(1)
        return self.net(x).mean(-1)
