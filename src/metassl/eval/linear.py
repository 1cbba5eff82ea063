"""Linear probe on frozen encoder features, for ANY checkpoint (self-supervised or meta-learned).

Protocol (documented beside every number it produces):
- features: the encoder's output (before any projection head), eval mode, no augmentation, extracted ONCE for the
  training split (all images, or `max_train` with a fixed seed) and the test split;
- standardized with the training features' per-dimension mean and standard deviation;
- multinomial logistic regression (a linear layer + softmax cross-entropy) with an L2 penalty
  weight_decay / 2 * ||W||^2 (default 1e-4; the bias is not penalized), trained full-batch with L-BFGS (strong-Wolfe
  line search, at most `max_iter` = 500 iterations), deterministic; no hyperparameter is tuned on the test split;
- metric: top-1 accuracy on the test split (and on the training split, to show under/over-fitting).
This differs from the papers' linear evaluation (SGD for 100 epochs on augmented crops through the frozen network),
which is ~100x more expensive; numbers from the two are close but not identical.
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch
import torch.nn.functional as F

from ..data.episodic import ClassSplit, Preprocess
from .batching import AUTO
from .features import check_label_splits, frozen_features, frozen_protocol
from .result import EvalResult

__all__ = ["fit_linear_probe", "predict_linear", "linear_evaluate"]


def fit_linear_probe(features: torch.Tensor, labels: torch.Tensor, num_classes: int, weight_decay: float = 1e-4,
                     max_iter: int = 500) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Train the probe; returns (W [D, C], b [C], mean [D], std [D]) so that logits = ((x - mean) / std) @ W + b."""
    x = features.float()
    y = labels.to(x.device)
    mean = x.mean(0)
    std = x.std(0, unbiased=False).clamp_min(1e-6)
    x = (x - mean) / std
    w = torch.zeros(x.shape[1], num_classes, device=x.device, requires_grad=True)
    b = torch.zeros(num_classes, device=x.device, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, history_size=20, line_search_fn="strong_wolfe",
                            tolerance_grad=1e-7, tolerance_change=1e-10)

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(x @ w + b, y) + 0.5 * weight_decay * w.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return w.detach(), b.detach(), mean, std


def predict_linear(features: torch.Tensor, probe: tuple[torch.Tensor, ...]) -> torch.Tensor:
    w, b, mean, std = probe
    return (((features.float() - mean) / std) @ w + b).argmax(1)


def linear_evaluate(model: Any, train: ClassSplit, test: ClassSplit, dataset: str, weight_decay: float = 1e-4,
                    max_iter: int = 500, max_train: int | None = None, max_test: int | None = None, seed: int = 0,
                    preprocess: Preprocess | None = None, batch_size: int = AUTO) -> EvalResult:
    """Linear-probe top-1 accuracy of `model`'s frozen features: probe trained on `train`, tested on `test` (see the
    module doc); the training accuracy is `metrics["train_accuracy"]`."""
    check_label_splits(train, test, "linear-probe")
    t0 = time.perf_counter()
    f_tr, tr_y, f_te, te_y = frozen_features(model, train, test, max_train, max_test, seed, preprocess, batch_size)
    probe = fit_linear_probe(f_tr, tr_y, train.num_classes, weight_decay, max_iter)
    acc = 100.0 * float((predict_linear(f_te, probe) == te_y.to(f_te.device)).float().mean())
    tr_acc = 100.0 * float((predict_linear(f_tr, probe) == tr_y.to(f_tr.device)).float().mean())
    protocol = {"name": "linear", "classifier": "multinomial logistic regression, full-batch L-BFGS",
                "weight_decay": weight_decay, "max_iter": max_iter, "standardize": True, "dataset": dataset,
                **frozen_protocol(train, test, f_tr.shape[0], f_te.shape[0], seed)}
    return EvalResult(protocol, acc, metrics={"train_accuracy": {"mean": tr_acc, "ci95": math.nan}},
                      seconds=time.perf_counter() - t0)
