"""Soft k-means refinement of prototypes (Ren, Triantafillou, Ravi, Snell, Swersky, Tenenbaum, Larochelle, Zemel,
"Meta-Learning for Semi-Supervised Few-Shot Classification", ICLR 2018).

Prototypes start as the support class means p_c; each refinement step gives every unlabeled feature u_j (the
queries and the optional pool) the soft assignment w_jc = softmax_c(-||u_j - p_c||^2 / r_c^2) and sets
p_c = (sum_s 1[y_s = c] z_s + sum_j w_jc u_j) / (n_c + sum_j w_jc). The queries are then classified by minus squared
distance to the refined prototypes. `distractor`: an extra cluster fixed at the origin with length scale
`distractor_radius` takes the unlabeled features of classes outside the support (the paper's "soft k-means with a
distractor cluster", logit -||u||^2 / r^2 - log r; in the paper r is learned during meta-training, here it is an
option: `semi_protonet` learns it). The paper applies one refinement step at test time (its default here).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ...config import option
from ...learners.semi_protonet import refine_prototypes
from . import pool, register_transductive, sq_distances


@dataclass
class SoftKMeansConfig:
    steps: int = option(1, range=(0, 100), help="soft k-means refinement steps (the paper: 1)")
    distractor: bool = option(False, help="add a distractor cluster at the origin for unlabeled images of other "
                              "classes")
    distractor_radius: float = option(1.0, range=(1e-6, None), help="length scale r of the distractor cluster "
                                      "(its logit is -||u||^2 / r^2 - log r)")


def refine(support_z, support_y, unlabeled_z, ways, steps=1, distractor=False, distractor_radius=1.0):
    """Refined prototypes [T, N, D] after `steps` soft k-means steps over `unlabeled_z` [T, U, D] (the
    semi-supervised ProtoNet's refinement, `learners.semi_protonet.refine_prototypes`, with a fixed radius)."""
    log_r = math.log(distractor_radius) if distractor else None
    return refine_prototypes(support_z, support_y, unlabeled_z, ways, steps, log_r)


@register_transductive("softkmeans", SoftKMeansConfig, description="soft k-means refinement of the class means "
                       "with the queries and unlabeled images (Ren et al. 2018), optional distractor cluster")
def run(support_z, support_y, query_z, ways, unlabeled_z, cfg):
    p = refine(support_z, support_y, pool(query_z, unlabeled_z), ways, cfg.steps, cfg.distractor,
               cfg.distractor_radius)
    return torch.log_softmax(-sq_distances(query_z, p), -1)
