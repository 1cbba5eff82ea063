"""Soft k-means refinement of prototypes (Ren, Triantafillou, Ravi, Snell, Swersky, Tenenbaum, Larochelle, Zemel,
"Meta-Learning for Semi-Supervised Few-Shot Classification", ICLR 2018).

Prototypes start as the support class means p_c; each refinement step gives every unlabeled feature u_j (the
queries and the optional pool) the soft assignment w_jc = softmax_c(-||u_j - p_c||^2 / r_c^2) and sets
p_c = (sum_s 1[y_s = c] z_s + sum_j w_jc u_j) / (n_c + sum_j w_jc). The queries are then classified by minus squared
distance to the refined prototypes. `distractor`: an extra cluster fixed at the origin with length scale
`distractor_radius` takes the unlabeled features of classes outside the support (the paper's "soft k-means with a
distractor cluster"; in the paper its radius is learned during meta-training, here it is an option). The paper
applies one refinement step at test time (its default here).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ...config import option
from . import pool, prototypes, one_hot, register_transductive, sq_distances


@dataclass
class SoftKMeansConfig:
    steps: int = option(1, range=(0, 100), help="soft k-means refinement steps (the paper: 1)")
    distractor: bool = option(False, help="add a distractor cluster at the origin for unlabeled images of other "
                              "classes")
    distractor_radius: float = option(1.0, range=(1e-6, None), help="length scale r of the distractor cluster "
                                      "(its logit is -||u||^2 / r^2)")


def refine(support_z, support_y, unlabeled_z, ways, steps=1, distractor=False, distractor_radius=1.0):
    """Refined prototypes [T, N, D] after `steps` soft k-means steps over `unlabeled_z` [T, U, D]."""
    oh = one_hot(support_y, ways, support_z.dtype)
    labeled_sum, counts = oh.transpose(1, 2) @ support_z, oh.sum(1)
    p = prototypes(support_z, support_y, ways)
    for _ in range(steps):
        logits = -sq_distances(unlabeled_z, p)
        if distractor:
            d0 = -(unlabeled_z ** 2).sum(-1, keepdim=True) / distractor_radius ** 2
            w = torch.softmax(torch.cat([logits, d0], -1), -1)[..., :ways]
        else:
            w = torch.softmax(logits, -1)
        p = (labeled_sum + w.transpose(1, 2) @ unlabeled_z) / (counts + w.sum(1)).unsqueeze(-1)
    return p


@register_transductive("softkmeans", SoftKMeansConfig, description="soft k-means refinement of the class means "
                       "with the queries and unlabeled images (Ren et al. 2018), optional distractor cluster")
def run(support_z, support_y, query_z, ways, unlabeled_z, cfg):
    p = refine(support_z, support_y, pool(query_z, unlabeled_z), ways, cfg.steps, cfg.distractor,
               cfg.distractor_radius)
    return torch.log_softmax(-sq_distances(query_z, p), -1)
