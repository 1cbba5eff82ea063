"""FEAT, Few-shot Embedding Adaptation with Transformer (Ye, Hu, Zhan & Sha, CVPR 2020).

Prototypes (class means of the support embeddings) are adapted to the task by a set-to-set function, a one-layer,
one-head Transformer block over the N prototypes, as in the reference code (github.com/Sha-Lab/FEAT,
model/models/feat.py, MultiHeadAttention(1, D, D, D, dropout=0.5)):
    A = dropout_a( softmax( (X W_q)(X W_k)ᵀ / sqrt(D) ) ),   O = dropout( (A X W_v) W_fcᵀ + b_fc )
    set_fn(X) = LayerNorm(O + X)
with attention dropout `attn_dropout` (0.1) and output dropout `dropout` (0.5), active only while training (the
encoder's train mode). Queries are classified against the adapted prototypes by
    euclidean (the paper):  -||q - p||² / temperature
    cosine:                 q · p / ||p|| / temperature   (the reference code normalizes the prototypes only)

The contrastive regularizer (training only, weight `balance`, the paper's lambda): the set function is applied to
each class's set of support AND query embeddings (K + Q instances of one class), the means of the adapted sets are
class centers, and every support and query instance (its un-adapted embedding, as the reference code) is
classified against the centers with the same distance divided by `temperature2`:
    loss = CE(query logits) + balance * CE(instance-vs-center logits)
The regularizer needs the same number of support + query images per class (the episodes of training have it).

The attention tensors are `learner.attn.*` (w_q, w_k, w_v [D, D] without bias, initialized N(0, 2/(2D)); fc [D, D]
xavier-normal with nn.Linear's bias; LayerNorm 1/0), created by `init_params`. The paper starts from a
pre-trained classifier's encoder (`init_from: RUN` copies one); otherwise everything trains from scratch.
Deviation: one learning rate for encoder and set function (the reference code multiplies the set function's by 10).
Evaluation works for any number of ways and shots.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..config import LearnerConfig, option
from .base import Learner, LossOutput, Tensors, register_learner
from .protonet import prototypes, squared_euclidean

ATTN = "learner.attn."


@dataclass
class FEATConfig(LearnerConfig):
    name: str = "feat"
    distance: str = option("euclidean", choices=("euclidean", "cosine"),
                           help="squared Euclidean (the paper) or dot product with L2-normalized prototypes "
                                "(the reference code's cosine)")
    temperature: float = option(64.0, range=(1e-6, 1e6), help="query logits are divided by this (reference "
                                                               "ConvNet 5-way 1-shot: 64)")
    temperature2: float = option(16.0, range=(1e-6, 1e6), help="regularizer logits are divided by this "
                                                                "(reference ConvNet 5-way 1-shot: 16)")
    balance: float = option(1.0, range=(0.0, 1e6), help="weight of the contrastive regularizer (the paper's "
                                                         "lambda; 0: off)")
    dropout: float = option(0.5, range=(0.0, 1.0), help="dropout on the attention block's output (training only)")
    attn_dropout: float = option(0.1, range=(0.0, 1.0), help="dropout on the attention weights (training only)")


# ---------------------------------------------------------------------------------------------------------------
# building blocks (plain functions)


def init_attention_params(dim: int) -> Tensors:
    """The set function's tensors, initialized as the reference code's MultiHeadAttention(1, D, D, D)."""
    std = math.sqrt(2.0 / (dim + dim))
    fc_w = torch.empty(dim, dim)
    torch.nn.init.xavier_normal_(fc_w)
    bound = 1.0 / math.sqrt(dim)
    return {ATTN + "w_q": torch.randn(dim, dim) * std, ATTN + "w_k": torch.randn(dim, dim) * std,
            ATTN + "w_v": torch.randn(dim, dim) * std, ATTN + "fc.weight": fc_w,
            ATTN + "fc.bias": torch.empty(dim).uniform_(-bound, bound),
            ATTN + "norm.weight": torch.ones(dim), ATTN + "norm.bias": torch.zeros(dim)}


def set_function(params: Tensors, x: torch.Tensor, dropout: float = 0.0, attn_dropout: float = 0.0,
                 training: bool = False) -> torch.Tensor:
    """One-head self-attention with residual and LayerNorm over sets x [B, L, D] -> [B, L, D]."""
    q = F.linear(x, params[ATTN + "w_q"])
    k = F.linear(x, params[ATTN + "w_k"])
    v = F.linear(x, params[ATTN + "w_v"])
    attn = (q @ k.transpose(-1, -2) / math.sqrt(x.shape[-1])).softmax(-1)
    attn = F.dropout(attn, attn_dropout, training)
    out = F.dropout(F.linear(attn @ v, params[ATTN + "fc.weight"], params[ATTN + "fc.bias"]), dropout, training)
    return F.layer_norm(out + x, x.shape[-1:], params[ATTN + "norm.weight"], params[ATTN + "norm.bias"])


def distance_logits(queries: torch.Tensor, centers: torch.Tensor, distance: str, temperature: float
                    ) -> torch.Tensor:
    """[T, Q, D] x [T, N, D] -> [T, Q, N]: -squared Euclidean, or q · p/||p||, divided by the temperature."""
    if distance == "cosine":
        return queries @ F.normalize(centers, dim=-1).transpose(1, 2) / temperature
    return -squared_euclidean(queries, centers) / temperature


def class_sets(embeddings: torch.Tensor, labels: torch.Tensor, ways: int) -> torch.Tensor:
    """Group instance embeddings [T, M, D] by label [T, M] into per-class sets [T, N, M/N, D]; every class must
    have the same number of instances."""
    counts = F.one_hot(labels, ways).sum(1)  # [T, N]
    per = embeddings.shape[1] // ways
    if per * ways != embeddings.shape[1] or bool((counts != per).any()):
        raise ValueError(f"learner feat: the contrastive regularizer needs the same number of support + query "
                         f"images in every class (class counts {counts.tolist()}); use balanced episodes or set "
                         f"learner.balance=0")
    order = torch.argsort(labels, dim=1, stable=True)
    grouped = embeddings.gather(1, order.unsqueeze(-1).expand_as(embeddings))
    return grouped.reshape(embeddings.shape[0], ways, per, embeddings.shape[-1])


def regularizer_logits(params: Tensors, embeddings: torch.Tensor, labels: torch.Tensor, ways: int,
                       distance: str, temperature2: float, dropout: float = 0.0, attn_dropout: float = 0.0,
                       training: bool = False) -> torch.Tensor:
    """Logits [T, M, N] of every instance [T, M, D] against the centers of its task's adapted class sets."""
    sets = class_sets(embeddings, labels, ways)
    t, n, p, d = sets.shape
    adapted = set_function(params, sets.reshape(t * n, p, d), dropout, attn_dropout, training)
    centers = adapted.reshape(t, n, p, d).mean(2)
    return distance_logits(embeddings, centers, distance, temperature2)


# ---------------------------------------------------------------------------------------------------------------
# the learner


@register_learner("feat", FEATConfig,
                  description="prototypes adapted by a Transformer set-to-set function, with the contrastive "
                              "regularizer")
class FEAT(Learner):
    def init_params(self, feature_dim: int, ways: int) -> Tensors:
        return init_attention_params(feature_dim)

    def _attend(self, params: Tensors, x: torch.Tensor) -> torch.Tensor:
        c = self.config
        return set_function(params, x, c.dropout, c.attn_dropout, self.encoder.training)

    def adapt(self, params, buffers, support_x, support_y, ways):
        protos = prototypes(self.embed(params, buffers, support_x, per_task=True), support_y, ways)
        return self._attend(params, protos)

    def classify(self, params, buffers, state, query_x):
        c = self.config
        return distance_logits(self.embed(params, buffers, query_x, per_task=True), state, c.distance,
                               c.temperature)

    def loss(self, params, buffers, tasks):
        c = self.config
        s = tasks.support_x.shape[1]
        z = self.embed(params, buffers, torch.cat([tasks.support_x, tasks.query_x], 1), per_task=True)
        adapted = self._attend(params, prototypes(z[:, :s], tasks.support_y, tasks.ways))
        logits = distance_logits(z[:, s:], adapted, c.distance, c.temperature)
        ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tasks.query_y.reshape(-1))
        metrics = {"query_loss": ce.detach(),
                   "accuracy": (logits.argmax(-1) == tasks.query_y).float().mean().detach()}
        loss = ce
        if c.balance > 0:
            labels = torch.cat([tasks.support_y, tasks.query_y], 1)
            reg = regularizer_logits(params, z, labels, tasks.ways, c.distance, c.temperature2, c.dropout,
                                     c.attn_dropout, self.encoder.training)
            reg_ce = F.cross_entropy(reg.reshape(-1, reg.shape[-1]), labels.reshape(-1))
            loss = ce + c.balance * reg_ce
            metrics["regularizer"] = reg_ce.detach()
        metrics["loss"] = loss.detach()
        return LossOutput(loss, metrics)
