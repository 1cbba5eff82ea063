"""SimCLR (Chen, Kornblith, Norouzi & Hinton, "A Simple Framework for Contrastive Learning of Visual
Representations", ICML 2020).

Two augmented views of every image go through the encoder (in one call) and a projection MLP; NT-Xent (normalized
temperature-scaled cross-entropy) makes each embedding find the other view of its image among the 2B - 1 others.
The encoder's features (before the projection head) are the representation.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..config import option
from ..learners.base import LearnerSpec, register_learner
from .base import SSLConfig, SSLLearner, fp32
from .losses import nt_xent_loss


@dataclass
class SimCLRConfig(SSLConfig):
    name: str = "simclr"
    temperature: float = option(0.5, range=(1e-4, 10.0), help="NT-Xent temperature (paper: 0.5 on CIFAR-10, 0.1 "
                                                               "on ImageNet with large batches)")
    proj_hidden: int = option(2048, range=(1, None), help="projection MLP hidden width (lightly CIFAR-10: 512)")
    proj_dim: int = option(128, range=(1, None), help="projection output size")
    proj_layers: int = option(2, range=(1, 8), help="linear layers in the projection MLP")


class SimCLR(SSLLearner):
    min_batch_reason = "NT-Xent contrasts each image with the other images of the batch"

    def loss(self, params, buffers, batch):
        (z,) = self.project_views(params, buffers, batch)
        with fp32(z):
            loss, acc = nt_xent_loss(z[0], z[1], self.config.temperature)
        return self.output(loss, {"contrastive_acc": acc}, z[0])


register_learner(LearnerSpec(
    "simclr", SimCLRConfig, SimCLR,
    'contrastive: NT-Xent between two augmented views, projection MLP',
    default_source="views"))
