"""Semi-supervised Prototypical Networks (Ren, Triantafillou, Ravi, Snell, Swersky, Tenenbaum, Larochelle & Zemel,
"Meta-Learning for Semi-Supervised Few-Shot Classification", ICLR 2018).

Episodes carry an unlabeled set (`tasks.source: semisupervised`: M images of each class and of D distractor
classes, `TaskBatch.unlabeled_x`). The support class means p_c are refined with the unlabeled embeddings u_j,

    p~_c = (sum_i z_i 1[y_i = c] + sum_j u_j w_jc m_jc) / (n_c + sum_j w_jc m_jc),

and the queries are classified by minus squared distance to p~_c, trained end to end (`refine`):

- `softkmeans`: w_jc = softmax_c(-||u_j - p_c||^2), m = 1;
- `distractor` (soft k-means + cluster): an extra cluster at the origin takes the distractors,
  w_jc = softmax over c = 1..N+1 of (-||u_j - p_c||^2 / r_c^2 - A(r_c)), A(r) = log(2 pi) / 2 + log r, r_c = 1 for
  the classes and a learned r for the distractor cluster (`learner.distractor_log_radius`), m = 1;
- `masked` (masked soft k-means): w as softkmeans and a soft mask m_jc = sigmoid(-gamma_c (d~_jc - beta_c)) of the
  distances normalized by their mean over j, d~_jc = d_jc / mean_j d_jc, with (beta_c, gamma_c) from a small MLP
  (`learner.mask.*`, one tanh hidden layer of `mask_hidden` units) of [min, max, variance, skewness, kurtosis] of
  d~_.c.

The paper refines once (`steps: 1`) in training and testing; evaluation with `metassl eval RUN --unlabeled M
--distractors D` gives every episode its unlabeled set; without one the learner is ProtoNet. Support, query and
unlabeled images go through the encoder in one call (shared BatchNorm statistics, as ProtoNet's support and query).
`refine_prototypes` is also the `softkmeans` transductive method (`eval/transductive/softkmeans.py`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..config import LearnerConfig, option
from .base import Learner, query_loss, register_learner
from .protonet import prototypes, squared_euclidean

LOG_RADIUS = "learner.distractor_log_radius"
MASK = "learner.mask."
HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


@dataclass
class SemiProtoNetConfig(LearnerConfig):
    name: str = "semi_protonet"
    refine: str = option("softkmeans", choices=("softkmeans", "distractor", "masked"),
                         help="how unlabeled images refine the prototypes: soft k-means, soft k-means with a "
                              "distractor cluster, or masked soft k-means (the paper's three models)")
    steps: int = option(1, range=(0, 100), help="refinement steps (the paper: 1; 0: plain ProtoNet)")
    mask_hidden: int = option(20, range=(1, 10000), help="hidden units of the masking MLP (refine: masked)")


def _moments(d: torch.Tensor) -> torch.Tensor:
    """[min, max, variance, skewness, kurtosis] over the unlabeled axis of distances [T, U, N] -> [T, N, 5]."""
    mean = d.mean(1, keepdim=True)
    c = d - mean
    var = c.pow(2).mean(1)
    std = var.clamp_min(1e-12).sqrt()
    skew = c.pow(3).mean(1) / std.pow(3)
    kurt = c.pow(4).mean(1) / var.clamp_min(1e-12).pow(2)
    return torch.stack([d.amin(1), d.amax(1), var, skew, kurt], -1)


def mask_mlp(stats: torch.Tensor, weights: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(beta, gamma) [T, N] from distance statistics [T, N, 5] by the masking MLP (`0.*` then tanh then `2.*`)."""
    h = torch.tanh(F.linear(stats, weights["0.weight"], weights["0.bias"]))
    out = F.linear(h, weights["2.weight"], weights["2.bias"])
    return out[..., 0], out[..., 1]


def refine_prototypes(support_z: torch.Tensor, support_y: torch.Tensor, unlabeled_z: torch.Tensor, ways: int,
                      steps: int = 1, distractor_log_radius: torch.Tensor | float | None = None,
                      mask: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
    """Prototypes [T, N, D] refined by `steps` soft k-means steps over unlabeled embeddings [T, U, D] (see the module
    docstring): with a distractor cluster when `distractor_log_radius` (log r) is given, masked when the masking
    MLP's `mask` weights are given."""
    oh = F.one_hot(support_y, ways).to(support_z.dtype)
    labeled_sum, counts = oh.transpose(1, 2) @ support_z, oh.sum(1)  # [T, N, D], [T, N]
    p = prototypes(support_z, support_y, ways)
    for _ in range(steps):
        d = squared_euclidean(unlabeled_z, p)  # [T, U, N]
        if distractor_log_radius is not None:
            log_r = torch.as_tensor(distractor_log_radius, dtype=d.dtype, device=d.device).reshape(())
            d0 = unlabeled_z.pow(2).sum(-1, keepdim=True) * torch.exp(-2 * log_r) + log_r  # + A(r) - A(1)
            w = torch.softmax(torch.cat([-d, -d0], -1), -1)[..., :ways]
        else:
            w = torch.softmax(-d, -1)
        if mask is not None:
            dn = d / d.mean(1, keepdim=True).clamp_min(1e-12)
            beta, gamma = mask_mlp(_moments(dn), mask)
            w = w * torch.sigmoid(-gamma.unsqueeze(1) * (dn - beta.unsqueeze(1)))
        p = (labeled_sum + w.transpose(1, 2) @ unlabeled_z) / (counts + w.sum(1)).unsqueeze(-1)
    return p


def _linear_init(out_dim: int, in_dim: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    bound = 1.0 / math.sqrt(in_dim)  # nn.Linear's default
    w = (torch.rand(out_dim, in_dim, generator=generator) * 2 - 1) * bound
    return w, (torch.rand(out_dim, generator=generator) * 2 - 1) * bound


@register_learner("semi_protonet", SemiProtoNetConfig,
                  description="ProtoNet whose prototypes are refined with unlabeled images by soft k-means "
                              "(optional distractor cluster or masking), Ren et al. 2018",
                  default_source="semisupervised")
class SemiProtoNet(Learner):
    def init_params(self, feature_dim, ways):
        c = self.config
        if c.refine == "distractor":
            return {LOG_RADIUS: torch.zeros(1)}
        if c.refine == "masked":
            g = torch.Generator().manual_seed(0)
            w0, b0 = _linear_init(c.mask_hidden, 5, g)
            w2, _ = _linear_init(2, c.mask_hidden, g)
            # start at beta = 1 (the mean normalized distance), gamma = 1: a mild mask
            return {MASK + "0.weight": w0, MASK + "0.bias": b0, MASK + "2.weight": w2 * 0.01,
                    MASK + "2.bias": torch.tensor([1.0, 1.0])}
        return {}

    def _refine(self, params, z_support, support_y, z_unlabeled, ways):
        c = self.config
        if z_unlabeled is None or z_unlabeled.shape[1] == 0 or c.steps == 0:
            return prototypes(z_support, support_y, ways)
        log_r = params[LOG_RADIUS] if c.refine == "distractor" else None
        mask = {k[len(MASK):]: v for k, v in params.items() if k.startswith(MASK)} if c.refine == "masked" else None
        return refine_prototypes(z_support, support_y, z_unlabeled, ways, c.steps, log_r, mask)

    def adapt(self, params, buffers, support_x, support_y, ways):
        return prototypes(self.embed(params, buffers, support_x, per_task=True), support_y, ways)

    def classify(self, params, buffers, state, query_x):
        return -squared_euclidean(self.embed(params, buffers, query_x, per_task=True), state)

    def predict(self, params, buffers, support_x, support_y, query_x, ways, unlabeled_x=None):
        if unlabeled_x is None:
            return super().predict(params, buffers, support_x, support_y, query_x, ways)
        s, q = support_x.shape[1], query_x.shape[1]
        z = self.embed(params, buffers, torch.cat([support_x, query_x, unlabeled_x], 1), per_task=True)
        p = self._refine(params, z[:, :s], support_y, z[:, s + q:], ways)
        return -squared_euclidean(z[:, s:s + q], p)

    def loss(self, params, buffers, tasks):
        s, q = tasks.support_x.shape[1], tasks.query_x.shape[1]
        parts = [tasks.support_x, tasks.query_x] + ([] if tasks.unlabeled_x is None else [tasks.unlabeled_x])
        z = self.embed(params, buffers, torch.cat(parts, 1))
        zu = None if tasks.unlabeled_x is None else z[:, s + q:]
        out = query_loss(-squared_euclidean(z[:, s:s + q], self._refine(params, z[:, :s], tasks.support_y, zu,
                                                                         tasks.ways)), tasks.query_y)
        if self.config.refine == "distractor":
            out.metrics["distractor_radius"] = params[LOG_RADIUS].detach().exp().reshape(())
        return out
