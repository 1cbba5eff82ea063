"""PsCo (Jang, Lee & Shin, "Unsupervised Meta-learning via Few-shot Pseudo-supervised Contrastive Learning",
ICLR 2023): unsupervised meta-learning whose few-shot tasks are built, at every step, from a momentum network and a
queue, so the pseudo-labels improve as the network does (CACTUs's are fixed before meta-training).

One step, for a batch of B unlabeled images with two views (`tasks.source: psco`: a strong view for the online
network, a weak one for the momentum network; on Omniglot both are random resized crop 0.2-1 + flip, as the paper's
code):
1. queries  q_i = normalize(predictor(projector(encoder(strong_i))))           (online network, with gradient)
2. keys     z_i = normalize(projector'(encoder'(weak_i)))                         (momentum network, no gradient)
3. pseudo-task: Sinkhorn-Knopp (`ssl.losses.sinkhorn`, epsilon 0.05, 3 iterations) matches the B keys to the M
   queue entries with equal partition; the K entries with the largest mass in row i are the support set of
   pseudo-class i. The task is B-way K-shot with one query per class (the paper's N = batch size).
4. loss = `pseudo_supcon_loss`(q, supports; T2 = 1) + MoCo's InfoNCE (q_i vs z_i against the queue; T = 0.2);
   after the optimizer step the momentum network moves towards the online one (m = 0.99) and the keys z are
   enqueued (FIFO ring buffer, `learner.queue`).

The pseudo-tasks live in embedding space (their supports are queue entries, not images), so the `psco` source feeds
only this learner; `umtra` and `cactus` build image tasks for any learner.

Few-shot evaluation (`eval_head`), as the paper's test script: `supcon` (default) classifies a query by cosine
similarity of its online prediction (encoder, projector, predictor) to the normalized mean of each class's support
projections (encoder, projector), BatchNorm with running statistics; `encoder` is the nearest class mean of the
frozen encoder features, as for the other self-supervised methods.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F

from ..config import ConfigError, option
from ..data.augment import AugmentSpec, augment, weak_view
from ..data.episodic import ClassSplit
from ..data.task_sources import register_task_source
from ..data.views import ViewBatch, ViewSource, ViewsTaskConfig
from ..learners.base import LearnerSpec, register_learner
from ..learners.protonet import prototypes
from .base import SSLConfig, fp32, gather_batch
from .heads import MLPHead, mlp_dims
from .losses import info_nce_loss, pseudo_supcon_loss, sinkhorn
from .moco import QUEUE, MoCo


@dataclass
class PsCoConfig(SSLConfig):
    name: str = "psco"
    shots: int = option(1, range=(1, None), help="K: support embeddings per pseudo-class taken from the queue "
                                                 "(paper: 1 on Omniglot, 4 on miniImageNet)")
    temperature: float = option(0.2, range=(1e-4, 10.0), help="MoCo InfoNCE temperature T")
    supcon_temperature: float = option(1.0, range=(1e-4, 10.0), help="pseudo-supervised contrastive temperature T2")
    supcon_weight: float = option(1.0, range=(0.0, None), help="weight of the PsCo term (0: MoCo with a predictor)")
    moco_weight: float = option(1.0, range=(0.0, None), help="weight of the MoCo term")
    queue_size: int = option(16384, range=(1, None), help="M: momentum keys kept; supports come from here")
    momentum: float = option(0.99, range=(0.0, 1.0), help="momentum network EMA m")
    momentum_schedule: str = option("constant", choices=("constant", "cosine"),
                                    help="constant m (PsCo), or cosine from m to 1 (as BYOL)")
    sinkhorn_epsilon: float = option(0.05, range=(1e-4, 10.0), help="entropic regularization of the assignment")
    sinkhorn_iterations: int = option(3, range=(1, 100))
    shot_sampling: str = option("topk", choices=("topk", "prob"),
                                help="supports: the K queue entries with the largest assignment (topk), or K drawn "
                                     "from the assignment as probabilities (prob)")
    proj_hidden: int = option(4096, range=(1, None), help="projector hidden width (paper: 4096)")
    proj_dim: int = option(256, range=(1, None), help="embedding size (paper: 256)")
    proj_layers: int = option(2, range=(1, 8))
    pred_hidden: int = option(4096, range=(1, None), help="predictor hidden width (paper: 4096)")
    eval_head: str = option("supcon", choices=("supcon", "encoder"),
                            help="few-shot evaluation: predictor-vs-projected prototypes (paper) or nearest class "
                                 "mean of encoder features")


def pseudo_tasks(keys: torch.Tensor, queue: torch.Tensor, shots: int, epsilon: float = 0.05, iterations: int = 3,
                 sampling: str = "topk", generator: torch.Generator | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """PsCo's pseudo-task of a batch: keys [B, D] and queue [M, D] (L2-normalized) -> (indices [B, K] of the queue
    entries that form pseudo-class i's support set, the transport plan [B, M] whose rows sum to 1)."""
    if shots > queue.shape[0]:
        raise ConfigError(f"learner.shots={shots} is larger than learner.queue_size={queue.shape[0]}")
    plan = sinkhorn(keys @ queue.t(), epsilon, iterations)
    if sampling == "topk":
        idx = torch.topk(plan, shots, dim=1).indices
    else:
        idx = torch.multinomial(plan, shots, replacement=False, generator=generator)
    return idx, plan


class PsCo(MoCo):
    """MoCo with a predictor and the pseudo-task loss (as the authors' PsCoMoCo): MoCo's queue, momentum target and
    update are reused as they are."""

    min_batch = 2
    min_batch_reason = "a pseudo-task needs at least 2 pseudo-classes, and the heads use BatchNorm"

    def build_heads(self, feature_dim):
        c = self.config
        # as the paper's code: no biases, BatchNorm after every hidden layer, a non-affine BatchNorm after the
        # projector's output; the predictor's output is not normalized
        return {"projector": MLPHead(mlp_dims(feature_dim, c.proj_hidden, c.proj_dim, c.proj_layers),
                                     last_bn=True, last_bn_affine=False),
                "predictor": MLPHead([c.proj_dim, c.pred_hidden, c.proj_dim])}

    def loss(self, params, buffers, batch):
        c = self.config
        views = batch.views
        self.check_batch(views)
        tensors = {**params, **buffers}
        h = self.embed(params, buffers, views[0])  # [B, D]: strong view through the online network
        z_online = self.head("projector", tensors, h)
        p = gather_batch(self.head("predictor", tensors, z_online), 0)  # the global batch's (several processes)
        z_online = gather_batch(z_online, 0)
        keys = F.normalize(self.target_forward(buffers, views[1]).float(), dim=1)  # [B, P]: weak view, momentum net
        queue = buffers[QUEUE]
        with fp32(p):
            q = F.normalize(p.float(), dim=1)
            idx, _ = pseudo_tasks(keys, queue, c.shots, c.sinkhorn_epsilon, c.sinkhorn_iterations, c.shot_sampling)
            supports = queue[idx]  # [B, K, P]
            supcon, task_acc = pseudo_supcon_loss(q, supports, c.supcon_temperature)
            moco, moco_acc = info_nce_loss(q, keys, queue, c.temperature)
            loss = c.supcon_weight * supcon + c.moco_weight * moco
        return self.output(loss, {"supcon_loss": supcon.detach(), "moco_loss": moco.detach(),
                                  "pseudo_task_acc": task_acc, "contrastive_acc": moco_acc}, z_online,
                           state={"keys": keys.detach()})

    # -- few-shot evaluation --------------------------------------------------------------------------------------
    def adapt(self, params, buffers, support_x, support_y, ways):
        if self.config.eval_head == "encoder":
            return super().adapt(params, buffers, support_x, support_y, ways)
        tensors = {**params, **buffers}
        h = self.embed(params, buffers, support_x)  # [T, S, D]
        z = self.head("projector", tensors, h.reshape(-1, h.shape[-1])).reshape(*h.shape[:-1], -1)
        return F.normalize(prototypes(F.normalize(z, dim=-1), support_y, ways), dim=-1)

    def classify(self, params, buffers, state, query_x):
        if self.config.eval_head == "encoder":
            return super().classify(params, buffers, state, query_x)
        tensors = {**params, **buffers}
        h = self.embed(params, buffers, query_x)
        z = self.head("projector", tensors, h.reshape(-1, h.shape[-1]))
        p = self.head("predictor", tensors, z).reshape(*h.shape[:-1], -1)
        return 10.0 * (F.normalize(p, dim=-1) @ state.transpose(1, 2))  # cosine x 10 (sharper probabilities only)


def augment_views(spec: AugmentSpec) -> AugmentSpec:
    """PsCo's code (Jang et al. 2023): the strong view is a SimCLR-style crop of 0.2-1 + flip + colour; on Omniglot
    crop + flip only."""
    if spec.preset == "omniglot":
        return AugmentSpec(preset="omniglot/psco", crop_scale=(0.2, 1.0), flip=0.5).filled()
    if spec.preset in ("cifar10", "generic"):
        return replace(spec, preset=f"{spec.preset}/psco", crop_scale=(0.2, 1.0))
    return spec


@register_task_source("psco", ViewsTaskConfig, batch="views")
class PsCoViews(ViewSource):
    """Two views per image for PsCo: view 0 with the run's augmentation (strong; the online network's), view 1 with
    its geometric part only (weak; the momentum network's), as the paper's `--aug strong weak`. Labels are never
    read."""

    def __init__(self, cfg: Any, split: ClassSplit, generator: torch.Generator, config: Any = None,
                 spec: AugmentSpec | None = None, **extra: Any):
        if config is not None and config.learner.name != "psco":
            raise ConfigError(f"tasks.source=psco builds its pseudo-tasks from the psco learner's momentum network and "
                              f"queue, so it trains only learner.name=psco (got {config.learner.name!r}); for "
                              f"unsupervised image tasks that feed any learner use tasks.source=umtra or cactus")
        if cfg.views != 2:
            raise ConfigError(f"tasks.source=psco makes 2 views per image (strong, weak); set tasks.views=2 "
                              f"(got {cfg.views})")
        super().__init__(cfg, split, generator, config=config, spec=spec, **extra)
        self.weak = weak_view(self.spec)

    def sample(self) -> ViewBatch:
        idx, images = self.draw()
        strong = augment(images, self.spec, 1, self.generator)
        weak = augment(images, self.weak, 1, self.generator)
        return ViewBatch(torch.cat([strong, weak]), idx)


register_learner(LearnerSpec(
    "psco", PsCoConfig, PsCo,
    "unsupervised meta-learning: pseudo-tasks from a momentum network's queue (Sinkhorn), supervised contrastive loss on them plus MoCo",
    default_source="psco", augment=augment_views))
