"""Self-supervised auxiliary losses during meta-training (Gidaris et al., "Boosting Few-Shot Visual Learning with
Self-Supervision", ICCV 2019): any learner's loss plus weighted self-supervised terms of its encoder on the
episode's images (support and query):

- `aux.rotation`: 4-way rotation prediction, each image rotated by 0/90/180/270 degrees, a linear head
  (`learner.aux_rotation.*`), as in the paper;
- `aux.contrastive`: SimCLR's NT-Xent between two augmented views of each image (the views come with the batch,
  drawn by `metassl.data.task_sources.AuxiliaryViews` with the run's `augment` section), through a two-layer
  projection head (`learner.aux_contrastive.*`, hidden width = feature size, 128 outputs), temperature
  `aux.temperature`. On Omniglot, whose rotated characters are classes of their own in the Vinyals split, rotation
  prediction is partly a classification of the characters; the contrastive term has no such overlap;
- `aux.jigsaw`: jigsaw puzzles (Noroozi & Favaro 2016, `ssl/jigsaw.py`): each image's 3x3 tiles (gap 0.15, each
  normalized and resized to the image size) shuffled by one of `aux.jigsaw_permutations` maximal-Hamming
  permutations (seed 0, regenerated identically from the config), a two-layer head on the concatenated tile
  features (`learner.aux_jigsaw.*`: 9 D -> 512 -> P) predicting which.

The heads are not used to adapt or classify, so evaluation and prediction are those of the wrapped learner. With
every weight 0 nothing is wrapped and the learner is exactly the plain one.
"""

from __future__ import annotations

from typing import Any

import torch

from ..data.episodic import TaskBatch
from ..learners.base import Learner, LossOutput, Tensors
from .jigsaw import TILES, hamming_permutation_set, jigsaw_loss, jigsaw_views
from .losses import nt_xent_loss, rotate4, rotation_loss

ROTATION_HEAD = "learner.aux_rotation."
CONTRASTIVE_HEAD = "learner.aux_contrastive."
JIGSAW_HEAD = "learner.aux_jigsaw."
JIGSAW_HIDDEN, JIGSAW_GAP = 512, 0.15
PROJECTION_DIM = 128


def _linear_init(out_dim: int, in_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    # nn.Linear's default initialization; a zero head would give the encoder no gradient at first
    bound = 1.0 / in_dim ** 0.5
    return torch.empty(out_dim, in_dim).uniform_(-bound, bound), torch.empty(out_dim).uniform_(-bound, bound)


class SelfSupervisedAuxiliary:
    """Wraps a learner: same functions, its `loss` plus the weighted auxiliary terms; other attributes (adapt,
    classify, update, options, ...) are the wrapped learner's."""

    def __init__(self, inner: Learner, rotation: float = 0.0, contrastive: float = 0.0, temperature: float = 0.5,
                 jigsaw: float = 0.0, jigsaw_permutations: int = 100):
        self.inner = inner
        self.rotation, self.contrastive, self.temperature = float(rotation), float(contrastive), float(temperature)
        self.jigsaw, self.jigsaw_permutations = float(jigsaw), int(jigsaw_permutations)
        self.permutations = hamming_permutation_set(self.jigsaw_permutations) if self.jigsaw > 0 else None

    def __getattr__(self, name: str) -> Any:
        if name == "inner":  # not set yet (copying): no recursion
            raise AttributeError(name)
        return getattr(self.inner, name)

    def with_options(self, options: Any = None, **changes: Any) -> "SelfSupervisedAuxiliary":
        return SelfSupervisedAuxiliary(self.inner.with_options(options, **changes), self.rotation, self.contrastive,
                                       self.temperature, self.jigsaw, self.jigsaw_permutations)

    def init_params(self, feature_dim: int, ways: int) -> Tensors:
        params = dict(self.inner.init_params(feature_dim, ways))
        if self.rotation > 0:
            params[ROTATION_HEAD + "weight"], params[ROTATION_HEAD + "bias"] = _linear_init(4, feature_dim)
        if self.contrastive > 0:
            w1, b1 = _linear_init(feature_dim, feature_dim)
            w2, b2 = _linear_init(PROJECTION_DIM, feature_dim)
            params.update({CONTRASTIVE_HEAD + "0.weight": w1, CONTRASTIVE_HEAD + "0.bias": b1,
                           CONTRASTIVE_HEAD + "1.weight": w2, CONTRASTIVE_HEAD + "1.bias": b2})
        if self.jigsaw > 0:
            w1, b1 = _linear_init(JIGSAW_HIDDEN, TILES * feature_dim)
            w2, b2 = _linear_init(self.jigsaw_permutations, JIGSAW_HIDDEN)
            params.update({JIGSAW_HEAD + "0.weight": w1, JIGSAW_HEAD + "0.bias": b1,
                           JIGSAW_HEAD + "1.weight": w2, JIGSAW_HEAD + "1.bias": b2})
        return params

    def rotation_term(self, params: Tensors, buffers: Tensors, images: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        x, labels = rotate4(images.reshape(-1, *images.shape[-3:]))
        z = self.inner.embed(params, buffers, x)
        logits = z @ params[ROTATION_HEAD + "weight"].t() + params[ROTATION_HEAD + "bias"]
        return rotation_loss(logits, labels)

    def contrastive_term(self, params: Tensors, buffers: Tensors, views: torch.Tensor
                         ) -> tuple[torch.Tensor, torch.Tensor]:
        """NT-Xent between the first two of `views` [V, B, C, H, W], both embedded in one call."""
        b = views.shape[1]
        z = self.inner.embed(params, buffers, views[:2].flatten(0, 1))
        h = torch.relu(z @ params[CONTRASTIVE_HEAD + "0.weight"].t() + params[CONTRASTIVE_HEAD + "0.bias"])
        p = h @ params[CONTRASTIVE_HEAD + "1.weight"].t() + params[CONTRASTIVE_HEAD + "1.bias"]
        return nt_xent_loss(p[:b], p[b:], self.temperature)

    def jigsaw_term(self, params: Tensors, buffers: Tensors, images: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One jigsaw puzzle per image of `images` [M, C, H, W]: cross-entropy of the permutation head."""
        tiles, labels = jigsaw_views(images, self.permutations, JIGSAW_GAP, True, key="aux.jigsaw's gap")
        z = self.inner.embed(params, buffers, tiles).flatten(1)  # [M, 9 D], slot order
        h = torch.relu(z @ params[JIGSAW_HEAD + "0.weight"].t() + params[JIGSAW_HEAD + "0.bias"])
        return jigsaw_loss(h @ params[JIGSAW_HEAD + "1.weight"].t() + params[JIGSAW_HEAD + "1.bias"], labels)

    def loss(self, params: Tensors, buffers: Tensors, batch: Any) -> LossOutput:
        out = self.inner.loss(params, buffers, batch)
        loss, aux = out.loss, dict(out.metrics)
        if self.rotation > 0 or self.jigsaw > 0:
            if isinstance(batch, TaskBatch):
                images = torch.cat([batch.support_x.flatten(0, 1), batch.query_x.flatten(0, 1)])
            else:  # a ViewBatch: every view of every image
                images = batch.views.flatten(0, 1)
        if self.jigsaw > 0:
            jig, acc = self.jigsaw_term(params, buffers, images)
            loss = loss + self.jigsaw * jig
            aux.update(aux_jigsaw_loss=jig.detach(), aux_jigsaw_accuracy=acc)
        if self.rotation > 0:
            rot, acc = self.rotation_term(params, buffers, images)
            loss = loss + self.rotation * rot
            aux.update(aux_rotation_loss=rot.detach(), aux_rotation_accuracy=acc)
        if self.contrastive > 0:
            views = getattr(batch, "views", None)
            if isinstance(batch, TaskBatch) and views is not None:  # [T, V, M, ...] -> [V, T*M, ...]
                views = views.transpose(0, 1).flatten(1, 2)
            if views is None or views.shape[0] < 2:
                raise ValueError("aux.contrastive needs two augmented views of the episode images with each batch "
                                 "(TaskBatch.views, drawn by metassl.data.task_sources.AuxiliaryViews; the trainer "
                                 "adds them when aux.contrastive > 0); this batch has none")
            con, acc = self.contrastive_term(params, buffers, views)
            loss = loss + self.contrastive * con
            aux.update(aux_contrastive_loss=con.detach(), aux_contrastive_accuracy=acc)
        return LossOutput(loss, aux, out.state)
