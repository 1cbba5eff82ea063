"""Vision Transformer (Dosovitskiy et al., "An Image is Worth 16x16 Words: Transformers for Image Recognition at
Scale", ICLR 2021) sized for small images, with the DeiT widths (Touvron et al. 2021): `tiny` 192-d, 3 heads, 12
blocks; `small` 384-d, 6 heads, 12 blocks (`dim`/`depth`/`heads` override them, e.g. for tiny tests).

Non-overlapping p x p patches (a stride-p convolution, `patch_embed`; p = 4 on 32x32 CIFAR, 4 or 7 on 28x28
Omniglot), a class token, position embeddings (learned, or the fixed 2-D sine-cosine ones of MoCo v3 / MAE), pre-norm
blocks [LayerNorm, multi-head self-attention through `F.scaled_dot_product_attention`; LayerNorm, MLP with GELU] with
residuals, a final LayerNorm, then the class token (`pool: cls`) or the mean of the patch tokens (`pool: mean`). No
BatchNorm: the output of an image does not depend on the other images of the batch. Everything is plain tensor
code, so the module runs under `torch.func.functional_call` and `vmap` (the MAML family) and exports to ONNX and
TorchScript.

Position embeddings are built for `model.image_size`; images of another size get them interpolated bicubically on
the 2-D patch grid (as DeiT / timm do when fine-tuning at another resolution). The class token has no position
embedding of its own (it would be a constant added to a learned vector). For MAE, `forward(x, keep_index, tokens=True)`
runs the encoder on a subset of the patch tokens (the visible ones), and `patchify` gives the pixel targets.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from ..config import ConfigError, option
from .registry import register_backbone

SIZES = {"tiny": (192, 12, 3), "small": (384, 12, 6)}  # DeiT: (width, depth, heads)


@dataclass
class ViTConfig:
    backbone: str = "vit"
    size: str = option("tiny", choices=tuple(SIZES), help="DeiT widths: tiny 192-d / 3 heads, small 384-d / 6 heads, "
                                                           "12 blocks each")
    dim: int | None = option(None, range=(1, 4096), help="token width; null: the size's")
    depth: int | None = option(None, range=(1, 64), help="transformer blocks; null: the size's (12)")
    heads: int | None = option(None, range=(1, 64), help="attention heads; null: the size's")
    mlp_ratio: float = option(4.0, range=(0.25, 16.0), help="MLP hidden width / token width")
    patch_size: int = option(4, range=(1, 1024), help="side of the square patches; must divide the image size")
    image_size: int = option(32, range=(1, 4096), help="the image side the position embeddings are built for; "
                                                       "other sizes interpolate them (bicubic)")
    pool: str = option("cls", choices=("cls", "mean"), help="features: the class token, or the mean of the patch "
                                                            "tokens (after the final LayerNorm)")
    pos_embed: str = option("learned", choices=("learned", "sincos"),
                            help="learned position embeddings, or fixed 2-D sine-cosine ones (MoCo v3, MAE)")
    qkv_bias: bool = option(True, help="biases in the query/key/value projection")
    attention: str = option("math", choices=("math", "fused"),
                            help="scaled_dot_product_attention's backend: math (twice differentiable, as the second-"
                                 "order MAML family needs; as fast on CPU at these token counts) or fused (torch "
                                 "picks flash / memory-efficient kernels: first-order gradients only)")

    def widths(self) -> tuple[int, int, int]:
        d, n, h = SIZES[self.size]
        return self.dim or d, self.depth or n, self.heads or h

    def validate(self):
        dim, _, heads = self.widths()
        if dim % heads:
            raise ConfigError(f"model.dim={dim} must be a multiple of model.heads={heads} (each head gets dim / "
                              f"heads channels)")
        if self.pos_embed == "sincos" and dim % 4:
            raise ConfigError(f"model.pos_embed=sincos needs model.dim divisible by 4 (sine and cosine of rows and "
                              f"columns), got {dim}")
        check_patch(self.patch_size, self.image_size, self.image_size, "model.image_size")


def check_patch(patch: int, h: int, w: int, what: str = "the images") -> None:
    if h % patch or w % patch:
        raise ConfigError(f"model.patch_size={patch} does not divide the image size {h}x{w} ({what}): use a patch "
                          f"size that divides it (e.g. 4 for 32x32 or 28x28, 7 for 28x28) or resize the images "
                          f"(data.image_size)")


def sincos_2d(gh: int, gw: int, dim: int) -> torch.Tensor:
    """Fixed 2-D sine-cosine position embeddings [gh * gw, dim] (row-major patches): the first half of the channels
    encodes the row, the second the column, each as [sin(pos w_i), cos(pos w_i)] with w_i = 10000^(-i / (dim / 4))."""
    if dim % 4:
        raise ValueError(f"sine-cosine position embeddings need a width divisible by 4, got {dim}")
    q = dim // 4
    omega = 1.0 / 10000 ** (torch.arange(q, dtype=torch.float32) / q)
    rows, cols = torch.meshgrid(torch.arange(gh, dtype=torch.float32), torch.arange(gw, dtype=torch.float32),
                                indexing="ij")

    def enc(pos):
        a = pos.reshape(-1, 1) * omega
        return torch.cat([a.sin(), a.cos()], 1)

    return torch.cat([enc(rows), enc(cols)], 1)


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int, qkv_bias: bool = True, attention: str = "math"):
        super().__init__()
        self.heads = heads
        # the fused kernels' backward is not differentiable again (MAML's second-order inner loop)
        self.backends = [SDPBackend.MATH] if attention == "math" else None
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # [B, heads, N, c / heads] each
        if self.backends is None:
            out = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(d)) v
        else:
            with sdpa_kernel(self.backends):
                out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class Block(nn.Module):
    """Pre-norm transformer block: x + MSA(LN(x)), then x + MLP(LN(x)) (Dosovitskiy et al. 2021, eq. 2-3)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True, attention: str = "math"):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads, qkv_bias, attention)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        hidden = max(1, int(dim * mlp_ratio))
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


def init_weights(module: nn.Module) -> None:
    # ViT / MAE initialization: truncated normal (std 0.02) linear weights, zero biases, unit LayerNorms
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


@register_backbone("vit", ViTConfig, "Vision Transformer (DeiT tiny/small widths) on small patches, class-token or "
                                     "mean pooling")
class ViT(nn.Module):
    def __init__(self, cfg: ViTConfig, in_channels: int):
        super().__init__()
        cfg.validate()
        dim, depth, heads = cfg.widths()
        self.patch_size, self.in_channels, self.dim = cfg.patch_size, in_channels, dim
        self.pool, self.image_size = cfg.pool, cfg.image_size
        self.grid = (cfg.image_size // cfg.patch_size, cfg.image_size // cfg.patch_size)
        self.patch_embed = nn.Conv2d(in_channels, dim, cfg.patch_size, stride=cfg.patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        n = self.grid[0] * self.grid[1]
        if cfg.pos_embed == "learned":
            self.pos_embed = nn.Parameter(torch.zeros(1, n, dim))
            nn.init.trunc_normal_(self.pos_embed, std=0.02)
        else:
            self.register_buffer("pos_embed", sincos_2d(*self.grid, dim).unsqueeze(0))
        self.blocks = nn.Sequential(*[Block(dim, heads, cfg.mlp_ratio, cfg.qkv_bias, cfg.attention)
                                      for _ in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.out_dim = dim
        init_weights(self)
        # the patch projection as a linear map of the flattened patch (Xavier uniform, as MAE and MoCo v3)
        nn.init.xavier_uniform_(self.patch_embed.weight.view(dim, -1))
        nn.init.zeros_(self.patch_embed.bias)
        nn.init.normal_(self.cls_token, std=0.02)

    # -- pieces MAE uses ------------------------------------------------------------------------------------------
    def patch_grid(self, h: int, w: int) -> tuple[int, int]:
        check_patch(self.patch_size, h, w)
        return h // self.patch_size, w // self.patch_size

    def patchify(self, images: torch.Tensor) -> torch.Tensor:
        """Images [B, C, H, W] -> patches [B, L, p * p * C] (row-major patches, each flattened as (p, p, C))."""
        b, c, h, w = images.shape
        gh, gw = self.patch_grid(h, w)
        p = self.patch_size
        x = images.reshape(b, c, gh, p, gw, p).permute(0, 2, 4, 3, 5, 1)
        return x.reshape(b, gh * gw, p * p * c)

    def unpatchify(self, patches: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """The inverse of `patchify`: [B, L, p * p * C] -> [B, C, H, W]."""
        b = patches.shape[0]
        gh, gw = self.patch_grid(h, w)
        p = self.patch_size
        x = patches.reshape(b, gh, gw, p, p, -1).permute(0, 5, 1, 3, 2, 4)
        return x.reshape(b, -1, h, w)

    def position_embedding(self, gh: int, gw: int) -> torch.Tensor:
        """[1, gh * gw, D]: the built embeddings, bicubically interpolated on the 2-D grid for another grid."""
        pos = self.pos_embed
        if (gh, gw) == self.grid:
            return pos
        d = pos.shape[-1]
        grid = pos.reshape(1, self.grid[0], self.grid[1], d).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=(gh, gw), mode="bicubic", align_corners=False)
        return grid.permute(0, 2, 3, 1).reshape(1, gh * gw, d)

    def embed_patches(self, x: torch.Tensor) -> torch.Tensor:
        """Images [B, C, H, W] -> patch tokens with position embeddings [B, L, D] (no class token)."""
        gh, gw = self.patch_grid(x.shape[-2], x.shape[-1])
        t = self.patch_embed(x).flatten(2).transpose(1, 2)
        return t + self.position_embedding(gh, gw)

    def forward_tokens(self, x: torch.Tensor, keep_index: torch.Tensor | None = None) -> torch.Tensor:
        """All output tokens [B, 1 + K, D] after the final LayerNorm: the class token, then the patch tokens
        (all L of them, or the K at `keep_index` [B, K], in that order)."""
        t = self.embed_patches(x)
        if keep_index is not None:
            t = torch.gather(t, 1, keep_index.unsqueeze(-1).expand(-1, -1, t.shape[-1]))
        cls = self.cls_token.expand(t.shape[0], -1, -1)
        return self.norm(self.blocks(torch.cat([cls, t], 1)))

    def forward(self, x: torch.Tensor, keep_index: torch.Tensor | None = None, tokens: bool = False) -> torch.Tensor:
        """Images [B, C, H, W] -> features [B, D] (`tokens`: every output token, see `forward_tokens`)."""
        out = self.forward_tokens(x, keep_index)
        if tokens:
            return out
        return out[:, 0] if self.pool == "cls" else out[:, 1:].mean(1)

