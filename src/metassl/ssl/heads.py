"""Projection and prediction heads (MLPs) as in the papers.

A head is an `nn.Module` used only as a stateless shape: its parameters are the learner's `learner.<head>.*` tensors
(from `init_params`) and its BatchNorm running statistics are `learner.<head>.*` buffers (from `init_buffers`); it is
always called through `torch.func.functional_call` with those tensors.

Shapes used by the methods (input D = the encoder's feature size, 512 for ResNet-18):
- SimCLR     D -> hidden, BN, ReLU -> 128                  (paper: hidden 2048; lightly CIFAR-10: 512)
- MoCo v2    D -> hidden, ReLU -> 128                      (no BN, as the MoCo v2 code)
- BYOL       projector D -> 4096, BN, ReLU -> 256; predictor 256 -> 4096, BN, ReLU -> 256 (lightly: 1024 hidden)
- SimSiam    projector D -> 2048, BN, ReLU -> 2048, BN, ReLU -> 2048, BN (3 layers; CIFAR: 2 layers);
             predictor 2048 -> 512, BN, ReLU -> 2048
- Barlow Twins projector D -> 8192, BN, ReLU -> 8192, BN, ReLU -> 8192 (lightly CIFAR-10: 2 layers of 2048)
- VICReg     expander D -> 8192, BN, ReLU -> 8192, BN, ReLU -> 8192
- RotNet     classifier D -> 4 (linear), or D -> hidden, BN, ReLU -> 4
"""

from __future__ import annotations

from torch import nn


class MLPHead(nn.Module):
    """Linear layers `dims[0] -> dims[1] -> ... -> dims[-1]`; each hidden layer is followed by BatchNorm (when
    `hidden_bn`) and ReLU; the output layer by BatchNorm when `last_bn` (SimSiam's projector)."""

    def __init__(self, dims: list[int], hidden_bn: bool = True, last_bn: bool = False, last_bn_affine: bool = True):
        super().__init__()
        if len(dims) < 2 or any(d < 1 for d in dims):
            raise ValueError(f"an MLP head needs at least an input and an output width, got {dims}")
        layers: list[nn.Module] = []
        for i in range(len(dims) - 1):
            last = i == len(dims) - 2
            bn = last_bn if last else hidden_bn
            layers.append(nn.Linear(dims[i], dims[i + 1], bias=not bn))  # a bias before BatchNorm is redundant
            if bn:
                layers.append(nn.BatchNorm1d(dims[i + 1], affine=(last_bn_affine if last else True)))
            if not last:
                layers.append(nn.ReLU())
        self.layers = nn.Sequential(*layers)

    def forward(self, x):
        return self.layers(x)


def mlp_dims(in_dim: int, hidden: int, out: int, layers: int) -> list[int]:
    """[in, hidden, ..., hidden, out] with `layers` linear layers."""
    if layers < 1:
        raise ValueError(f"a head needs at least one layer, got {layers}")
    return [in_dim] + [hidden] * (layers - 1) + [out]
