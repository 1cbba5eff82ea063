"""NNCLR (Dwibedi, Aytar, Tompson, Sermanet & Zisserman, "With a Little Help from My Friends: Nearest-Neighbor
Contrastive Learning of Visual Representations", ICCV 2021).

Contrastive learning whose positive is not the other view itself but the nearest neighbour (cosine) of one view's
projection in a support set Q of projections of earlier batches: with z = projector(encoder(x)), p = predictor(z),
L = mean_i -log( exp(NN(z1_i, Q) . p2_i / T) / sum_k exp(NN(z1_i, Q) . p2_k / T) ) (paper, eq. 1, with the
predictor of section 3.3), symmetrized over the two views (`losses.nearest_neighbour`, `losses.nnclr_loss`;
T = 0.1). No gradient flows through the neighbours. The support set is a FIFO queue (`learner.queue` [Q, D],
`learner.queue_ptr`; MoCo's ring buffer, `moco.enqueue`), filled after each step with the first view's L2-normalized
projections and returned by `update` as new values; it starts as random unit vectors (as MoCo's queue and
lightly's memory bank), which the first Q / B steps replace.
Heads (paper, section 4): projector 3 layers (hidden 2048, BN, ReLU; output 256 with BN), predictor 2 layers (hidden
4096). Deviation: the support set is sized for small data by `queue_size` (paper: 98,304 at batch 4096).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..config import option
from ..learners.base import LearnerSpec, register_learner
from .base import SSLConfig, SSLLearner, fp32
from .heads import MLPHead, mlp_dims
from .losses import nearest_neighbour, nnclr_loss
from .moco import PTR, QUEUE, enqueue


@dataclass
class NNCLRConfig(SSLConfig):
    name: str = "nnclr"
    temperature: float = option(0.1, range=(1e-4, 10.0), help="contrastive temperature (paper: 0.1)")
    queue_size: int = option(98304, range=(1, None), help="support set size (paper: 98,304; lightly CIFAR-10: "
                                                          "4096)")
    proj_hidden: int = option(2048, range=(1, None), help="projector hidden width")
    proj_dim: int = option(256, range=(1, None), help="projection (and support set) size")
    proj_layers: int = option(3, range=(1, 8), help="linear layers of the projector")
    pred_hidden: int = option(4096, range=(1, None), help="predictor hidden width")


class NNCLR(SSLLearner):
    min_batch_reason = "the other images of the batch are the negatives"

    def build_heads(self, feature_dim):
        c = self.config
        return {"projector": MLPHead(mlp_dims(feature_dim, c.proj_hidden, c.proj_dim, c.proj_layers), last_bn=True),
                "predictor": MLPHead([c.proj_dim, c.pred_hidden, c.proj_dim])}

    def init_buffers(self, params, buffers):
        out = super().init_buffers(params, buffers)
        out[QUEUE] = F.normalize(torch.randn(self.config.queue_size, self.config.proj_dim), dim=1)
        out[PTR] = torch.zeros(1, dtype=torch.int64)
        return out

    def loss(self, params, buffers, batch):
        z, p = self.project_views(params, buffers, batch, "projector", "predictor")  # [2, B, D] each
        queue = buffers[QUEUE]
        with fp32(z):
            nn1, _ = nearest_neighbour(z[0], queue)
            nn2, _ = nearest_neighbour(z[1], queue)
            l1, a1 = nnclr_loss(nn1, p[1], self.config.temperature)
            l2, a2 = nnclr_loss(nn2, p[0], self.config.temperature)
        keys = F.normalize(z[0].detach().float(), dim=1)
        return self.output((l1 + l2) / 2, {"contrastive_acc": (a1 + a2) / 2}, z[0], state={"keys": keys})

    def update(self, params, buffers, state, step, total_steps):
        if "keys" not in state:
            return {}
        q, ptr = enqueue(buffers[QUEUE], buffers[PTR], state["keys"])
        return {QUEUE: q, PTR: ptr}


register_learner(LearnerSpec(
    "nnclr", NNCLRConfig, NNCLR,
    "contrastive: the nearest neighbour in a support queue of past projections is the positive",
    default_source="views"))
