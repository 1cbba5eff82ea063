"""SwAV (Caron, Misra, Mairal, Goyal, Bojanowski & Joulin, "Unsupervised Learning of Visual Features by Contrasting
Cluster Assignments", NeurIPS 2020).

Each view's L2-normalized projection z is scored against K learnable prototypes c_k (scores z . c_k). The codes q of
each global view are computed online by Sinkhorn-Knopp (`losses.sinkhorn`: 3 iterations, epsilon 0.05, an equal
partition: each prototype receives B/K of the batch's mass, each image a distribution over the prototypes), with
no gradient; every other view, global or local crop (multi-crop, `tasks.local_crops`), predicts them: swapped
prediction, cross-entropy with softmax(scores / 0.1) (`losses.swav_loss`).

Prototypes: the paper normalizes them to unit length in place before every step. A learner here never writes its
parameters, so the prototypes are normalized inside the forward (`Prototypes`): the scores are those of the
paper's normalized prototypes; the gradient differs from the paper's by the projection onto the sphere's tangent
and a 1/||c_k|| factor, i.e. it drops the radial part, which the paper's renormalization discards anyway.
`freeze_prototypes_steps` keeps them fixed for the first steps (paper: 313 iterations, about an epoch; the gradient
is zeroed inside the loss, from the buffer `learner.step`).

Queue (paper, section 4 / appendix, for small batches): `learner.queue` [2, L, D] holds the projections of each
global view of the last batches (newest first, FIFO), filled from step `queue_start_steps` on and, as in the authors'
code, used once full: the codes are then computed on [queue; batch] (L + B rows) and the batch's rows kept, so the
equal-partition constraint is spread over more images. The queue is returned by `update` as a new value
(`learner.queue_count`: rows filled). Distributed: the scores are those of the gathered global batch, so every
process computes the same codes and holds the same queue (no all-reduce inside Sinkhorn is needed).
Heads: projector 2 layers (hidden 2048, BN, ReLU) to 128, prototypes 3000 (paper; fewer for small data).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from ..config import option
from ..data.augment import AugmentSpec
from ..learners.base import LearnerSpec, register_learner
from .base import SSLConfig, SSLLearner, fp32, gather_batch
from .dino import student_features
from .heads import MLPHead, mlp_dims
from .losses import sinkhorn, swav_loss

QUEUE, COUNT, STEP = "learner.queue", "learner.queue_count", "learner.step"
PROTOS = "learner.prototypes.weight"


@dataclass
class SwAVConfig(SSLConfig):
    name: str = "swav"
    prototypes: int = option(3000, range=(1, None), help="number of prototypes K (paper: 3000)")
    temperature: float = option(0.1, range=(1e-4, 10.0), help="softmax temperature of the predictions")
    epsilon: float = option(0.05, range=(1e-4, 10.0), help="Sinkhorn entropy regularization")
    sinkhorn_iterations: int = option(3, range=(1, 1000), help="Sinkhorn-Knopp iterations")
    queue_length: int = option(0, range=(0, None), help="projections of past batches per global view used for the "
                                                        "codes (paper: 3840 at batch 256; 0: no queue)")
    queue_start_steps: int = option(0, range=(0, None), help="the queue is filled from this step on (paper: epoch "
                                                             "15)")
    freeze_prototypes_steps: int = option(0, range=(0, None), help="keep the prototypes fixed for this many steps "
                                                                   "(paper: 313)")
    proj_hidden: int = option(2048, range=(1, None), help="projector hidden width")
    proj_dim: int = option(128, range=(1, None), help="projection size")
    proj_layers: int = option(2, range=(1, 8), help="linear layers of the projector")


class Prototypes(nn.Module):
    """Scores of L2-normalized projections against the L2-normalized prototypes (the rows of `weight` [K, D])."""

    def __init__(self, dim: int, k: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(k, dim))
        nn.init.kaiming_uniform_(self.weight, a=5 ** 0.5)  # nn.Linear's init, as the authors' code

    def forward(self, z):
        return F.linear(F.normalize(z, dim=-1), F.normalize(self.weight, dim=1))


def fifo(queue: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """The queue [L, D] with `rows` [n, D] put first (newest first) and the oldest n rows dropped; a new tensor."""
    length = queue.shape[0]
    return torch.cat([rows.to(queue.dtype), queue])[:length]


class SwAV(SSLLearner):
    multi_crop = True
    min_batch_reason = "the codes are an equal partition of the batch over the prototypes"

    def build_heads(self, feature_dim):
        c = self.config
        return {"projector": MLPHead(mlp_dims(feature_dim, c.proj_hidden, c.proj_dim, c.proj_layers)),
                "prototypes": Prototypes(c.proj_dim, c.prototypes)}

    def init_buffers(self, params, buffers):
        out = super().init_buffers(params, buffers)
        c = self.config
        out[STEP] = torch.zeros((), dtype=torch.int64)
        if c.queue_length > 0:
            out[QUEUE] = torch.zeros(self.views_required, c.queue_length, c.proj_dim)
            out[COUNT] = torch.zeros((), dtype=torch.int64)
        return out

    def loss(self, params, buffers, batch):
        c = self.config
        self.check_batch(batch.views)
        tensors = {**params, **buffers}
        if c.freeze_prototypes_steps > 0:  # zero gradient for the prototypes during the first steps
            w = params[PROTOS]
            tensors[PROTOS] = torch.where(buffers[STEP] < c.freeze_prototypes_steps, w.detach(), w)
        h, _ = student_features(self, params, buffers, batch)
        v, b = h.shape[:2]
        z = F.normalize(self.head("projector", tensors, h.reshape(v * b, -1)), dim=-1)
        scores = self.head("prototypes", tensors, z)
        z = gather_batch(z.reshape(v, b, -1), 1)
        scores = gather_batch(scores.reshape(v, b, -1), 1)
        vg, b = batch.views.shape[0], z.shape[1]
        use_queue = c.queue_length > 0 and int(buffers[COUNT]) >= c.queue_length  # one host read per step
        with fp32(scores), torch.no_grad():
            codes = []
            for i in range(vg):
                s = scores[i].detach().float()
                if use_queue:  # the queue's scores with the current prototypes, then the batch's rows
                    protos = F.normalize(tensors[PROTOS].detach().float(), dim=1)
                    s = torch.cat([buffers[QUEUE][i].float() @ protos.t(), s])
                codes.append(sinkhorn(s, c.epsilon, c.sinkhorn_iterations)[-b:])
            codes = torch.stack(codes)
        with fp32(scores):
            loss = swav_loss(scores, codes, c.temperature)
        state = {"projections": z[:vg].detach().float()} if c.queue_length > 0 else {}
        return self.output(loss, {"queue_used": torch.tensor(float(use_queue), device=scores.device)}, z[0], state)

    def update(self, params, buffers, state, step, total_steps):
        c = self.config
        new = {STEP: buffers[STEP] + 1}
        if c.queue_length > 0 and "projections" in state and int(buffers[STEP]) >= c.queue_start_steps:
            z = state["projections"]  # [Vg, B, D]
            new[QUEUE] = torch.stack([fifo(buffers[QUEUE][i], z[i]) for i in range(z.shape[0])])
            new[COUNT] = (buffers[COUNT] + z.shape[1]).clamp_max(c.queue_length)
        return new


def augment_views(spec: AugmentSpec) -> AugmentSpec:
    """SwAV's views on the colour recipes (paper, appendix: SimCLR's augmentations on every crop, blur with
    probability 0.5); presets without colour jitter (characters) are unchanged."""
    if not spec.jitter:
        return spec
    return replace(spec, preset=f"{spec.preset}/swav", blur=(0.5,) if any(spec.blur) else spec.blur)


register_learner(LearnerSpec(
    "swav", SwAVConfig, SwAV,
    "clustering: swapped prediction of online Sinkhorn codes over prototypes, multi-crop, optional queue",
    default_source="views", augment=augment_views))
