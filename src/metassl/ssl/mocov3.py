"""MoCo v3 (Chen, Xie & He, "An Empirical Study of Training Self-Supervised Vision Transformers", ICCV 2021).

Two views; the online branch is encoder -> projector -> predictor, the momentum branch a copy of encoder and
projector (`learner.target.*` buffers, target <- m target + (1 - m) online after each step, m following a cosine
schedule from `momentum` = 0.99 to 1 as in the paper). No queue: the keys are the other view's momentum projections
of the same (global) batch. With q = predictor(projector(f(x1))), k = target(x2), both L2-normalized, the loss of
the paper's pseudo-code (Algorithm 1) is

    ctr(q, k) = CrossEntropy(q k^T / tau, labels = [0 .. B-1]) * 2 tau,    L = ctr(q1, k2) + ctr(q2, k1),

the factor 2 tau making the gradient's scale independent of tau. Heads as the paper (`mlp_dim` 4096, output 256,
BatchNorm after every hidden layer and a non-affine BatchNorm after the projector's output, no biases before a
BatchNorm): projector 3 layers for a ViT, 2 for a ResNet (`proj_layers: null` picks by the backbone), predictor 2.

Frozen random patch projection (Sec. 4.2 of the paper, for ViTs): with `freeze_patch_embed` (default: on when the
backbone is `vit`), the ViT's patch embedding (`encoder.patch_embed.*`) keeps its random initialization. It is
implemented by detaching those tensors before the encoder runs, so they receive no gradient at all: their `.grad`
stays None, every optimizer here then skips them (no update, no weight decay), and their momentum copy, moved
towards an unchanging tensor from an equal start, stays equal to them.

Deviation: the paper computes each process's queries against the keys of all processes; here (as in
every metassl SSL method) every process computes the loss of the gathered global batch, which is the same loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..config import ConfigError, option
from ..learners.base import LearnerSpec, register_learner
from .base import SSLConfig, SSLLearner, fp32, gather_batch, momentum_cosine
from .heads import MLPHead, mlp_dims

PATCH_EMBED = "encoder.patch_embed."


@dataclass
class MoCoV3Config(SSLConfig):
    name: str = "mocov3"
    temperature: float = option(0.2, range=(1e-4, 10.0), help="tau of the contrastive loss (paper: 0.2 for ViT, "
                                                               "1.0 for ResNet-50)")
    momentum: float = option(0.99, range=(0.0, 1.0), help="momentum m of the key encoder at step 0 (paper: 0.99)")
    momentum_schedule: str = option("cosine", choices=("cosine", "constant"),
                                    help="cosine from m to 1 over training (paper), or constant m")
    proj_hidden: int = option(4096, range=(1, None), help="projector / predictor hidden width (paper: 4096)")
    proj_dim: int = option(256, range=(1, None), help="output size of projector and predictor (paper: 256)")
    proj_layers: int | None = option(None, range=(1, 8), help="linear layers of the projector; null: 3 for a ViT, "
                                                               "2 otherwise (paper)")
    pred_hidden: int | None = option(None, range=(1, None), help="predictor hidden width; null: proj_hidden")
    freeze_patch_embed: bool | None = option(None, help="keep the ViT's random patch projection fixed (paper, "
                                                        "Sec. 4.2); null: on for model.backbone=vit")


def mocov3_loss(q: torch.Tensor, k: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """ctr(q, k) of the MoCo v3 pseudo-code: queries q [B, D] against keys k [B, D] (no gradient) of the same batch,
    both L2-normalized, logits q k^T / tau, the positive of query i is key i; cross-entropy x 2 tau. Returns (loss,
    top-1 accuracy of finding the positive)."""
    if q.dim() != 2 or q.shape != k.shape or q.shape[0] < 2:
        raise ValueError(f"mocov3_loss: q and k [B, D] with B >= 2 expected (the other keys are the negatives), got "
                         f"{tuple(q.shape)} and {tuple(k.shape)}")
    q = F.normalize(q.float(), dim=1)
    k = F.normalize(k.detach().float(), dim=1)
    logits = q @ k.t() / temperature
    labels = torch.arange(q.shape[0], device=q.device)
    loss = F.cross_entropy(logits, labels) * (2 * temperature)
    return loss, (logits.argmax(1) == labels).float().mean().detach()


def is_vit(encoder) -> bool:
    return type(encoder).__name__ == "ViT" and hasattr(encoder, "patch_embed")


class MoCoV3(SSLLearner):
    target_heads = ("projector",)
    min_batch_reason = "the keys of the other images of the batch are the negatives"

    def __init__(self, config, encoder, options=None):
        super().__init__(config, encoder, options)
        vit = is_vit(encoder)
        if config.freeze_patch_embed and not vit:
            raise ConfigError(f"learner.freeze_patch_embed=true freezes a ViT's patch projection, but the encoder is "
                              f"{type(encoder).__name__}; set model.backbone=vit or learner.freeze_patch_embed=false")
        self.freeze = vit if config.freeze_patch_embed is None else bool(config.freeze_patch_embed)
        self.proj_layers = config.proj_layers or (3 if vit else 2)

    def build_heads(self, feature_dim):
        c = self.config
        return {"projector": MLPHead(mlp_dims(feature_dim, c.proj_hidden, c.proj_dim, self.proj_layers),
                                     last_bn=True, last_bn_affine=False),
                "predictor": MLPHead([c.proj_dim, c.pred_hidden or c.proj_hidden, c.proj_dim])}

    def online(self, params):
        """The parameters the loss differentiates: the patch projection detached when it is frozen."""
        if not self.freeze:
            return params
        return {k: (v.detach() if k.startswith(PATCH_EMBED) else v) for k, v in params.items()}

    def loss(self, params, buffers, batch):
        views = batch.views
        self.check_batch(views)
        params = self.online(params)
        tensors = {**params, **buffers}
        v, b = views.shape[:2]
        h = self.embed(params, buffers, views).reshape(v * b, -1)
        z = self.head("projector", tensors, h)
        p = gather_batch(self.head("predictor", tensors, z).reshape(v, b, -1), 1)
        k = self.target_forward(buffers, views)  # [2, B, D], no gradient, gathered
        t = self.config.temperature
        with fp32(p):
            l12, a12 = mocov3_loss(p[0], k[1], t)
            l21, a21 = mocov3_loss(p[1], k[0], t)
        return self.output(l12 + l21, {"contrastive_acc": (a12 + a21) / 2}, p[0])

    def update(self, params, buffers, state, step, total_steps):
        c = self.config
        m = c.momentum if c.momentum_schedule == "constant" else momentum_cosine(c.momentum, step, total_steps)
        return self.ema_update(params, buffers, m)


register_learner(LearnerSpec(
    "mocov3", MoCoV3Config, MoCoV3,
    "contrastive: symmetric InfoNCE against a momentum encoder's keys of the same batch, predictor; frozen random "
    "patch projection for ViT",
    default_source="views"))
