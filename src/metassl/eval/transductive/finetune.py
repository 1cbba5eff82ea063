"""Transductive fine-tuning (Dhillon, Chaudhari, Ravichandran, Soatto, "A Baseline for Few-Shot Image
Classification", ICLR 2020).

A cosine classifier on the encoder features, its weights initialized at the normalized support class means
("support-based initialization"), and a copy of the encoder's last block are fine-tuned per episode with Adam on

    CE(support) + entropy_weight * mean entropy of the query predictions

(the optional unlabeled pool joins the entropy term). The model's own tensors are never changed: each episode
trains its own copies. Deviations from the paper: only the last block is fine-tuned (the paper fine-tunes the whole
network; `block: all` does that), and the logits are `temperature` * cosine. Defaults: 25 steps, Adam lr 5e-5,
entropy weight 1 (the paper's values, unchecked). The last block is the encoder's last top-level numbered block
(`blocks.3` of ResNet-12, `stages.3` of ResNet-18), or for a flat layer list the trailing layers up to and including
the last one with a weight matrix or kernel (the last conv + BatchNorm of Conv-4).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ...config import option
from ...learners.base import ENCODER
from . import entropy, l2n, one_hot, prototypes, register_transductive


@dataclass
class FinetuneConfig:
    steps: int = option(25, range=(0, 10000), help="Adam steps per episode")
    lr: float = option(5e-5, range=(0.0, None), help="Adam learning rate")
    entropy_weight: float = option(1.0, range=(0.0, None), help="weight of the query entropy (0: inductive "
                                   "fine-tuning on the support only)")
    temperature: float = option(10.0, range=(1e-6, None), help="logits are temperature * cosine similarity")
    block: str = option("last", choices=("last", "all", "none"), help="encoder tensors fine-tuned with the "
                        "classifier: the last block, all, or none (the classifier only)")


def last_block(ndims: dict[str, int]) -> list[str]:
    """The names of the last block's tensors among the encoder's parameters `ndims` (name without `encoder.` ->
    number of dimensions, in module order)."""
    names = list(ndims)
    if not names:
        return []
    parts = names[-1].split(".")
    digit = next((i for i, p in enumerate(parts) if p.isdigit()), None)
    if digit is not None and digit < len(parts) - 2:  # nested: blocks.3.body.7.weight -> all of blocks.3
        prefix = ".".join(parts[: digit + 1]) + "."
        return [n for n in names if n.startswith(prefix)]
    out: list[str] = []
    for n in reversed(names):  # flat layer list: trailing layers up to the last weight matrix / kernel
        if out and n.rsplit(".", 1)[0] != out[-1].rsplit(".", 1)[0] and any(ndims[m] >= 2 for m in out):
            break
        out.append(n)
    return [n for n in names if n in out]


def tuned_names(params: dict, block: str) -> list[str]:
    ndims = {k[len(ENCODER):]: v.dim() for k, v in params.items() if k.startswith(ENCODER)}
    if block == "none":
        return []
    return list(ndims) if block == "all" else last_block(ndims)


def finetune_episode(learner, params, buffers, sx, sy, qx, ux, ways, cfg):
    """Log-probabilities [Q, N] of one episode (images [S|Q, C, H, W]) after fine-tuning copies."""
    fixed = {k: v.detach() for k, v in params.items()}
    buffers = {k: v.clone() for k, v in buffers.items()}  # an encoder in train mode would update BN statistics
    names = tuned_names(params, cfg.block)
    fast = {ENCODER + n: fixed[ENCODER + n].clone().requires_grad_(True) for n in names}
    unl = qx if ux is None else torch.cat([qx, ux], 0)
    with torch.no_grad():
        zs = learner.embed(fixed, buffers, sx[None], per_task=True)
        w0 = l2n(prototypes(l2n(zs), sy[None], ways))[0]
    w = w0.clone().requires_grad_(True)
    ys = one_hot(sy, ways)

    def logits(p, x):
        z = learner.embed({**fixed, **p}, buffers, x[None], per_task=True)[0]
        return cfg.temperature * l2n(z) @ l2n(w).T

    with torch.enable_grad():
        opt = torch.optim.Adam([w, *fast.values()], lr=cfg.lr)
        for _ in range(cfg.steps):
            opt.zero_grad()
            ce = -(ys.to(w.dtype) * torch.log_softmax(logits(fast, sx), -1)).sum(-1).mean()
            loss = ce
            if cfg.entropy_weight:
                loss = loss + cfg.entropy_weight * entropy(torch.softmax(logits(fast, unl), -1)).mean()
            loss.backward()
            opt.step()
    with torch.no_grad():
        return torch.log_softmax(logits({k: v.detach() for k, v in fast.items()}, qx), -1)


@register_transductive("finetune", FinetuneConfig, needs_encoder=True,
                       description="transductive fine-tuning (Dhillon et al. 2020): support cross-entropy plus "
                       "query entropy, a few Adam steps on a copy of the encoder's last block and a cosine head")
def run(learner, params, buffers, support_x, support_y, query_x, ways, unlabeled_x, cfg):
    out = [finetune_episode(learner, params, buffers, support_x[t], support_y[t], query_x[t],
                            None if unlabeled_x is None else unlabeled_x[t], ways, cfg)
           for t in range(support_x.shape[0])]
    return torch.stack(out)
