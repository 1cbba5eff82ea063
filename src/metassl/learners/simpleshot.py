"""SimpleShot (Wang, Chao, Weinberger & van der Maaten, "SimpleShot: Revisiting Nearest-Neighbor Classification for
Few-Shot Learning", arXiv:1911.04623, 2019).

Training (`tasks.source: classes`): the encoder and a linear classifier over the C base classes, cross-entropy on
plain labelled batches (the same classifier and loss as Baseline, `learners.baseline`). After the last step the
trainer embeds the whole training split in evaluation mode and `summarize` stores its mean feature, the
`learner.base_mean` buffer [D]. Test: each feature is transformed by `normalize`,
    UN   x,   L2N   x / ||x||,   CL2N   (x - base_mean) / ||x - base_mean||   (the paper's best; default),
each class is represented by the mean of its transformed support features (with one shot, the support feature
itself), and a query goes to the nearest centroid in Euclidean distance; the logits are the negative Euclidean
distances (their softmax gives the probabilities the API reports; the predicted class is the nearest centroid, as the
paper's 1-NN with class means).

A SimpleShot model can also be made from another classifier run: `init_from=RUN` (a baseline, baseline_pp or
simpleshot run) with `train.steps=0` copies its encoder and only computes base_mean. Zero vectors are normalized
with a 1e-12 floor on the norm (F.normalize). The paper has no Omniglot experiments.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..config import LearnerConfig, option
from .base import Learner, register_learner
from .baseline import HEAD_B, HEAD_W, check_class_batch, classifier_loss, linear_init, linear_logits
from .protonet import prototypes

BASE_MEAN = "learner.base_mean"
NORMALIZATIONS = ("un", "l2n", "cl2n")

__all__ = ["SimpleShotConfig", "SimpleShot", "transform_features", "nearest_centroid_logits", "BASE_MEAN"]


@dataclass
class SimpleShotConfig(LearnerConfig):
    name: str = "simpleshot"
    normalize: str = option("cl2n", choices=NORMALIZATIONS,
                            help="feature transform before nearest-centroid: un (none), l2n (x/||x||), cl2n "
                                 "((x - base mean)/||x - base mean||, the paper's best)")


def transform_features(z: torch.Tensor, how: str, base_mean: torch.Tensor | None = None) -> torch.Tensor:
    """SimpleShot's feature transform of z [..., D]: "un" (unchanged), "l2n" or "cl2n" (centred on base_mean [D])."""
    if how == "un":
        return z
    if how == "cl2n":
        if base_mean is None:
            raise ValueError("normalize=cl2n needs the base-class mean feature (learner.base_mean)")
        z = z - base_mean
    elif how != "l2n":
        raise ValueError(f"learner.normalize must be one of {', '.join(NORMALIZATIONS)}, got {how!r}")
    return F.normalize(z, dim=-1)


def nearest_centroid_logits(queries: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Negative Euclidean distances [T, Q, N] of queries [T, Q, D] to centroids [T, N, D]."""
    d2 = (queries.unsqueeze(2) - centroids.unsqueeze(1)).pow(2).sum(-1)
    return -d2.clamp_min(0.0).sqrt()


@register_learner("simpleshot", SimpleShotConfig, default_source="classes",
                  init_from_learners=("baseline", "baseline_pp", "simpleshot"),
                  description="classifier over the base classes; test: nearest class mean of centred, "
                              "L2-normalized features (CL2N)")
class SimpleShot(Learner):
    summarizes_training_split = True

    def init_params(self, feature_dim, ways):
        w, _ = linear_init(ways, feature_dim, bias=False)
        return {HEAD_W: w, HEAD_B: torch.zeros(ways)}

    def init_buffers(self, params, buffers):
        w = params[HEAD_W]
        return {BASE_MEAN: torch.zeros(w.shape[1], dtype=w.dtype, device=w.device)}

    def summarize(self, params, buffers, features, labels):
        if features.dim() != 2 or features.shape[0] == 0:
            raise ValueError(f"learner simpleshot: the training split's features must be [M > 0, D], got "
                             f"{tuple(features.shape)}")
        mean = buffers[BASE_MEAN]
        return {BASE_MEAN: features.mean(0).to(device=mean.device, dtype=mean.dtype)}

    def loss(self, params, buffers, batch):
        batch = check_class_batch(batch, self.config.name, params[HEAD_W].shape[0])
        z = self.embed(params, buffers, batch.images)
        return classifier_loss(linear_logits(z, params[HEAD_W], params[HEAD_B]), batch.labels)

    def features(self, params, buffers, x: torch.Tensor) -> torch.Tensor:
        z = self.embed(params, buffers, x, per_task=True)
        return transform_features(z, self.config.normalize, buffers[BASE_MEAN].to(z.dtype))

    def adapt(self, params, buffers, support_x, support_y, ways):
        return prototypes(self.features(params, buffers, support_x), support_y, ways)

    def classify(self, params, buffers, state, query_x):
        return nearest_centroid_logits(self.features(params, buffers, query_x), state)
