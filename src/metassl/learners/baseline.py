"""Baseline and Baseline++ (Chen, Liu, Kira, Wang & Huang, "A Closer Look at Few-shot Classification", ICLR 2019).

Training (`tasks.source: classes`): the encoder and a classifier over all C base classes are trained with
cross-entropy on plain labelled mini-batches. Baseline's classifier is linear, W f(x) + b; Baseline++'s is a cosine
classifier, logits_c = s * g_c * cos(v_c, f(x)), with the class weights weight-normalised (direction v_c, norm g_c,
as `torch.nn.utils.weight_norm`), features divided by ||f(x)|| + 1e-5 and the fixed scale s = 2 for a classifier
of at most 200 classes and 10 above (the authors' `distLinear`: "in omniglot, a larger scale factor is required to
handle >1000 output classes").
Test (`adapt`): the encoder is frozen and a NEW classifier of the same kind for the episode's N ways is fitted on the
support features, as the authors' `BaselineFinetune`: nn.Linear's initialization (weights and bias uniform in
+-1/sqrt(D); Baseline++: g_c = ||v_c|| at the start), SGD with lr 0.01, momentum 0.9, dampening 0.9, weight decay
0.001 (torch.optim.SGD's semantics: the first step's momentum buffer is the gradient itself), 100 epochs over the
support set in shuffled mini-batches of 4, each step on the mean cross-entropy of its mini-batch; `classify`
applies the fitted classifier to the query features.

Deviations and choices: the T episodes of an evaluation batch are fitted together (one [T, N, D] weight tensor,
the same per-episode arithmetic, since the loss is the sum of the episodes' losses and SGD acts elementwise);
each episode's initialization and shuffling come from a CPU generator seeded by a hash of its own support images and
labels and `finetune_seed`, so results are reproducible and do not depend on how episodes are batched (the
reference draws both from the global numpy/torch state). `learnable_norm: false` gives the paper's plain cosine
(the reference code's `class_wise_learnable_norm = False`, up to where the normalization sits in the gradient).
`finetune_encoder: true` (not in the paper) fine-tunes a copy of the encoder with the classifier on each episode's
support set, with the same optimizer, one episode at a time.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F

from ..config import ConfigError, LearnerConfig, option
from ..data.classes import ClassBatch
from ..data.episodic import episode_seed
from .base import ENCODER, Learner, LossOutput, register_learner, sub

Tensors = dict[str, torch.Tensor]
HEAD_W, HEAD_B = "learner.head.weight", "learner.head.bias"  # Baseline (and SimpleShot): linear, [C, D] and [C]
HEAD_V, HEAD_G = "learner.head.weight_v", "learner.head.weight_g"  # Baseline++: direction [C, D], norm [C]
COSINE_EPS = 1e-5  # features are divided by ||f(x)|| + 1e-5, as in the reference distLinear

__all__ = ["BaselineConfig", "BaselinePPConfig", "Baseline", "BaselinePP", "SGDSettings", "check_class_batch",
           "classifier_loss", "cosine_logits", "cosine_scale", "fit_classifier", "linear_init", "linear_logits",
           "sgd_step", "support_seed"]


# ---------------------------------------------------------------------------------------------------------------
# configuration


@dataclass
class BaselineConfig(LearnerConfig):
    name: str = "baseline"
    finetune_lr: float = option(0.01, range=(0.0, 100.0), help="SGD step size of the episode classifier (paper: 0.01)")
    finetune_momentum: float = option(0.9, range=(0.0, 1.0), help="SGD momentum (paper's code: 0.9)")
    finetune_dampening: float = option(0.9, range=(0.0, 1.0), help="SGD dampening (paper's code: 0.9)")
    finetune_weight_decay: float = option(0.001, range=(0.0, 10.0), help="SGD weight decay (paper's code: 0.001)")
    finetune_epochs: int = option(100, range=(1, 100000), help="passes over the support set (paper's code: 100)")
    finetune_batch_size: int = option(4, range=(1, 100000), help="support images per SGD step (paper's code: 4)")
    finetune_encoder: bool = option(False, help="also fine-tune a copy of the encoder on each episode's support set "
                                               "(not in the paper; one episode at a time, same optimizer)")
    finetune_seed: int = option(0, range=(0, None), help="seed of the episode classifier's initialization and "
                                                         "shuffling (mixed with a hash of the support set)")


@dataclass
class BaselinePPConfig(BaselineConfig):
    name: str = "baseline_pp"
    scale: float | None = option(None, range=(1e-6, 1e6),
                                 help="cosine logits scale s; null: 2 for classifiers of <= 200 classes, 10 above "
                                      "(the reference distLinear), for the training and the episode classifier alike")
    learnable_norm: bool = option(True, help="class-wise learnable norm g_c of the weight-normalised class weights "
                                             "(the reference code); false: plain cosine, the paper's formula")


@dataclass(frozen=True)
class SGDSettings:
    """torch.optim.SGD's hyperparameters, for the pure `sgd_step`."""

    lr: float = 0.01
    momentum: float = 0.9
    dampening: float = 0.9
    weight_decay: float = 0.001

    @classmethod
    def from_config(cls, c: BaselineConfig) -> "SGDSettings":
        return cls(c.finetune_lr, c.finetune_momentum, c.finetune_dampening, c.finetune_weight_decay)


# ---------------------------------------------------------------------------------------------------------------
# building blocks (plain functions, usable without the trainer)


def linear_init(ways: int, dim: int, generator: torch.Generator | None = None, bias: bool = True
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """nn.Linear(dim, ways)'s default initialization: weight [ways, dim] and bias [ways] uniform in +-1/sqrt(dim)."""
    bound = 1.0 / math.sqrt(dim) if dim > 0 else 0.0
    w = torch.empty(ways, dim).uniform_(-bound, bound, generator=generator)
    b = torch.empty(ways).uniform_(-bound, bound, generator=generator) if bias else None
    return w, b


def linear_logits(z: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """z [..., M, D] with weight [..., N, D] and bias [..., N] (the same leading dims, or none) -> [..., M, N]."""
    return torch.matmul(z, weight.transpose(-1, -2)) + bias.unsqueeze(-2)


def cosine_scale(outputs: int) -> float:
    """The reference distLinear's fixed scale: 2 for at most 200 classes, 10 for more."""
    return 2.0 if outputs <= 200 else 10.0


def cosine_logits(z: torch.Tensor, v: torch.Tensor, g: torch.Tensor | None, scale: float,
                  eps: float = COSINE_EPS) -> torch.Tensor:
    """Baseline++'s classifier: scale * <z / (||z|| + eps), g_c v_c / ||v_c||> for z [..., M, D], v [..., N, D] and
    g [..., N] (None: g_c = 1, plain cosine similarity) -> [..., M, N]."""
    zn = z / (z.norm(dim=-1, keepdim=True) + eps)
    w = v / v.norm(dim=-1, keepdim=True)
    if g is not None:
        w = w * g.unsqueeze(-1)
    return scale * torch.matmul(zn, w.transpose(-1, -2))


def classifier_loss(logits: torch.Tensor, labels: torch.Tensor) -> LossOutput:
    """Cross-entropy over the base classes and accuracy of a batch of logits [B, C] with labels [B]."""
    loss = F.cross_entropy(logits, labels)
    acc = (logits.argmax(-1) == labels).float().mean()
    return LossOutput(loss, {"loss": loss.detach(), "accuracy": acc.detach()})


def check_class_batch(batch: Any, learner: str, classes: int) -> ClassBatch:
    """The learner trains on the `classes` source; a clear error for episodes or another head size."""
    if not isinstance(batch, ClassBatch):
        raise ConfigError(
            f"learner {learner} trains a classifier over the base classes on plain labelled batches, but got a "
            f"{type(batch).__name__}; set tasks.source=classes (or auto) with tasks.batch_size=B")
    if batch.num_classes != classes:
        raise ConfigError(f"learner {learner}: its classifier has {classes} outputs but the batch has "
                          f"{batch.num_classes} classes; set tasks.num_classes={batch.num_classes} (or null)")
    return batch


def sgd_step(p: torch.Tensor, grad: torch.Tensor, buf: torch.Tensor | None, sgd: SGDSettings
             ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One torch.optim.SGD step (no Nesterov) as a pure function: (new parameter, new momentum buffer).
        d = grad + weight_decay * p
        buf = d on the first step, else momentum * buf + (1 - dampening) * d;  d = buf  (when momentum > 0)
        p = p - lr * d"""
    d = grad + sgd.weight_decay * p if sgd.weight_decay else grad
    if sgd.momentum:
        buf = d if buf is None else sgd.momentum * buf + (1.0 - sgd.dampening) * d
        d = buf
    return p - sgd.lr * d, buf


def fit_classifier(logits_fn: Callable[[Tensors, torch.Tensor], torch.Tensor], params: Tensors,
                   inputs: torch.Tensor, labels: torch.Tensor, order: torch.Tensor, batch_size: int,
                   sgd: SGDSettings) -> Tensors:
    """Fit `params` to T episodes' support sets at once by mini-batch SGD; return the fitted (detached) params.

    logits_fn(params, x) -> [T, b, N] for inputs x [T, b, ...] (features, or images when the encoder is fitted too).
    inputs [T, S, ...], labels [T, S]; order [E, T, S]: each epoch's permutation of every episode's support set.
    Every epoch visits its permutation in consecutive slices of `batch_size` (the last may be smaller); each step
    minimizes the sum over episodes of each episode's mean cross-entropy on its slice, so each episode's tensors
    get exactly the gradient of its own loss. Runs with gradients enabled (also under an outer torch.no_grad).
    """
    t, s = labels.shape
    rows = torch.arange(t, device=labels.device).unsqueeze(1)
    params = {k: v.detach() for k, v in params.items()}
    bufs: dict[str, torch.Tensor | None] = {k: None for k in params}
    order = order.to(labels.device)
    with torch.enable_grad():
        for epoch in range(order.shape[0]):
            for i in range(0, s, batch_size):
                idx = order[epoch, :, i:i + batch_size]  # [T, b]
                x, y = inputs[rows, idx], labels[rows, idx]
                leaves = {k: v.requires_grad_() for k, v in params.items()}
                logits = logits_fn(leaves, x)
                per = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1), reduction="none")
                loss = per.reshape(t, -1).mean(1).sum()
                grads = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
                new = {}
                for (k, p), g in zip(leaves.items(), grads):
                    p = p.detach()
                    g = torch.zeros_like(p) if g is None else g
                    new[k], bufs[k] = sgd_step(p, g, bufs[k], sgd)
                params = new
    return params


def support_seed(support_x: torch.Tensor, support_y: torch.Tensor, seed: int) -> int:
    """A 63-bit seed from one episode's support images (quantized, so that float noise of another device or
    preprocessing path rarely changes it), its labels and `seed`: the same episode always draws the same numbers."""
    q = torch.round(support_x.detach().float() * 64).to(torch.int32).cpu().contiguous().numpy().tobytes()
    y = support_y.detach().to(torch.int64).cpu().contiguous().numpy().tobytes()
    digest = hashlib.sha256(q + b"|" + y).hexdigest()
    return episode_seed("baseline-finetune", seed, tuple(support_x.shape), digest)


# ---------------------------------------------------------------------------------------------------------------
# the learners


@register_learner("baseline", BaselineConfig, default_source="classes",
                  description="classifier over the base classes; test: a new linear classifier fitted on the "
                              "frozen support features")
class Baseline(Learner):
    """The training classifier (`init_params`, `head_logits`) and the episode classifier (`episode_head`,
    `episode_logits`) are linear; Baseline++ overrides these four."""

    head_names = ("weight", "bias")

    # -- training -----------------------------------------------------------------------------------------------
    def init_params(self, feature_dim, ways):
        w, _ = linear_init(ways, feature_dim, bias=False)
        return {HEAD_W: w, HEAD_B: torch.zeros(ways)}  # the reference zeroes the training classifier's bias

    def num_classes(self, params: Tensors) -> int:
        return params[HEAD_W].shape[0]

    def head_logits(self, params: Tensors, z: torch.Tensor) -> torch.Tensor:
        return linear_logits(z, params[HEAD_W], params[HEAD_B])

    def loss(self, params, buffers, batch):
        batch = check_class_batch(batch, self.config.name, self.num_classes(params))
        z = self.embed(params, buffers, batch.images)
        return classifier_loss(self.head_logits(params, z), batch.labels)

    # -- the episode classifier ----------------------------------------------------------------------------------
    def episode_head(self, ways: int, dim: int, generator: torch.Generator) -> Tensors:
        """A fresh classifier for one episode (nn.Linear's initialization from `generator`)."""
        w, b = linear_init(ways, dim, generator)
        return {"weight": w, "bias": b}

    def episode_logits(self, head: Tensors, z: torch.Tensor) -> torch.Tensor:
        """head tensors [T, N, ...], z [T, M, D] -> [T, M, N]."""
        return linear_logits(z, head["weight"], head["bias"])

    def episode_draws(self, support_x: torch.Tensor, support_y: torch.Tensor, ways: int, dim: int
                      ) -> tuple[Tensors, torch.Tensor]:
        """Each episode's initial classifier (stacked [T, ...]) and shuffling order [E, T, S], drawn on the CPU from
        a generator seeded by `support_seed` (initialization first, then one permutation per epoch)."""
        c = self.config
        heads, orders = [], []
        for sx, sy in zip(support_x.unbind(0), support_y.unbind(0)):
            g = torch.Generator().manual_seed(support_seed(sx, sy, c.finetune_seed))
            heads.append(self.episode_head(ways, dim, g))
            orders.append(torch.rand(c.finetune_epochs, sy.shape[0], generator=g).argsort(-1))
        head = {k: torch.stack([h[k] for h in heads]) for k in heads[0]}
        return head, torch.stack(orders, 1)

    def adapt(self, params, buffers, support_x, support_y, ways):
        c = self.config
        if support_y.dim() != 2 or support_y.is_floating_point():
            raise ValueError(f"learner {c.name}: support labels must be integers [T, S], got "
                             f"{tuple(support_y.shape)} {support_y.dtype}")
        with torch.no_grad():
            z = self.embed(params, buffers, support_x, per_task=True)
        head, order = self.episode_draws(support_x, support_y, ways, z.shape[-1])
        head = {k: v.to(device=z.device, dtype=z.dtype) for k, v in head.items()}
        sgd = SGDSettings.from_config(c)
        if not c.finetune_encoder:
            fitted = fit_classifier(self.episode_logits, head, z, support_y, order, c.finetune_batch_size, sgd)
            return {"head": fitted}
        return self._adapt_with_encoder(params, buffers, support_x, support_y, head, order, sgd)

    def _adapt_with_encoder(self, params, buffers, support_x, support_y, head, order, sgd):
        """The encoder fine-tuned with the classifier, one episode at a time (a copy per episode)."""
        c = self.config
        enc = {k: v.detach() for k, v in sub(params, ENCODER).items()}
        enc_buffers = {k: v.detach() for k, v in sub(buffers, ENCODER).items()}
        heads, encoders = [], []
        for t in range(support_x.shape[0]):
            own_buffers = {k: v.clone() for k, v in enc_buffers.items()}  # a train-mode BatchNorm updates them

            def logits_fn(p, x, own_buffers=own_buffers):
                z = self.encode_with({**sub(p, "enc."), **own_buffers}, x)  # x [1, b, C, H, W] -> [1, b, D]
                return self.episode_logits(sub(p, "head."), z)

            start = {**{f"enc.{k}": v for k, v in enc.items()},
                     **{f"head.{k}": v[t:t + 1] for k, v in head.items()}}
            fitted = fit_classifier(logits_fn, start, support_x[t:t + 1], support_y[t:t + 1], order[:, t:t + 1],
                                    c.finetune_batch_size, sgd)
            heads.append(sub(fitted, "head."))
            encoders.append(sub(fitted, "enc."))
        return {"head": {k: torch.cat([h[k] for h in heads]) for k in heads[0]},
                "encoder": {k: torch.stack([e[k] for e in encoders]) for k in encoders[0]}}

    def classify(self, params, buffers, state, query_x):
        if "encoder" in state:  # fine-tuned encoders: one per episode
            enc_buffers = sub(buffers, ENCODER)
            z = torch.stack([self.encode_with({**{k: v[t] for k, v in state["encoder"].items()}, **enc_buffers},
                                              query_x[t]) for t in range(query_x.shape[0])])
        else:
            z = self.embed(params, buffers, query_x, per_task=True)
        return self.episode_logits(state["head"], z)


@register_learner("baseline_pp", BaselinePPConfig, default_source="classes",
                  description="cosine classifier over the base classes; test: a new cosine classifier fitted on "
                              "the frozen support features")
class BaselinePP(Baseline):
    def scale(self, outputs: int) -> float:
        s = self.config.scale
        return cosine_scale(outputs) if s is None else float(s)

    def init_params(self, feature_dim, ways):
        v, _ = linear_init(ways, feature_dim, bias=False)  # nn.Linear(D, C, bias=False), then weight_norm
        out = {HEAD_V: v}
        if self.config.learnable_norm:
            out[HEAD_G] = v.norm(dim=1)
        return out

    def num_classes(self, params):
        return params[HEAD_V].shape[0]

    def head_logits(self, params, z):
        return cosine_logits(z, params[HEAD_V], params.get(HEAD_G), self.scale(params[HEAD_V].shape[0]))

    def episode_head(self, ways, dim, generator):
        v, _ = linear_init(ways, dim, generator, bias=False)
        return {"weight_v": v, "weight_g": v.norm(dim=1)} if self.config.learnable_norm else {"weight_v": v}

    def episode_logits(self, head, z):
        v = head["weight_v"]
        return cosine_logits(z, v, head.get("weight_g"), self.scale(v.shape[-2]))
