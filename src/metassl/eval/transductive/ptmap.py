"""PT-MAP (Hu, Gripon, Pateux, "Leveraging the Feature Distribution in Transfer-based Few-Shot Learning", ICANN
2021).

Features are power-transformed, x -> sign(x)|x + 1e-6|^beta (the paper's (x + 1e-6)^beta for the non-negative
features of a ReLU encoder; the sign keeps it defined for encoders with negative outputs), L2-normalized, centered
(the support and the unlabeled set each on its own mean, as the authors' code does) and normalized again. Class
centers start at the support means; each of `n_iter` MAP steps computes the soft assignment of the unlabeled
features by Sinkhorn optimal transport of exp(-lam * ||z - mu_c||^2) with marginals 1 per unlabeled feature and
U / N per class (balanced classes), fixes the support rows to their one-hot labels, and moves the centers by
alpha toward the assignment-weighted means. The result is the final assignment of the queries. Defaults: beta 0.5,
lam 10, alpha 0.2, 20 steps, Sinkhorn tolerance 1e-6 / 1000 iterations (checked against the authors' code,
yhu01/PT-MAP test_standard.py). Deviations: no QR dimension reduction (it is a rotation of the features: distances
are unchanged); `unbalanced: true` drops the class marginals (a softmax over classes per feature) for query sets
whose classes are not balanced.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ...config import option
from . import l2n, one_hot, pool, prototypes, register_transductive, sq_distances


@dataclass
class PTMAPConfig:
    beta: float = option(0.5, range=(1e-6, None), help="power transform exponent (1: none)")
    lam: float = option(10.0, range=(1e-6, None), help="Sinkhorn sharpness: transport kernel exp(-lam * d^2)")
    alpha: float = option(0.2, range=(0.0, 1.0), help="step size of the class-center update")
    n_iter: int = option(20, range=(0, 1000), help="MAP steps")
    sinkhorn_iters: int = option(1000, range=(1, 100000), help="at most this many Sinkhorn iterations")
    tol: float = option(1e-6, range=(0.0, None), help="Sinkhorn stops when row sums change by less than this")
    center: bool = option(True, help="center the support and the unlabeled set each on its own mean (false for "
                          "a query set of very few images: one centered image is the zero vector)")
    unbalanced: bool = option(False, help="the query classes are not balanced: no class marginal (per-feature "
                              "softmax instead of Sinkhorn); the default assumes U/N unlabeled features per class")


def power_transform(x: torch.Tensor, beta: float) -> torch.Tensor:
    return torch.sign(x) * (x.abs() + 1e-6) ** beta


def preprocess(support_z, unlabeled_z, beta, center=True):
    s, u = l2n(power_transform(support_z, beta)), l2n(power_transform(unlabeled_z, beta))
    if not center:
        return s, u
    return l2n(s - s.mean(1, keepdim=True)), l2n(u - u.mean(1, keepdim=True))


def sinkhorn(kernel: torch.Tensor, r: torch.Tensor, c: torch.Tensor, iters: int = 1000, tol: float = 1e-6
             ) -> torch.Tensor:
    """Scale a positive kernel [T, M, N] so that its rows sum to r [T, M] and its columns to c [T, N] (Sinkhorn-
    Knopp; stops when every row sum changes by less than `tol`). The columns hold exactly after every iteration."""
    p = kernel / kernel.sum((1, 2), keepdim=True)
    u = torch.zeros_like(r)
    for _ in range(iters):
        rows = p.sum(2)
        if (u - rows).abs().max() <= tol:
            break
        u = rows
        p = p * (r / rows).unsqueeze(2)
        p = p * (c / p.sum(1)).unsqueeze(1)
    return p


def assign(u, mus, lam, unbalanced, iters, tol):
    logits = -lam * sq_distances(u, mus)
    if unbalanced:
        return torch.softmax(logits, -1)
    t, m, n = logits.shape
    # a per-row scale cancels in Sinkhorn; the floor keeps a large lam from emptying a class column (0 / 0)
    kernel = torch.exp(logits - logits.amax(2, keepdim=True)).clamp_min(1e-30)
    r = torch.ones(t, m, dtype=u.dtype, device=u.device)
    c = torch.full((t, n), m / n, dtype=u.dtype, device=u.device)
    return sinkhorn(kernel, r, c, iters, tol)


@register_transductive("ptmap", PTMAPConfig, assumes_balanced=True,
                       unbalanced_options={"unbalanced": True, "center": False},
                       description="PT-MAP (Hu et al. 2021): power transform + Sinkhorn optimal-transport MAP "
                       "estimation of the class centers; assumes balanced query classes (unbalanced=true otherwise)")
def run(support_z, support_y, query_z, ways, unlabeled_z, cfg):
    s, u = preprocess(support_z, pool(query_z, unlabeled_z), cfg.beta, cfg.center)
    ys = one_hot(support_y, ways, s.dtype)
    x = torch.cat([s, u], 1)
    mus = prototypes(s, support_y, ways)
    for _ in range(cfg.n_iter):
        p = torch.cat([ys, assign(u, mus, cfg.lam, cfg.unbalanced, cfg.sinkhorn_iters, cfg.tol)], 1)
        mus = mus + cfg.alpha * (p.transpose(1, 2) @ x / p.sum(1).unsqueeze(-1) - mus)
    p = assign(u, mus, cfg.lam, cfg.unbalanced, cfg.sinkhorn_iters, cfg.tol)[:, : query_z.shape[1]]
    return torch.log((p / p.sum(-1, keepdim=True)).clamp_min(1e-30))
