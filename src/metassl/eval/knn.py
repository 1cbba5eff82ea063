"""Weighted kNN classification on frozen encoder features: the protocol of Wu et al. 2018 (InstDisc) used by
lightly's and most self-supervised CIFAR-10 benchmarks, for ANY checkpoint (self-supervised or meta-learned).

Protocol:
- features: the encoder's output (before any projection head), model in eval mode (BatchNorm running statistics),
  test-time preprocessing only (no augmentation), computed once for the memory bank and the queries;
- memory bank: the training split (all images by default; `max_train` subsamples it with a fixed seed), with its
  labels; queries: the test split (`max_test` likewise);
- similarity: cosine (features L2-normalized); the k = 200 most similar bank images vote for their class with
  weight exp(similarity / T), T = 0.1; the prediction is the class with the largest summed weight;
- metric: top-1 accuracy over the queries.
Both splits must have the same classes (kNN on a few-shot split, whose test classes are unseen, is undefined).

`KNNMonitor` is the trainer's online version (`train.knn_every`): by default at most 10,000 memory images and 2,000
queries, drawn once with a fixed seed, so every evaluation of a run uses the same subsets.
"""

from __future__ import annotations

import time
from typing import Any

import torch
import torch.nn.functional as F

from ..data.episodic import ClassSplit, Preprocess
from .batching import AUTO
from .features import check_label_splits, embed_images, frozen_features, frozen_protocol, labeled_subset
from .result import EvalResult

__all__ = ["knn_predict", "knn_evaluate", "KNNMonitor"]


@torch.no_grad()
def knn_predict(bank: torch.Tensor, bank_labels: torch.Tensor, queries: torch.Tensor, num_classes: int,
                k: int = 200, temperature: float = 0.1, chunk: int = 1024) -> torch.Tensor:
    """Predicted class [Q] of each query by similarity-weighted voting of its k nearest bank features (cosine)."""
    if bank.shape[0] == 0:
        raise ValueError("kNN: the memory bank is empty")
    bank = F.normalize(bank.float(), dim=1)
    bank_labels = bank_labels.to(bank.device)
    k = min(k, bank.shape[0])
    preds = []
    for s in range(0, queries.shape[0], chunk):
        q = F.normalize(queries[s:s + chunk].float().to(bank.device), dim=1)
        sim, idx = (q @ bank.t()).topk(k, dim=1)
        votes = torch.zeros(q.shape[0], num_classes, device=bank.device)
        votes.scatter_add_(1, bank_labels[idx], (sim / temperature).exp())
        preds.append(votes.argmax(1))
    return torch.cat(preds) if preds else torch.zeros(0, dtype=torch.long)


def knn_evaluate(model: Any, train: ClassSplit, test: ClassSplit, dataset: str, k: int = 200,
                 temperature: float = 0.1, max_train: int | None = None, max_test: int | None = None, seed: int = 0,
                 preprocess: Preprocess | None = None, batch_size: int = AUTO) -> EvalResult:
    """kNN top-1 accuracy of `model`'s frozen features: memory bank `train`, queries `test` (see the module doc)."""
    check_label_splits(train, test)
    t0 = time.perf_counter()
    bank, tr_y, queries, te_y = frozen_features(model, train, test, max_train, max_test, seed, preprocess,
                                                batch_size)
    pred = knn_predict(bank, tr_y, queries, train.num_classes, k, temperature)
    correct = (pred == te_y.to(pred.device)).float()
    per_class = [100.0 * float(correct[te_y.to(pred.device) == c].mean()) if bool((te_y == c).any()) else float("nan")
                 for c in range(train.num_classes)]
    protocol = {"name": "knn", "k": k, "k_used": min(k, bank.shape[0]), "temperature": temperature,
                "similarity": "cosine", "weights": "exp(similarity / temperature)", "dataset": dataset,
                **frozen_protocol(train, test, bank.shape[0], queries.shape[0], seed)}
    return EvalResult(protocol, 100.0 * float(correct.mean()), seconds=time.perf_counter() - t0,
                      per_class_accuracy=per_class)


class KNNMonitor:
    """The online kNN monitor of a training run: the same fixed subsets (at most `max_train` memory images and
    `max_test` queries, seed `seed`) at every call; returns the row logged as kind "knn"."""

    def __init__(self, model: Any, train: ClassSplit, test: ClassSplit, preprocess: Preprocess, dataset: str,
                 max_train: int = 10000, max_test: int = 2000, seed: int = 0, k: int = 200,
                 temperature: float = 0.1):
        check_label_splits(train, test)
        self.model, self.preprocess, self.dataset = model, preprocess, dataset
        self.k, self.temperature, self.seed = k, temperature, seed
        self.train_x, self.train_y = labeled_subset(train, max_train, seed)
        self.test_x, self.test_y = labeled_subset(test, max_test, seed + 1)
        self.num_classes = train.num_classes

    def __call__(self) -> dict[str, Any]:
        t0 = time.perf_counter()
        bank = embed_images(self.model, self.train_x, self.preprocess)
        queries = embed_images(self.model, self.test_x, self.preprocess)
        pred = knn_predict(bank, self.train_y, queries, self.num_classes, self.k, self.temperature)
        top1 = float((pred == self.test_y.to(pred.device)).float().mean())
        return {"knn_top1": top1, "k": self.k, "temperature": self.temperature,
                "train_size": int(self.train_x.shape[0]), "test_size": int(self.test_x.shape[0]),
                "seconds": round(time.perf_counter() - t0, 3)}
