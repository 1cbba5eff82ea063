"""What the self-supervised learners share: heads as stateless shapes, momentum (EMA) target networks, the collapse
monitor, and evaluation by nearest class mean on frozen encoder features.

An SSL learner is a `Learner` (see `metassl.learners.base`) whose training batches are `ViewBatch`es (`tasks.source:
views`, the default of every SSL method): `loss(params, buffers, views)` returns a `LossOutput` with the metrics to
log and, for MoCo, the keys for `update` in its `state`. Its few-shot
evaluation needs no training on the episode: `adapt` averages the frozen encoder's features of each class's support
images (L2-normalized first with the default cosine distance) and `classify` scores queries by cosine similarity
(x 10, i.e. temperature 0.1, which only sharpens the probabilities used for ROC-AUC) or negative squared Euclidean
distance, so any SSL checkpoint evaluates with `metassl eval` few-shot episodes unchanged.

Momentum targets (BYOL, MoCo): `learner.target.encoder.*` and `learner.target.projector.*` are buffers holding a
copy of the online encoder and projector (parameters and BatchNorm statistics), created by `init_buffers`. The
target's forward is `functional_call` of the same module shapes with those tensors (its BatchNorm statistics update
in place, as a separate network's would); `update` returns the target parameters moved towards the online ones:
target <- m target + (1 - m) online, one fused `torch._foreach_lerp` over all tensors (the `_foreach` ops are
public by convention: documented in torch.optim's implementation notes, used by every torch optimizer).
"""

from __future__ import annotations

import contextlib
import math
import warnings
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from ..config import ConfigError, LearnerConfig, option
from ..learners.base import ENCODER, Learner, LossOutput, sub
from ..learners.protonet import prototypes, squared_euclidean
from .. import parallel
from ..models.layers import use_global_batch_statistics
from .heads import MLPHead, mlp_dims
from .losses import embedding_std

Tensors = dict[str, torch.Tensor]
TARGET = "learner.target."


@dataclass
class SSLConfig(LearnerConfig):
    """Options every SSL learner has (beside the engine options of `LearnerConfig`)."""

    name: str = "ssl"
    eval_distance: str = option("cosine", choices=("cosine", "euclidean"),
                                help="few-shot evaluation: nearest class mean of frozen encoder features by cosine "
                                     "similarity or squared Euclidean distance")
    collapse_threshold: float = option(0.05, range=(0.0, 1.0),
                                       help="warn when embedding_std x sqrt(D) falls below this (1: perfectly "
                                            "spread, 0: every image has the same embedding)")


def fp32(x: torch.Tensor):
    """A context in which autocast is off (the losses are computed in float32 even under bf16 autocast)."""
    return torch.autocast(x.device.type, enabled=False) if torch.is_autocast_enabled(x.device.type) else \
        contextlib.nullcontext()


def momentum_cosine(base: float, step: int, total_steps: int) -> float:
    """BYOL's target decay: tau = 1 - (1 - base) (cos(pi k / K) + 1) / 2, from `base` at k = 0 to 1 at k = K."""
    k = min(max(step, 0), max(total_steps, 1))
    return 1.0 - (1.0 - base) * (math.cos(math.pi * k / max(total_steps, 1)) + 1.0) / 2.0


def gather_batch(x: torch.Tensor, dim: int) -> torch.Tensor:
    """`x` with its batch dimension `dim` gathered over the processes (rank order; identity on one process), with
    gradients to every process's share (see `metassl.parallel.gather`)."""
    if not parallel.active():
        return x
    return parallel.gather(x.movedim(dim, 0)).movedim(0, dim)


class SSLLearner(Learner):
    #: the loss is computed on the embeddings of the global batch (gathered over the processes)
    global_loss = True
    #: views per image the loss needs (None: any number >= 1)
    views_required: int | None = 2
    #: smallest batch the loss is defined for, and why
    min_batch: int = 2
    min_batch_reason: str = "the loss needs other images in the batch"
    #: heads copied into the momentum target (BYOL, MoCo); empty: no target network
    target_heads: tuple[str, ...] = ()

    def __init__(self, config: Any, encoder: nn.Module, options=None):
        super().__init__(config, encoder, options)
        self.heads: dict[str, nn.Module] = {}  # shapes only, built with the encoder's feature size by init_params
        self.feature_dim: int | None = None

    # -- heads ----------------------------------------------------------------------------------------------------
    def build_heads(self, feature_dim: int) -> dict[str, nn.Module]:
        """The method's heads for encoder features of size `feature_dim` (name -> module). Default: the projection
        MLP of the config's `proj_hidden`/`proj_dim`/`proj_layers` (SimCLR, Barlow Twins, VICReg), else none."""
        c = self.config
        if not hasattr(c, "proj_dim"):
            return {}
        return {"projector": MLPHead(mlp_dims(feature_dim, c.proj_hidden, c.proj_dim, c.proj_layers))}

    def init_params(self, feature_dim: int, ways: int) -> Tensors:
        self.feature_dim = feature_dim
        self.heads = self.build_heads(feature_dim)
        if self.options.global_batchnorm:
            for head in self.heads.values():
                use_global_batch_statistics(head)
        return {f"learner.{name}.{k}": v.detach().clone() for name, head in self.heads.items()
                for k, v in head.named_parameters()}

    def init_buffers(self, params: Tensors, buffers: Tensors) -> Tensors:
        out = {f"learner.{name}.{k}": v.detach().clone() for name, head in self.heads.items()
               for k, v in head.named_buffers()}
        if self.target_heads:
            prefixes = (ENCODER, *(f"learner.{h}." for h in self.target_heads))
            for k, v in {**params, **buffers, **out}.items():
                if k.startswith(prefixes):
                    out[target_name(k)] = v.detach().clone()
        return out

    def project_views(self, params: Tensors, buffers: Tensors, batch: Any, *heads: str
                      ) -> tuple[torch.Tensor, ...]:
        """Check the view batch, embed every view in one encoder call and apply `heads` in turn (default: the
        projector): returns the output of each head, reshaped to [V, B, ...] (B: the global batch, gathered over
        the processes)."""
        views = batch.views
        self.check_batch(views)
        v, b = views.shape[:2]
        tensors = {**params, **buffers}
        x = self.embed(params, buffers, views).reshape(v * b, -1)
        outs = []
        for name in heads or ("projector",):
            x = self.head(name, tensors, x)
            outs.append(gather_batch(x.reshape(v, b, -1), 1))
        return tuple(outs)

    def head(self, name: str, tensors: Tensors, x: torch.Tensor, prefix: str = "learner.") -> torch.Tensor:
        """Apply head `name` with the tensors under `prefix + name + '.'` (the online head by default). The head
        follows the encoder's train/eval mode (BatchNorm: batch statistics while training, running ones in eval)."""
        module = self.heads[name]
        if module.training != self.encoder.training:
            module.train(self.encoder.training)
        return functional_call(module, sub(tensors, f"{prefix}{name}."), (x,))

    def encode(self, tensors: Tensors, prefix: str, images: torch.Tensor) -> torch.Tensor:
        """The encoder with the tensors under `prefix` (`encoder.` online, `learner.target.encoder.` the target):
        images [..., C, H, W] -> features [..., D]."""
        return self.encode_with(sub(tensors, prefix), images)

    # -- checks and monitors ----------------------------------------------------------------------------------------
    def check_batch(self, views: torch.Tensor) -> None:
        name = self.config.name
        if views.dim() != 5:
            raise ConfigError(f"learner {name} trains on augmented views [V, B, C, H, W] (tasks.source: views), got "
                              f"a batch of shape {tuple(views.shape)}")
        v, b = views.shape[:2]
        if self.views_required is not None and v != self.views_required:
            raise ConfigError(f"learner {name} uses {self.views_required} views per image; set "
                              f"tasks.views={self.views_required} (got {v})")
        if b < self.min_batch:
            raise ConfigError(f"learner {name} needs tasks.batch_size >= {self.min_batch} ({self.min_batch_reason}); "
                              f"got {b}")

    def output(self, loss: torch.Tensor, metrics: dict[str, torch.Tensor], z: torch.Tensor,
               state: dict[str, torch.Tensor] | None = None) -> LossOutput:
        """The LossOutput of an SSL loss: `metrics` plus the loss and the collapse monitor of the embeddings z [N, D]
        (`embedding_std`, see `losses.embedding_std`, and `embedding_spread` = embedding_std x sqrt(D))."""
        std = embedding_std(z)
        return LossOutput(loss, {"loss": loss.detach(), **metrics, "embedding_std": std,
                                 "embedding_spread": std * math.sqrt(z.shape[-1])}, state or {})

    def diagnose(self, metrics: dict[str, float], step: int) -> str | None:
        """A warning when the logged metrics show the embeddings have collapsed (the engine shows it once)."""
        spread = metrics.get("embedding_spread")
        if spread is None or spread >= self.config.collapse_threshold:
            return None
        std = metrics.get("embedding_std", float("nan"))
        return (f"learner {self.config.name}: the embeddings have collapsed at step {step}: embedding_std = "
                f"{std:.2e} (std of L2-normalized embeddings; x sqrt(D) = {spread:.2e}: 1 when spread out, 0 when "
                f"every image maps to the same vector). Lower optim.lr, check the augmentation (augment.*) and the "
                f"method's settings.")

    def update(self, params: Tensors, buffers: Tensors, state: Tensors, step: int, total_steps: int) -> Tensors:
        """EMA targets, queues: overridden by BYOL and MoCo. `step` is the index (from 0) of the step just taken."""
        return {}

    # -- momentum targets ---------------------------------------------------------------------------------------
    def target_pairs(self, params: Tensors, buffers: Tensors) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        targets, online = [], []
        for k, v in params.items():
            t = buffers.get(target_name(k))
            if t is not None:
                targets.append(t)
                online.append(v.detach())
        return targets, online

    def ema_update(self, params: Tensors, buffers: Tensors, momentum: float) -> Tensors:
        """New target tensors: momentum * target + (1 - momentum) * online, for every parameter with a target copy."""
        names = [target_name(k) for k in params if target_name(k) in buffers]
        targets, online = self.target_pairs(params, buffers)
        return dict(zip(names, torch._foreach_lerp(targets, online, 1.0 - momentum))) if targets else {}

    def target_forward(self, buffers: Tensors, views: torch.Tensor) -> torch.Tensor:
        """The momentum target's projections of images [..., B, C, H, W] (no gradient), the batch dimension
        gathered over the processes."""
        with torch.no_grad():
            h = self.encode(buffers, TARGET + ENCODER, views)
            lead = h.shape[:-1]
            z = self.head(self.target_heads[0], buffers, h.reshape(-1, h.shape[-1]), prefix=TARGET)
            return gather_batch(z.reshape(*lead, z.shape[-1]), len(lead) - 1)

    # -- few-shot evaluation on frozen features -----------------------------------------------------------------
    def adapt(self, params, buffers, support_x, support_y, ways):
        z = self.embed(params, buffers, support_x, per_task=True)
        if self.config.eval_distance == "cosine":
            z = F.normalize(z, dim=-1)
        return prototypes(z, support_y, ways)

    def classify(self, params, buffers, state, query_x):
        q = self.embed(params, buffers, query_x, per_task=True)
        if self.config.eval_distance == "cosine":
            return 10.0 * (F.normalize(q, dim=-1) @ F.normalize(state, dim=-1).transpose(1, 2))
        return -squared_euclidean(q, state)


def target_name(online: str) -> str:
    """`encoder.X` -> `learner.target.encoder.X`; `learner.projector.X` -> `learner.target.projector.X`."""
    return TARGET + online.removeprefix("learner.")
