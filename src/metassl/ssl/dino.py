"""DINO (Caron, Touvron, Misra, Jégou, Mairal, Bojanowski & Joulin, "Emerging Properties in Self-Supervised Vision
Transformers", ICCV 2021).

Self-distillation without labels: a student network (encoder + DINO head) matches the output distribution of a
teacher, an exponential moving average of the student (`learner.target.*` buffers; momentum cosine from 0.996 to 1,
as BYOL). The teacher sees the 2 global views only, the student every view (the global views and the
`tasks.local_crops` local crops of multi-crop); the loss is the cross-entropy between the teacher's distribution of
one view and the student's of every other view (`losses.dino_loss`). Collapse is avoided by centring (the teacher's
outputs minus a centre `learner.center`, an EMA (0.9) of their batch mean, returned by `update` as a new value) and
sharpening (teacher temperature 0.04 warmed up linearly to 0.07 over `teacher_temp_warmup_steps`; student 0.1).

The head (paper, section 3.1 / appendix): a 3-layer MLP (hidden 2048, GELU) to a 256-d bottleneck, L2-normalized,
then a weight-normalized linear layer to `out_dim` (65536 in the paper) with its norm g fixed to 1: W = V / ||V||
row-wise, computed from `learner.head.last_layer.weight` in the forward (no weight_norm hooks, so the head works
under `functional_call`). `freeze_last_layer_steps` keeps that layer fixed for the first steps, as the paper does
for the first epoch (its gradient is zeroed inside the loss; the step count is the buffer `learner.step`).

The global and the local crops go through the encoder in two calls (one per size, as the authors' code groups
crops by resolution), so BatchNorm layers normalize each size separately.
Deviations: the weight-decay cosine schedule (0.04 -> 0.4) is replaced by a constant `optim.weight_decay`; the
paper's last-layer freezing sets the gradient to None (the optimizer skips it), here it is zero, which leaves the
layer's normalized weights unchanged under SGD, Adam and weight decay alike (a row's norm does not matter).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ConfigError, option
from ..data.augment import AugmentSpec
from ..learners.base import LearnerSpec, register_learner
from .base import TARGET, SSLConfig, SSLLearner, fp32, gather_batch, momentum_cosine
from .losses import dino_center, dino_loss, teacher_temperature

CENTER, STEP = "learner.center", "learner.step"
LAST = "learner.head.last_layer.weight"


@dataclass
class DINOConfig(SSLConfig):
    name: str = "dino"
    out_dim: int = option(65536, range=(1, None), help="prototypes K of the head's last layer (paper: 65536; "
                                                       "4096 is plenty for small data)")
    hidden: int = option(2048, range=(1, None), help="head MLP hidden width")
    bottleneck: int = option(256, range=(1, None), help="head bottleneck (L2-normalized) width")
    head_layers: int = option(3, range=(1, 8), help="linear layers of the head MLP before the bottleneck output")
    head_bn: bool = option(False, help="BatchNorm in the head MLP (paper: off for ViT, on in its ResNet-50 runs)")
    student_temp: float = option(0.1, range=(1e-4, 10.0), help="student temperature")
    teacher_temp: float = option(0.07, range=(1e-4, 10.0), help="teacher temperature after the warm-up")
    warmup_teacher_temp: float = option(0.04, range=(1e-4, 10.0), help="teacher temperature at step 0")
    teacher_temp_warmup_steps: int = option(0, range=(0, None), help="steps of the linear teacher temperature "
                                                                     "warm-up (paper: 30 epochs; 0: none)")
    center_momentum: float = option(0.9, range=(0.0, 1.0), help="EMA momentum of the centre")
    momentum: float = option(0.996, range=(0.0, 1.0), help="teacher EMA momentum at step 0 (cosine to 1)")
    momentum_schedule: str = option("cosine", choices=("cosine", "constant"),
                                    help="cosine from `momentum` to 1 (paper), or constant")
    freeze_last_layer_steps: int = option(0, range=(0, None), help="keep the head's last layer fixed for this many "
                                                                   "steps (paper: 1 epoch)")


class DINOHead(nn.Module):
    """MLP (GELU) -> bottleneck -> L2 normalization -> weight-normalized linear layer with g = 1 (no bias)."""

    def __init__(self, in_dim: int, hidden: int, bottleneck: int, out_dim: int, layers: int = 3, bn: bool = False):
        super().__init__()
        dims = [in_dim] + [hidden] * (layers - 1) + [bottleneck]
        mods: list[nn.Module] = []
        for i in range(len(dims) - 1):
            mods.append(nn.Linear(dims[i], dims[i + 1]))
            if i < len(dims) - 2:
                if bn:
                    mods.append(nn.BatchNorm1d(dims[i + 1]))
                mods.append(nn.GELU())
        self.mlp = nn.Sequential(*mods)
        self.last_layer = nn.Linear(bottleneck, out_dim, bias=False)
        for m in self.modules():  # the authors' init: truncated normal (std 0.02), zero bias
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x):
        x = F.normalize(self.mlp(x), dim=-1)
        return F.linear(x, F.normalize(self.last_layer.weight, dim=1))  # weight norm with g = 1


class DINO(SSLLearner):
    target_heads = ("head",)
    multi_crop = True
    min_batch_reason = "the centre and the encoder's batch statistics are batch means"

    def build_heads(self, feature_dim):
        c = self.config
        return {"head": DINOHead(feature_dim, c.hidden, c.bottleneck, c.out_dim, c.head_layers, c.head_bn)}

    def init_buffers(self, params, buffers):
        out = super().init_buffers(params, buffers)
        out[CENTER] = torch.zeros(1, self.config.out_dim)
        out[STEP] = torch.zeros((), dtype=torch.int64)
        return out

    def teacher_temp(self, step):
        c = self.config
        return teacher_temperature(step, c.warmup_teacher_temp, c.teacher_temp, c.teacher_temp_warmup_steps)

    def loss(self, params, buffers, batch):
        c = self.config
        self.check_batch(batch.views)
        tensors = {**params, **buffers}
        if c.freeze_last_layer_steps > 0:  # zero gradient for the last layer during the first steps, no host read
            w = params[LAST]
            tensors[LAST] = torch.where(buffers[STEP] < c.freeze_last_layer_steps, w.detach(), w)
        h, feats = student_features(self, params, buffers, batch)
        v, b = h.shape[:2]
        s = gather_batch(self.head("head", tensors, h.reshape(v * b, -1)).reshape(v, b, -1), 1)
        t = self.target_forward(buffers, batch.views)  # [2, B, K]: the teacher sees the global views only
        temp = self.teacher_temp(buffers[STEP])
        with fp32(s):
            loss, metrics = dino_loss(s, t, buffers[CENTER], c.student_temp, temp)
        state = {"teacher_mean": t.detach().float().reshape(-1, t.shape[-1]).mean(0, keepdim=True)}
        return self.output(loss, {**metrics, "teacher_temp": temp.detach()}, feats, state)

    def update(self, params, buffers, state, step, total_steps):
        c = self.config
        m = momentum_cosine(c.momentum, step, total_steps) if c.momentum_schedule == "cosine" else c.momentum
        new = self.ema_update(params, buffers, m)
        if "teacher_mean" in state:
            new[CENTER] = dino_center(buffers[CENTER], state["teacher_mean"], c.center_momentum)
        new[STEP] = buffers[STEP] + 1
        return new


def student_features(learner: SSLLearner, params, buffers, batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Encoder features of every view for a multi-crop learner: [V + M, B, D] (the global views, then the local
    crops; one encoder call per crop size) and the first global view's features (gathered; the collapse monitor)."""
    h = learner.embed(params, buffers, batch.views)
    local = getattr(batch, "local_views", None)
    if local is not None:
        hl = learner.embed(params, buffers, local)
        if hl.shape[-1] != h.shape[-1]:
            raise ConfigError(f"learner {learner.config.name}: the encoder gives {h.shape[-1]} features for the "
                              f"{tuple(batch.views.shape[-2:])} global views but {hl.shape[-1]} for the "
                              f"{tuple(local.shape[-2:])} local crops; use a backbone that pools globally (e.g. "
                              f"model.flatten=avg for conv4) or another tasks.local_size")
        h = torch.cat([h, hl])
    return h, gather_batch(h[0], 0)


def augment_views(spec: AugmentSpec) -> AugmentSpec:
    """DINO's views on the colour recipes (paper, appendix; BYOL's asymmetric blur/solarization): global view 1
    always blurred, global view 2 blurred with probability 0.1 and solarized with 0.2, local crops blurred with 0.5
    (the per-view tuples continue over the local crops, see `augment.local_crops`). Global crop scale (0.4, 1)
    (the paper's, set by its presets). Presets without colour jitter (characters) are unchanged."""
    if not spec.jitter:
        return spec
    return replace(spec, preset=f"{spec.preset}/dino", jitter_strength=(0.4, 0.4, 0.2, 0.1),
                   solarize=(0.0, 0.2, 0.0), blur=(1.0, 0.1, 0.5) if any(spec.blur) else spec.blur)


register_learner(LearnerSpec(
    "dino", DINOConfig, DINO,
    "self-distillation: an EMA teacher's centred, sharpened outputs on global views, student on all (multi-crop)",
    default_source="views", augment=augment_views))

__all__ = ["DINO", "DINOConfig", "DINOHead", "TARGET", "student_features"]
