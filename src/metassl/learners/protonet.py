"""Prototypical Networks (Snell, Swersky & Zemel, NeurIPS 2017).

A class is represented by the mean embedding of its support images (its prototype); a query is classified by a
softmax over negative squared Euclidean distances to the prototypes (or scaled cosine similarity). All tasks of a
batch go through the encoder in one call, also variable-way variable-shot tasks (Meta-Dataset episodes, padded:
only their real images are embedded, padded classes get logit -inf, padded queries weigh nothing).

Options beyond the paper (benchmarks/time_to_accuracy.py measures them): `distance: l2`, the plain (not squared)
Euclidean distance that easyfsl scores with (`-torch.cdist`); `separate_support_query`, support and query images in
two encoder calls (two BatchNorm batches, as easyfsl) instead of one (the reference implementation).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..config import LearnerConfig, option
from .base import Learner, embed_masked, masked_query_loss, query_loss, register_learner


@dataclass
class ProtoNetConfig(LearnerConfig):
    name: str = "protonet"
    distance: str = option("euclidean", choices=("euclidean", "l2", "cosine"),
                           help="euclidean: squared Euclidean distance (the paper); l2: plain Euclidean distance "
                                "(easyfsl); cosine: cosine similarity")
    temperature: float = option(1.0, range=(1e-6, 1e6), help="logits are divided by this (cosine: try 0.1)")
    separate_support_query: bool = option(False, help="training: support and query images in two encoder calls "
                                          "(BatchNorm statistics of each set apart, as easyfsl) instead of one")


def prototypes(embeddings: torch.Tensor, labels: torch.Tensor, ways: int, mask: torch.Tensor | None = None
               ) -> torch.Tensor:
    """Class means [T, N, D] of support embeddings [T, S, D] with labels [T, S] in 0..N-1 (any order, any counts);
    `mask` [T, S]: only the True entries count (padded variable-way tasks)."""
    onehot = F.one_hot(labels, ways).to(embeddings.dtype)  # [T, S, N]
    if mask is not None:
        onehot = onehot * mask.unsqueeze(-1).to(onehot.dtype)
    sums = onehot.transpose(1, 2) @ embeddings  # [T, N, D]
    return sums / onehot.sum(1).clamp_min(1.0).unsqueeze(-1)


def squared_euclidean(queries: torch.Tensor, protos: torch.Tensor) -> torch.Tensor:
    """[T, Q, D] x [T, N, D] -> [T, Q, N] squared distances."""
    return (queries.unsqueeze(2) - protos.unsqueeze(1)).pow(2).sum(-1)


def euclidean(queries: torch.Tensor, protos: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """[T, Q, D] x [T, N, D] -> [T, Q, N] plain Euclidean distances; the squared distance is clamped at `eps` before
    the square root, so a query on a prototype has a zero gradient instead of an infinite one."""
    return squared_euclidean(queries, protos).clamp_min(eps).sqrt()


@register_learner("protonet", ProtoNetConfig,
                  description="class means of support embeddings, nearest by (squared) Euclidean distance")
class ProtoNet(Learner):
    variable_ways = True  # padded Meta-Dataset episodes: masked prototypes, padded classes' logits -inf

    def adapt(self, params, buffers, support_x, support_y, ways):
        return prototypes(self.embed(params, buffers, support_x, per_task=True), support_y, ways)

    def classify(self, params, buffers, state, query_x):
        return self.logits_from_embeddings(self.embed(params, buffers, query_x, per_task=True), state)

    def logits_from_embeddings(self, queries: torch.Tensor, protos: torch.Tensor) -> torch.Tensor:
        if self.config.distance == "cosine":
            logits = F.normalize(queries, dim=-1) @ F.normalize(protos, dim=-1).transpose(1, 2)
        elif self.config.distance == "l2":
            logits = -euclidean(queries, protos)
        else:
            logits = -squared_euclidean(queries, protos)
        return logits / self.config.temperature

    def loss(self, params, buffers, tasks):
        if tasks.padded:  # variable ways and shots: only the real images are embedded (one call), masks elsewhere
            s = tasks.support_x.shape[1]
            z = embed_masked(self, params, buffers, torch.cat([tasks.support_x, tasks.query_x], 1),
                             torch.cat([tasks.support_mask, tasks.query_mask], 1))
            protos = prototypes(z[:, :s], tasks.support_y, tasks.ways, tasks.support_mask)
            return masked_query_loss(self.logits_from_embeddings(z[:, s:], protos), tasks.query_y, tasks.query_mask,
                                     tasks.task_ways)
        if self.config.separate_support_query:  # two BatchNorm batches: the support set's, then the queries'
            zs = self.embed(params, buffers, tasks.support_x)
            zq = self.embed(params, buffers, tasks.query_x)
        else:  # one encoder call, as in the reference implementation (shared BatchNorm statistics)
            s = tasks.support_x.shape[1]
            z = self.embed(params, buffers, torch.cat([tasks.support_x, tasks.query_x], 1))
            zs, zq = z[:, :s], z[:, s:]
        logits = self.logits_from_embeddings(zq, prototypes(zs, tasks.support_y, tasks.ways))
        return query_loss(logits, tasks.query_y)
