"""SimSiam (Chen & He, "Exploring Simple Siamese Representation Learning", CVPR 2021).

One network (encoder, projector f, predictor h) for both views; the loss is the symmetrized negative cosine
similarity with a stop-gradient on the projection: L = D(p1, stopgrad(z2)) / 2 + D(p2, stopgrad(z1)) / 2,
D(p, z) = -cos(p, z). The projector has BatchNorm on every layer, its output included (3 layers on ImageNet, 2 in the
paper's CIFAR-10 experiments); the predictor is a bottleneck (2048 -> 512 -> 2048) without BN at its output.
Not done: the paper's fixed (non-decaying) learning rate for the predictor.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..config import option
from ..learners.base import LearnerSpec, register_learner
from .base import SSLConfig, SSLLearner, fp32
from .heads import MLPHead, mlp_dims
from .losses import negative_cosine


@dataclass
class SimSiamConfig(SSLConfig):
    name: str = "simsiam"
    proj_hidden: int = option(2048, range=(1, None))
    proj_dim: int = option(2048, range=(1, None))
    proj_layers: int = option(3, range=(1, 8), help="3 (ImageNet), 2 (the paper's CIFAR-10 setting)")
    pred_hidden: int = option(512, range=(1, None), help="predictor bottleneck width")


class SimSiam(SSLLearner):
    min_batch_reason = "BatchNorm in the projector needs batch statistics"

    def build_heads(self, feature_dim):
        c = self.config
        return {"projector": MLPHead(mlp_dims(feature_dim, c.proj_hidden, c.proj_dim, c.proj_layers), last_bn=True),
                "predictor": MLPHead([c.proj_dim, c.pred_hidden, c.proj_dim])}

    def loss(self, params, buffers, batch):
        z, p = self.project_views(params, buffers, batch, "projector", "predictor")
        with fp32(p):
            loss = 0.5 * negative_cosine(p[0], z[1]) + 0.5 * negative_cosine(p[1], z[0])
        return self.output(loss, {}, z[0])


register_learner(LearnerSpec(
    "simsiam", SimSiamConfig, SimSiam,
    'non-contrastive: predictor + stop-gradient, no negatives, no momentum encoder',
    default_source="views"))
