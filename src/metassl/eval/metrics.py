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

    Precision, recall and F1 are macro averages over the classes that occur in the episode's labels or predictions,
    as scikit-learn's average="macro" with zero_division=0 (a class never predicted has precision 0, one never true
    has recall 0). ROC-AUC is, per class with positives and negatives among the queries, the probability that a
    random positive outranks a random negative (exact ties count one half), averaged over those classes; queries
    are ranked by the exact order of their softmax probabilities (see `_ovr_log_odds`).
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
    # scikit-learn's macro average runs over unique_labels(y_true, y_pred): a class only predicted counts too
    present = ((actual > 0) | (predicted > 0)).float()
    k = present.sum(-1).clamp_min(1)
    aucs = []
    for c in range(n):  # one class at a time bounds memory to [E, Q, Q]
        s = _ovr_log_odds(logits, c)
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


def _ovr_log_odds(logits: torch.Tensor, c: int) -> torch.Tensor:
    """Score [E, Q] of class c with the order of its softmax probability p_c: the log-odds log(p_c / (1 - p_c)) =
    -logsumexp_{j != c}(l_j - l_c), in float64.

    Neither float32 softmax (p_c rounds to 1.0 once the margin passes ~17) nor float64 log-softmax (log p_c rounds
    to 0.0 past ~37) keeps that order for confident queries, and the ties they create move the AUC; the log-odds
    does not saturate, so two queries tie only if their log-odds agree to float64 precision. The others'
    differences are summed in sorted order, so equal probabilities (equal rows, permuted other classes) give
    bit-identical scores and still tie."""
    d = logits.double() - logits[..., c:c + 1].double()
    d[..., c] = float("-inf")
    return -torch.logsumexp(d.sort(-1, descending=True).values, -1)
