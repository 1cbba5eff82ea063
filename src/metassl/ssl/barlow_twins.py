"""Barlow Twins (Zbontar, Jing, Misra, LeCun & Deny, "Barlow Twins: Self-Supervised Learning via Redundancy
Reduction", ICML 2021).

The cross-correlation matrix C of the two views' projections (each standardized along the batch) is pushed towards
the identity: L = sum_i (1 - C_ii)^2 + lambda sum_{i != j} C_ij^2, lambda = 5e-3. Projector: 3 linear layers of 8192
(BN + ReLU between them) in the paper; lightly's CIFAR-10 benchmark uses 2 layers of 2048.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..config import option
from ..learners.base import LearnerSpec, register_learner
from .base import SSLConfig, SSLLearner, fp32
from .losses import barlow_twins_loss


@dataclass
class BarlowTwinsConfig(SSLConfig):
    name: str = "barlow_twins"
    lambd: float = option(5e-3, range=(0.0, None), help="weight of the off-diagonal (redundancy) term")
    proj_hidden: int = option(8192, range=(1, None))
    proj_dim: int = option(8192, range=(1, None))
    proj_layers: int = option(3, range=(1, 8))


class BarlowTwins(SSLLearner):
    min_batch_reason = "the cross-correlation standardizes each dimension over the batch"

    def loss(self, params, buffers, batch):
        (z,) = self.project_views(params, buffers, batch)
        with fp32(z):
            loss, terms = barlow_twins_loss(z[0], z[1], self.config.lambd)
        return self.output(loss, terms, z[0])


register_learner(LearnerSpec(
    "barlow_twins", BarlowTwinsConfig, BarlowTwins,
    "redundancy reduction: cross-correlation of the two views' projections towards the identity",
    default_source="views"))
