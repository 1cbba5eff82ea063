"""MoCo v2 (He, Fan, Wu, Xie & Girshick, "Momentum Contrast for Unsupervised Visual Representation Learning",
CVPR 2020; Chen, Fan, Girshick & He, "Improved Baselines with Momentum Contrastive Learning", 2020).

Queries come from the online encoder + projection MLP, keys from a momentum copy of both (`learner.target.*`
buffers, updated after each step as target <- m target + (1 - m) online; MoCo v2 m = 0.999, 0.99 in the CIFAR-10
settings of the MoCo authors' CIFAR demo and of lightly's benchmark). InfoNCE contrasts each query with its own
key against a queue of K negative keys from earlier batches (`learner.queue` [K, D], L2-normalized, initialised
at random as in the paper; `learner.queue_ptr` the next slot).

`symmetric: true` also uses the second view as the query (loss averaged over both directions; lightly's CIFAR-10
benchmark does this, the paper does not) and enqueues the keys of both views.

The queue: after each step the step's keys are written at `queue_ptr`, wrapping around the end (so any K and batch
size work: K need not be a multiple of the batch size, unlike the paper's code which asserts it); if one step has
more keys than K, only the last K are kept. The oldest keys are overwritten first (FIFO).
Not implemented: shuffling BatchNorm (the paper's multi-GPU trick against BN information leakage).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..config import option
from ..learners.base import LearnerSpec, register_learner
from .base import SSLConfig, SSLLearner, fp32, gather_batch, momentum_cosine
from .heads import MLPHead, mlp_dims
from .losses import info_nce_loss

QUEUE, PTR = "learner.queue", "learner.queue_ptr"


@dataclass
class MoCoConfig(SSLConfig):
    name: str = "moco"
    temperature: float = option(0.2, range=(1e-4, 10.0), help="InfoNCE temperature (MoCo v2: 0.2)")
    queue_size: int = option(65536, range=(1, None), help="negative keys kept (MoCo: 65536; lightly CIFAR-10: "
                                                           "4096, 8192 at batch 512)")
    momentum: float = option(0.999, range=(0.0, 1.0), help="key encoder EMA momentum m (CIFAR-10: 0.99)")
    momentum_schedule: str = option("constant", choices=("constant", "cosine"),
                                    help="constant m (MoCo), or cosine from m to 1 (as BYOL)")
    symmetric: bool = option(False, help="use both views as queries (lightly's CIFAR-10 benchmark)")
    proj_hidden: int = option(2048, range=(1, None), help="projection MLP hidden width")
    proj_dim: int = option(128, range=(1, None), help="key/query size")
    proj_layers: int = option(2, range=(1, 8))


def enqueue(queue: torch.Tensor, ptr: torch.Tensor, keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The ring buffer `queue` [K, D] with `keys` [n, D] written at `ptr` (a 1-element int64 tensor), wrapping around
    the end, and the pointer advanced by n (mod K): new tensors, the inputs are unchanged. With n > K only the last K
    keys are written. On the device, without host synchronization."""
    k = queue.shape[0]
    if keys.shape[0] > k:
        keys = keys[-k:]
    n = keys.shape[0]
    idx = (ptr + torch.arange(n, device=queue.device)) % k
    return queue.index_copy(0, idx, keys.to(queue.dtype)), (ptr + n) % k


class MoCo(SSLLearner):
    target_heads = ("projector",)
    min_batch = 1  # the negatives come from the queue
    min_batch_reason = ""

    def build_heads(self, feature_dim):
        c = self.config
        return {"projector": MLPHead(mlp_dims(feature_dim, c.proj_hidden, c.proj_dim, c.proj_layers),
                                     hidden_bn=False)}

    def init_buffers(self, params, buffers):
        out = super().init_buffers(params, buffers)
        c = self.config
        out[QUEUE] = F.normalize(torch.randn(c.queue_size, c.proj_dim), dim=1)
        out[PTR] = torch.zeros(1, dtype=torch.int64)
        return out

    def loss(self, params, buffers, batch):
        views = batch.views
        self.check_batch(views)
        c = self.config
        tensors = {**params, **buffers}
        q_views = views if c.symmetric else views[:1]
        k_views = views.flip(0) if c.symmetric else views[1:]  # the key of query view i is the other view
        h = self.embed(params, buffers, q_views)
        nq, b = h.shape[:2]
        q = gather_batch(self.head("projector", tensors, h.reshape(nq * b, -1)).reshape(nq, b, -1), 1)
        k = self.target_forward(buffers, k_views)  # [nq, B, D], gathered
        b = q.shape[1]
        q, k = q.reshape(nq * b, -1), k.reshape(nq * b, -1)
        with fp32(q):
            losses = [info_nce_loss(qi, ki, buffers[QUEUE], c.temperature) for qi, ki in
                      zip(q.float().chunk(nq), k.float().chunk(nq))]
            loss = sum(lo for lo, _ in losses) / nq
            acc = sum(a for _, a in losses) / nq
        keys = F.normalize(k.detach().float(), dim=1)
        return self.output(loss, {"contrastive_acc": acc}, q, state={"keys": keys})

    def update(self, params, buffers, state, step, total_steps):
        c = self.config
        m = c.momentum if c.momentum_schedule == "constant" else momentum_cosine(c.momentum, step, total_steps)
        new = self.ema_update(params, buffers, m)
        if "keys" in state:
            new[QUEUE], new[PTR] = enqueue(buffers[QUEUE], buffers[PTR], state["keys"])
        return new


register_learner(LearnerSpec(
    "moco", MoCoConfig, MoCo,
    'contrastive: momentum key encoder and a queue of negative keys (MoCo v2: MLP head, blur, cosine lr)',
    default_source="views"))
