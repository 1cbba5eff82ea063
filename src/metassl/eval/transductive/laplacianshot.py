"""LaplacianShot (Ziko, Dolz, Granger, Ben Ayed, "Laplacian Regularized Few-Shot Learning", ICML 2020).

Features are L2-normalized and the unlabeled ones (queries, then the optional pool) shifted by mean(support) -
mean(unlabeled); prototypes m_c are the support means, or (`rectify: true`, the paper's "LaplacianShot with
rectified prototypes") BD-CSPN's rectified prototypes. The soft assignments Y [U, N] minimize

    E(Y) = sum_q y_q . a_q - (lam / 2) sum_{q,p} w_qp y_q . y_p + sum_q y_q . log y_q,   a_qc = ||x_q - m_c||^2

with W the symmetrized kNN graph of the unlabeled features (w_qp = 1 when p is among q's `knn` nearest neighbours
or q among p's, averaged). Each bound-optimization step minimizes the linear upper bound of the pairwise term at
the current Y in closed form, Y <- softmax(-a + lam W Y), from Y = softmax(-a); `steps` of them. Defaults knn 3,
lam 0.7, 20 steps follow a re-implementation tuned on miniImageNet (easyfsl; unchecked against the paper, whose
lam is chosen on validation per data set).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ...config import option
from . import l2n, pool, prototypes, register_transductive, sq_distances
from .bdcspn import rectify, shift_unlabeled


@dataclass
class LaplacianShotConfig:
    knn: int = option(3, range=(1, None), help="neighbours of each unlabeled feature in the graph")
    lam: float = option(0.7, range=(0.0, None), help="weight of the Laplacian term")
    steps: int = option(20, range=(0, 1000), help="bound-optimization steps")
    rectify: bool = option(True, help="rectified prototypes (BD-CSPN's, eps 10) instead of the support means")
    shift: bool = option(True, help="shift unlabeled features by mean(support) - mean(unlabeled)"
                         " (false for a query set of one image: the shift puts it on the support mean)")


def knn_graph(x: torch.Tensor, k: int) -> torch.Tensor:
    """Symmetric kNN affinities [T, U, U] (no self-loops) of features x [T, U, D]."""
    t, u, _ = x.shape
    k = min(k, u - 1)
    w = torch.zeros(t, u, u, dtype=x.dtype, device=x.device)
    if k < 1:
        return w
    d = sq_distances(x, x).masked_fill(torch.eye(u, dtype=torch.bool, device=x.device), float("inf"))
    idx = d.topk(k, dim=-1, largest=False).indices
    w.scatter_(2, idx, 1.0)
    return (w + w.transpose(1, 2)) / 2


def energy(y: torch.Tensor, unary: torch.Tensor, w: torch.Tensor, lam: float) -> torch.Tensor:
    """E(Y) per episode [T]."""
    pair = (y * (w @ y)).sum((1, 2))
    return (y * unary).sum((1, 2)) - 0.5 * lam * pair + (y * torch.log(y.clamp_min(1e-30))).sum((1, 2))


def bound_updates(unary, w, lam, steps):
    """The assignments after each step: a list of [T, U, N], the first Y = softmax(-a)."""
    ys = [torch.softmax(-unary, -1)]
    for _ in range(steps):
        ys.append(torch.softmax(-unary + lam * (w @ ys[-1]), -1))
    return ys


@register_transductive("laplacianshot", LaplacianShotConfig,
                       description="LaplacianShot (Ziko et al. 2020): Laplacian-regularized bound optimization "
                       "over a kNN graph of the queries, rectified prototypes")
def run(support_z, support_y, query_z, ways, unlabeled_z, cfg):
    s, u = l2n(support_z), l2n(pool(query_z, unlabeled_z))
    if cfg.shift:
        u = shift_unlabeled(s, u)
    m = rectify(s, support_y, u, ways) if cfg.rectify else prototypes(s, support_y, ways)
    unary = sq_distances(u, m)
    y = bound_updates(unary, knn_graph(u, cfg.knn), cfg.lam, cfg.steps)[-1]
    return torch.log(y[:, : query_z.shape[1]].clamp_min(1e-30))
