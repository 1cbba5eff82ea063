"""MAE: masked autoencoders (He, Chen, Xie, Li, Dollar & Girshick, "Masked Autoencoders Are Scalable Vision
Learners", CVPR 2022). Requires `model.backbone: vit`.

Per image, a random `mask_ratio` (0.75) of the ViT's patches is masked: uniform noise per patch, argsort, the first
L (1 - ratio) (rounded down, at least one) are kept, so every image has exactly the same number of visible
patches. The encoder (the ViT with its class token) runs on the visible patch tokens only. A lightweight decoder
(its own transformer: `decoder_dim` wide, `decoder_depth` blocks, `decoder_heads` heads; the paper's default 512 /
8 / 16) embeds the encoder's tokens, appends a shared learned mask token for every masked patch, unshuffles all
tokens back to image order (`unshuffle`), adds fixed 2-D sine-cosine position embeddings, and predicts every
patch's pixels (p x p x C values). The loss is the mean squared error on the masked patches only, against the
patch's pixels normalized by their own mean and variance (`norm_pix_loss`, on by default as the paper's best
setting; the variance is the unbiased one, as the authors' code).

The noise comes from torch's generator, which the engine seeds and saves in every checkpoint (so a resumed run
draws the same masks); on several processes each process draws the masks of its own share. Evaluation, kNN,
linear probe, few-shot episodes and `init_from` read the encoder's features of whole, unmasked images (the ViT's
`pool`: class token or mean of the patch tokens), as for every SSL learner. Each view of the batch is one image
(the presets use one view: random resized crop + flip, as the paper).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call

from ..config import ConfigError, option
from ..learners.base import LearnerSpec, register_learner, sub
from ..models.vit import Block, ViT, init_weights, sincos_2d
from .base import SSLConfig, SSLLearner, fp32

DECODER = "learner.decoder."


@dataclass
class MAEConfig(SSLConfig):
    name: str = "mae"
    collapse_threshold: float = option(0.0, range=(0.0, 1.0), help="warn when embedding_std x sqrt(D) of the "
                                       "visible-patch features falls below this (0: off; a reconstruction loss "
                                       "cannot collapse the way a joint-embedding loss can)")
    mask_ratio: float = option(0.75, range=(0.0, 0.99), help="fraction of the patches masked per image (paper: 0.75)")
    norm_pix_loss: bool = option(True, help="targets: each patch's pixels normalized by their mean and variance "
                                            "(paper's default); false: the raw (preprocessed) pixels")
    decoder_dim: int = option(512, range=(1, 4096), help="decoder width (paper: 512)")
    decoder_depth: int = option(8, range=(1, 64), help="decoder transformer blocks (paper: 8)")
    decoder_heads: int = option(16, range=(1, 64), help="decoder attention heads (paper: 16)")

    def validate(self):
        if self.decoder_dim % self.decoder_heads or self.decoder_dim % 4:
            raise ConfigError(f"learner.decoder_dim={self.decoder_dim} must be a multiple of learner.decoder_heads="
                              f"{self.decoder_heads} and of 4 (sine-cosine position embeddings)")


def random_masking(noise: torch.Tensor, mask_ratio: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """From noise [B, L]: (keep [B, K] indices of the visible patches, in the order of increasing noise; restore
    [B, L] the permutation back to image order; mask [B, L] 1 for masked, 0 for visible patches), with
    K = max(1, floor(L (1 - mask_ratio))) for every image."""
    b, length = noise.shape
    k = max(1, int(length * (1 - mask_ratio)))
    shuffle = torch.argsort(noise, dim=1)
    restore = torch.argsort(shuffle, dim=1)
    mask = torch.ones(b, length, device=noise.device)
    mask[:, :k] = 0
    return shuffle[:, :k], restore, torch.gather(mask, 1, restore)


def unshuffle(visible: torch.Tensor, mask_token: torch.Tensor, restore: torch.Tensor) -> torch.Tensor:
    """Visible tokens [B, K, D] (in keep order) + mask tokens for the L - K others, put back in image order with
    `restore` [B, L]: [B, L, D]."""
    b, k, d = visible.shape
    length = restore.shape[1]
    full = torch.cat([visible, mask_token.to(visible.dtype).expand(b, length - k, d)], 1)
    return torch.gather(full, 1, restore.unsqueeze(-1).expand(-1, -1, d))


def patch_targets(patches: torch.Tensor, norm_pix: bool) -> torch.Tensor:
    """The reconstruction targets of patches [B, L, P]: each patch normalized by its own mean and (unbiased)
    variance when `norm_pix` (MAE's normalized pixels), else unchanged."""
    if not norm_pix:
        return patches
    mean = patches.mean(-1, keepdim=True)
    var = patches.var(-1, keepdim=True)
    return (patches - mean) / (var + 1e-6) ** 0.5


def mae_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the masked patches (mask 1) of the per-patch mean squared error between pred and target [B, L, P]."""
    per_patch = (pred.float() - target.float()).pow(2).mean(-1)
    return (per_patch * mask).sum() / mask.sum()


class MAEDecoder(nn.Module):
    """The decoder: encoder tokens [B, 1 + K, E] -> pixel predictions [B, L, p * p * C] for every patch."""

    def __init__(self, enc_dim: int, dim: int, depth: int, heads: int, out_dim: int):
        super().__init__()
        self.dim = dim
        self.embed = nn.Linear(enc_dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.blocks = nn.Sequential(*[Block(dim, heads) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pred = nn.Linear(dim, out_dim)
        init_weights(self)
        nn.init.normal_(self.mask_token, std=0.02)

    def forward(self, tokens: torch.Tensor, restore: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        x = self.embed(tokens)
        patches = unshuffle(x[:, 1:], self.mask_token, restore)
        pos = sincos_2d(grid[0], grid[1], self.dim).to(x.device, x.dtype)
        x = torch.cat([x[:, :1], patches + pos], 1)  # the class token keeps no position (a zero embedding)
        return self.pred(self.norm(self.blocks(x)))[:, 1:]


class MAE(SSLLearner):
    global_loss = False  # a mean over images: each process's share of it
    views_required = None  # every view is an image to reconstruct
    min_batch = 1

    def __init__(self, config, encoder, options=None):
        if not isinstance(encoder, ViT):
            raise ConfigError(f"learner mae masks the patches of a Vision Transformer: set model.backbone=vit (the "
                              f"encoder is {type(encoder).__name__})")
        super().__init__(config, encoder, options)

    def build_heads(self, feature_dim):
        c, e = self.config, self.encoder
        return {"decoder": MAEDecoder(e.dim, c.decoder_dim, c.decoder_depth, c.decoder_heads,
                                      e.patch_size ** 2 * e.in_channels)}

    def loss(self, params, buffers, batch):
        views = batch.views
        self.check_batch(views)
        images = views.reshape(-1, *views.shape[-3:])
        h, w = images.shape[-2:]
        grid = self.encoder.patch_grid(h, w)
        noise = torch.rand(images.shape[0], grid[0] * grid[1], device=images.device)
        keep, restore, mask = random_masking(noise, self.config.mask_ratio)
        enc = {**sub(params, "encoder."), **sub(buffers, "encoder.")}
        tokens = functional_call(self.encoder, enc, (images,), {"keep_index": keep, "tokens": True})
        dec = self.heads["decoder"]
        pred = functional_call(dec, sub({**params, **buffers}, DECODER), (tokens, restore, grid))
        with fp32(pred):
            target = patch_targets(self.encoder.patchify(images).float(), self.config.norm_pix_loss)
            loss = mae_loss(pred, target, mask)
        z = tokens[:, 0] if self.encoder.pool == "cls" else tokens[:, 1:].mean(1)
        return self.output(loss, {"visible_patches": torch.tensor(float(keep.shape[1]))}, z.detach())


register_learner(LearnerSpec(
    "mae", MAEConfig, MAE,
    "masked autoencoder: a ViT encodes the visible 25% of patches, a small decoder reconstructs the masked pixels",
    default_source="views"))
