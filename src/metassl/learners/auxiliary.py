"""Self-supervised auxiliary loss during meta-training (Gidaris et al., "Boosting Few-Shot Visual Learning with
Self-Supervision", ICCV 2019): any learner's loss plus `aux.rotation` x the 4-way rotation-prediction loss of its
encoder on the episode's images (support and query, each rotated by 0/90/180/270 degrees).

The rotation head is a linear layer on the encoder features, learnable tensors `learner.aux_rotation.*`. It is not
used to adapt or classify, so evaluation and prediction are those of the wrapped learner. With `aux.rotation: 0`
nothing is wrapped and the learner is exactly the plain one.
"""

from __future__ import annotations

from typing import Any

import torch

from ..data.episodic import TaskBatch
from ..ssl.losses import rotate4, rotation_loss
from .base import Learner, Tensors

HEAD = "learner.aux_rotation."


class RotationAuxiliary:
    """Wraps a learner: same functions, its `loss` plus weight x rotation loss; attributes pass through."""

    def __init__(self, inner: Learner, weight: float):
        object.__setattr__(self, "inner", inner)
        object.__setattr__(self, "weight", float(weight))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def __setattr__(self, name: str, value: Any) -> None:  # e.g. the engine choosing `path`
        setattr(self.inner, name, value)

    def init_params(self, feature_dim: int, ways: int) -> Tensors:
        params = dict(self.inner.init_params(feature_dim, ways))
        # nn.Linear's default initialization; a zero head would give the encoder no rotation gradient at first
        bound = 1.0 / feature_dim ** 0.5
        params[HEAD + "weight"] = torch.empty(4, feature_dim).uniform_(-bound, bound)
        params[HEAD + "bias"] = torch.empty(4).uniform_(-bound, bound)
        return params

    def rotation_term(self, params: Tensors, buffers: Tensors, images: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        x, labels = rotate4(images.reshape(-1, *images.shape[-3:]))
        z = self.inner.embed(params, buffers, x)
        logits = z @ params[HEAD + "weight"].t() + params[HEAD + "bias"]
        return rotation_loss(logits, labels)

    def loss(self, params: Tensors, buffers: Tensors, batch: Any) -> tuple[torch.Tensor, dict[str, Any]]:
        loss, aux = self.inner.loss(params, buffers, batch)
        if isinstance(batch, TaskBatch):
            images = torch.cat([batch.support_x.flatten(0, 1), batch.query_x.flatten(0, 1)])
        else:  # a ViewBatch: every view of every image
            images = batch.views.flatten(0, 1)
        rot, acc = self.rotation_term(params, buffers, images)
        return loss + self.weight * rot, {**aux, "aux_rotation_loss": rot.detach(), "aux_rotation_accuracy": acc}
