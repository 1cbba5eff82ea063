"""TIM: transductive information maximization (Boudiaf, Ziko, Rony, Dolz, Piantanida, Ben Ayed, "Information
Maximization for Few-Shot Learning", NeurIPS 2020), with both of its solvers, TIM-GD (`solver: gd`, the default)
and TIM-ADM (`solver: adm`).

Features are L2-normalized; a linear classifier W [T, N, D] (initialized at the support class means) gives
logits -temperature/2 * ||z - w_c||^2 and probabilities p = softmax. Adam minimizes, per episode,

    ce_weight * CE(support) - (marginal_weight * H(Y_q) - conditional_weight * H(Y_q | X_q))

with H(Y_q) the entropy of the mean query prediction (this term assumes balanced query classes: set
marginal_weight=0 for a query set with unknown or skewed class proportions) and H(Y_q|X_q) the mean per-query
entropy. Defaults are the authors' TIM-GD settings (temperature 15, weights [0.1, 1.0, 0.1], Adam lr 1e-4, 1000
iterations; checked against mboudiaf/TIM, src/tim.py config and scripts/evaluate/tim_gd/mini.sh). The optional
unlabeled pool joins the query terms.

TIM-ADM alternates closed-form steps on the penalized objective lambda CE(support) + 1/|Q| sum_i [KL(q_i || p_i) -
alpha sum_k q_ik log p_ik] - gamma H(mean_i q_i), in which auxiliary query assignments q replace p in the entropies:

    q_ik  ~ p_ik^(1+alpha) / (sum_j p_jk^(1+alpha))^(gamma / (1+gamma))          (normalized over k)
    w_k  <- [lambda/(1+alpha) sum_S (y_ik z_i + p_ik (w_k - z_i)) + |S|/|Q| sum_Q (q_ik z_i + p_ik (w_k - z_i))]
            / [lambda/(1+alpha) sum_S y_ik + |S|/|Q| sum_Q q_ik]

(gamma = marginal_weight, alpha = conditional_weight, lambda = ce_weight; with gamma = 1 the exponent is the paper's
1/2), `adm_iters` times (the paper: 150), from the support means.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ...config import option
from . import entropy, l2n, one_hot, pool, prototypes, register_transductive, sq_distances


@dataclass
class TIMConfig:
    iters: int = option(1000, range=(0, 100000), help="Adam iterations (TIM-GD: 1000)")
    lr: float = option(1e-4, range=(0.0, None), help="Adam learning rate")
    temperature: float = option(15.0, range=(1e-6, None), help="logits are -temperature/2 * squared distance")
    ce_weight: float = option(0.1, range=(0.0, None), help="weight of the support cross-entropy (lambda)")
    marginal_weight: float = option(1.0, range=(0.0, None), help="weight of the query marginal entropy H(Y); it "
                                    "assumes balanced query classes: 0 for unbalanced query sets")
    conditional_weight: float = option(0.1, range=(0.0, None), help="weight of the query conditional entropy "
                                       "H(Y|X) (alpha)")
    solver: str = option("gd", choices=("gd", "adm"), help="TIM-GD (Adam on the objective) or TIM-ADM (alternating "
                         "closed-form updates of the weights and auxiliary query assignments)")
    adm_iters: int = option(150, range=(0, 100000), help="TIM-ADM iterations (the paper: 150)")


def tim_logits(w, z, temperature):
    return -0.5 * temperature * sq_distances(z, w)


def tim_objective(w, support_z, support_y, query_z, ways, cfg) -> torch.Tensor:
    """Per-episode TIM objective [T] (to minimize) of classifier weights w [T, N, D] on normalized features."""
    ce = -(one_hot(support_y, ways, w.dtype) * torch.log_softmax(tim_logits(w, support_z, cfg.temperature), -1)
           ).sum(-1).mean(1)
    p = torch.softmax(tim_logits(w, query_z, cfg.temperature), -1)
    marginal = entropy(p.mean(1))
    conditional = entropy(p).mean(1)
    return cfg.ce_weight * ce - (cfg.marginal_weight * marginal - cfg.conditional_weight * conditional)


def fit(support_z, support_y, query_z, ways, cfg):
    """TIM-GD weights [T, N, D] (features already normalized)."""
    w = prototypes(support_z, support_y, ways).detach().clone().requires_grad_(True)
    zs, zq = support_z.detach(), query_z.detach()
    with torch.enable_grad():
        opt = torch.optim.Adam([w], lr=cfg.lr)
        for _ in range(cfg.iters):
            opt.zero_grad()
            tim_objective(w, zs, support_y, zq, ways, cfg).sum().backward()  # episodes are independent
            opt.step()
    return w.detach()


def adm_assignments(p: torch.Tensor, cfg) -> torch.Tensor:
    """TIM-ADM's auxiliary query assignments q [T, Q, N] from the query probabilities p [T, Q, N]."""
    a, g = cfg.conditional_weight, cfg.marginal_weight
    pa = p.clamp_min(1e-30) ** (1.0 + a)
    q = pa / pa.sum(1, keepdim=True) ** (g / (1.0 + g))
    return q / q.sum(-1, keepdim=True)


def adm_weights(w, support_z, support_y, query_z, q, ways, cfg) -> torch.Tensor:
    """TIM-ADM's weight update (see the module docstring) for assignments q [T, Q, N]."""
    ys = one_hot(support_y, ways, w.dtype)
    ps = torch.softmax(tim_logits(w, support_z, cfg.temperature), -1)
    pq = torch.softmax(tim_logits(w, query_z, cfg.temperature), -1)
    cs = cfg.ce_weight / (1.0 + cfg.conditional_weight)
    cq = support_z.shape[1] / query_z.shape[1]

    def part(targets, probs, z):  # sum_i (t_ik z_i + p_ik (w_k - z_i)) -> [T, N, D]
        return targets.transpose(1, 2) @ z + w * probs.sum(1).unsqueeze(-1) - probs.transpose(1, 2) @ z

    num = cs * part(ys, ps, support_z) + cq * part(q, pq, query_z)
    den = cs * ys.sum(1) + cq * q.sum(1)
    return num / den.unsqueeze(-1)


def fit_adm(support_z, support_y, query_z, ways, cfg):
    """TIM-ADM weights [T, N, D] (features already normalized)."""
    w = prototypes(support_z, support_y, ways)
    for _ in range(cfg.adm_iters):
        q = adm_assignments(torch.softmax(tim_logits(w, query_z, cfg.temperature), -1), cfg)
        w = adm_weights(w, support_z, support_y, query_z, q, ways, cfg)
    return w


@register_transductive("tim", TIMConfig, assumes_balanced=True,
                       unbalanced_options={"marginal_weight": 0.0},
                       description="TIM (Boudiaf et al. 2020), GD or ADM solver: mutual-information maximization "
                       "on the queries; its marginal-entropy term assumes balanced query classes (marginal_weight=0 for unbalanced)")
def run(support_z, support_y, query_z, ways, unlabeled_z, cfg):
    zs, zq = l2n(support_z), l2n(query_z)
    w = (fit_adm if cfg.solver == "adm" else fit)(zs, support_y, l2n(pool(query_z, unlabeled_z)), ways, cfg)
    return torch.log_softmax(tim_logits(w, zq, cfg.temperature), -1)
