"""Optimizers and learning-rate schedules by config."""

from __future__ import annotations

import math

import torch


def make_optimizer(params, cfg) -> torch.optim.Optimizer:
    params = list(params)
    if cfg.name == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.name == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.name == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                               weight_decay=cfg.weight_decay)
    raise ValueError(f"optim.name {cfg.name!r}: use adam, adamw or sgd")


def lr_factor(step: int, cfg, total_steps: int) -> float:
    """Multiplier of the base learning rate at `step`: linear warm-up, then constant, step decay or cosine."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.schedule == "step":
        return cfg.gamma ** (step // cfg.step_every)
    if cfg.schedule == "cosine":
        span = max(total_steps - cfg.warmup_steps, 1)
        t = min(max(step - cfg.warmup_steps, 0) / span, 1.0)
        return 0.5 * (1.0 + math.cos(math.pi * t))
    return 1.0


def set_lr(optimizer: torch.optim.Optimizer, base_lr: float, factor: float) -> None:
    for g in optimizer.param_groups:
        g["lr"] = base_lr * factor
