"""BD-CSPN: prototype rectification (Liu, Song, Qin, "Prototype Rectification for Few-Shot Learning", ECCV 2020).

1. Cross-class bias: every unlabeled feature (queries, then the optional pool) is shifted by
   xi = mean(support) - mean(unlabeled).
2. Intra-class bias: the basic prototypes P_n (support means) pseudo-label the shifted unlabeled features with the
   cosine classifier softmax(eps * cos); the `pseudo_per_class` most confident ones per predicted class (0: all) join
   class n's support, and the rectified prototype is P'_n = sum_i w_in X'_i over those samples with
   w_in = softmax_i(eps * cos(X'_i, P_n)).
3. Queries (shifted) are classified by softmax(eps * cos(q, P'_n)).
The paper selects the top-Z confident queries per class (Z a validation choice; default here Z=0, all, as several
re-implementations do); eps = 10 (the paper's value, unchecked).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ...config import option
from . import l2n, one_hot, pool, prototypes, register_transductive


@dataclass
class BDCSPNConfig:
    eps: float = option(10.0, range=(1e-6, None), help="cosine scale epsilon of the weights and the classifier")
    pseudo_per_class: int = option(0, range=(0, None), help="pseudo-labelled unlabeled features per predicted "
                                   "class used to rectify (the most confident; 0: all)")
    shift: bool = option(True, help="cross-class bias: shift unlabeled features by mean(support) - mean(unlabeled)"
                         " (false for a query set of one image: the shift puts it on the support mean)")


def cos(x, p):
    return l2n(x) @ l2n(p).transpose(1, 2)


def rectify(support_z, support_y, unlabeled_z, ways, eps=10.0, pseudo_per_class=0):
    """Rectified prototypes [T, N, D] from the support and the (already shifted) unlabeled features."""
    p = prototypes(support_z, support_y, ways)
    probs = torch.softmax(eps * cos(unlabeled_z, p), -1)
    conf, pred = probs.max(-1)
    member = one_hot(pred, ways, torch.bool)  # [T, U, N]
    if pseudo_per_class and pseudo_per_class < unlabeled_z.shape[1]:
        score = torch.where(member, conf.unsqueeze(-1), torch.full_like(probs, -1.0))
        top = score.topk(pseudo_per_class, dim=1).indices  # [T, Z, N]
        keep = torch.zeros_like(member).scatter_(1, top, True)
        member = member & keep
    x = torch.cat([support_z, unlabeled_z], 1)
    m = torch.cat([one_hot(support_y, ways, torch.bool), member], 1)  # [T, S+U, N]
    w = torch.where(m, eps * cos(x, p), torch.full_like(m, float("-inf"), dtype=x.dtype))
    w = torch.softmax(w, 1)  # over the samples of each class
    return w.transpose(1, 2) @ x


def shift_unlabeled(support_z, unlabeled_z):
    return unlabeled_z + (support_z.mean(1, keepdim=True) - unlabeled_z.mean(1, keepdim=True))


@register_transductive("bdcspn", BDCSPNConfig, description="BD-CSPN prototype rectification with the query set "
                       "(Liu et al. 2020): cross-class shift, pseudo-labelled intra-class rectification, cosine")
def run(support_z, support_y, query_z, ways, unlabeled_z, cfg):
    u = pool(query_z, unlabeled_z)
    if cfg.shift:
        u = shift_unlabeled(support_z, u)
    p = rectify(support_z, support_y, u, ways, cfg.eps, cfg.pseudo_per_class)
    q = u[:, : query_z.shape[1]]
    return torch.log_softmax(cfg.eps * cos(q, p), -1)
