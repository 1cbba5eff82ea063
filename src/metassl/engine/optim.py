"""Optimizers and learning-rate schedules by config."""

from __future__ import annotations

import math
from typing import Any

import torch


def group_params(learner, params: dict[str, torch.Tensor]) -> list[tuple[Any, list[str]]]:
    """The learner's parameter groups (`Learner.param_groups`) with the names of their parameters, in the order of
    `params`; [] for a learner with one objective. Every parameter must be in exactly one group."""
    groups = tuple(learner.param_groups()) if hasattr(learner, "param_groups") else ()
    if not groups:
        return []
    out = [(g, [k for k in params if g.owns(k)]) for g in groups]
    owners = {k: [g.name for g, names in out if k in names] for k in params}
    bad = {k: v for k, v in owners.items() if len(v) != 1}
    if bad:
        raise ValueError(f"learner parameter groups {[g.name for g in groups]}: each parameter must be in exactly "
                         f"one group; {dict(list(bad.items())[:4])}")
    return out


def optimizer_params(learner, params: dict[str, torch.Tensor]) -> list:
    """What `make_optimizer` takes for this learner: its parameter tensors (one objective), or one torch param
    group per `ParamGroup` (its tensors, `lr_scale` and optimizer `options`)."""
    groups = group_params(learner, params)
    if not groups:
        return list(params.values())
    return [{"params": [params[k] for k in names], "group": g.name, "lr_scale": float(g.lr_scale),
             **dict(g.options)} for g, names in groups]


def make_optimizer(params, cfg) -> torch.optim.Optimizer:
    """The optimizer of `optim` over `params`: tensors, or torch param groups (dicts) whose keys override the
    section's hyperparameters (`lr_scale` multiplies the learning rate, see `set_lr`)."""
    params = list(params)
    params = [({**p, "lr": cfg.lr * p.get("lr_scale", 1.0)} if isinstance(p, dict) else p) for p in params]
    if cfg.name == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.name == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.name == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                               weight_decay=cfg.weight_decay)
    if cfg.name == "lars":
        return LARS(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=cfg.nesterov,
                    trust_coefficient=getattr(cfg, "lars_eta", 0.001))
    raise ValueError(f"optim.name {cfg.name!r}: use adam, adamw, sgd or lars")


class LARS(torch.optim.Optimizer):
    """LARS (You, Gitman & Ginsburg 2017), as used by SimCLR, BYOL, Barlow Twins and VICReg: SGD with momentum in
    which the update of each weight tensor is rescaled by the trust ratio eta * ||w|| / ||g + wd * w|| (1 when either
    norm is 0). Biases and normalization parameters (tensors with fewer than 2 dimensions) are excluded from both
    the weight decay and the adaptation, as is standard (`exclude_1d`). Per step and tensor:
        g <- g + wd * w;  g <- trust * g;  buf <- momentum * buf + g;  w <- w - lr * buf  (nesterov: g + momentum * buf)
    `trust_coefficient` (eta, `optim.lars_eta`) is 0.001 by default, as in the Barlow Twins / VICReg code and
    lightly's LARS (solo-learn's CIFAR settings use 0.02).
    """

    def __init__(self, params, lr: float, momentum: float = 0.9, weight_decay: float = 0.0,
                 trust_coefficient: float = 0.001, nesterov: bool = False, exclude_1d: bool = True):
        if lr < 0 or momentum < 0 or weight_decay < 0 or trust_coefficient <= 0:
            raise ValueError("LARS: lr, momentum and weight_decay must be >= 0 and trust_coefficient > 0")
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay,
                                      trust_coefficient=trust_coefficient, nesterov=nesterov, exclude_1d=exclude_1d))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, mom, wd, eta = group["lr"], group["momentum"], group["weight_decay"], group["trust_coefficient"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                if not (group["exclude_1d"] and p.ndim < 2):
                    if wd:
                        g = g.add(p, alpha=wd)
                    w_norm = torch.linalg.vector_norm(p)
                    g_norm = torch.linalg.vector_norm(g)
                    trust = torch.where((w_norm > 0) & (g_norm > 0), eta * w_norm / g_norm.clamp_min(1e-30),
                                        torch.ones_like(w_norm))
                    g = g * trust
                state = self.state[p]
                buf = state.get("momentum_buffer")
                if buf is None:
                    buf = state["momentum_buffer"] = g.detach().clone()
                else:
                    buf.mul_(mom).add_(g)
                p.add_(g.add(buf, alpha=mom) if group["nesterov"] else buf, alpha=-lr)
        return loss


def lr_factor(step: int, cfg, total_steps: int) -> float:
    """Multiplier of the base learning rate at `step`: linear warm-up, then constant, step decay, cosine or
    piecewise constant."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.schedule == "step":
        return cfg.gamma ** (step // cfg.step_every)
    if cfg.schedule == "cosine":
        span = max(total_steps - cfg.warmup_steps, 1)
        t = min(max(step - cfg.warmup_steps, 0) / span, 1.0)
        return 0.5 * (1.0 + math.cos(math.pi * t))
    if cfg.schedule == "piecewise":  # the factor of the last milestone reached
        return next((f for m, f in zip(reversed(cfg.milestones), reversed(cfg.factors)) if step >= m), 1.0)
    return 1.0


def set_lr(optimizer: torch.optim.Optimizer, base_lr: float, factor: float) -> None:
    for g in optimizer.param_groups:
        g["lr"] = base_lr * factor * g.get("lr_scale", 1.0)
