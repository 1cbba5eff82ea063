"""Episode metrics, vectorized over episodes: accuracy, macro precision/recall/F1, one-vs-rest ROC-AUC, and the
95% confidence interval of a mean over episodes."""

from __future__ import annotations

import math

import torch


def confidence_interval(values: torch.Tensor | list[float], z: float = 1.96) -> tuple[float, float]:
    """Mean and half-width z * std / sqrt(n) of per-episode values (std with Bessel's correction, ddof=1)."""
    v = torch.as_tensor(values, dtype=torch.float64).flatten()
    if v.numel() == 0:
        raise ValueError("no values to average")
    mean = float(v.mean())
    if v.numel() == 1:
        return mean, float("nan")
    return mean, z * float(v.std(unbiased=True)) / math.sqrt(v.numel())


def episode_metrics(logits: torch.Tensor, labels: torch.Tensor, ways: int) -> dict[str, torch.Tensor]:
    """Per-episode metrics from logits [E, Q, N] and labels [E, Q]; each value is a tensor [E].

    Precision of a class that was never predicted counts as 0 (scikit-learn's zero_division=0); ROC-AUC is the
    probability that a random positive outranks a random negative (ties count one half), per class, averaged.
    """
    logits = logits.detach().float()
    e, q, n = logits.shape
    pred = logits.argmax(-1)
    acc = (pred == labels).float().mean(-1)
    # confusion[e, true, predicted]
    conf = torch.zeros(e, n, n, device=logits.device)
    conf.view(e, -1).scatter_add_(1, labels * n + pred, torch.ones_like(pred, dtype=conf.dtype))
    tp = torch.diagonal(conf, dim1=1, dim2=2)
    predicted, actual = conf.sum(1), conf.sum(2)
    precision = torch.where(predicted > 0, tp / predicted.clamp_min(1), torch.zeros_like(tp))
    recall = torch.where(actual > 0, tp / actual.clamp_min(1), torch.zeros_like(tp))
    denom = precision + recall
    f1 = torch.where(denom > 0, 2 * precision * recall / denom.clamp_min(1e-12), torch.zeros_like(tp))
    present = (actual > 0).float()
    k = present.sum(-1).clamp_min(1)
    probs = logits.softmax(-1)
    aucs = []
    for c in range(n):  # one class at a time bounds memory to [E, Q, Q]
        s = probs[..., c]
        pos = labels == c
        pair_pos = pos.unsqueeze(2) & ~pos.unsqueeze(1)  # [E, Q(pos), Q(neg)]
        gt = (s.unsqueeze(2) > s.unsqueeze(1)).float() + 0.5 * (s.unsqueeze(2) == s.unsqueeze(1)).float()
        npairs = pair_pos.sum((1, 2))
        aucs.append(torch.where(npairs > 0, (gt * pair_pos).sum((1, 2)) / npairs.clamp_min(1), torch.nan))
    auc = torch.stack(aucs, -1)
    return {
        "accuracy": acc,
        "precision": (precision * present).sum(-1) / k,
        "recall": (recall * present).sum(-1) / k,
        "f1": (f1 * present).sum(-1) / k,
        "roc_auc": torch.nanmean(auc, -1),
        "confusion": conf,
    }
