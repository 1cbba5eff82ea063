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
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from ..data.episodic import ClassSplit, Preprocess

__all__ = ["knn_predict", "knn_evaluate", "KNNMonitor", "KNNResult", "extract_features", "check_label_splits",
           "subsample"]


def check_label_splits(train: ClassSplit, test: ClassSplit, protocol: str = "kNN") -> None:
    """Both splits must have the same classes (in the same order), and at least two of them."""
    if train.num_classes < 2:
        raise ValueError(f"{protocol} classification needs at least 2 classes; {train.name or 'the training split'} "
                         f"has {train.num_classes} ({', '.join(train.class_names) or 'none'})")
    if list(train.class_names) != list(test.class_names):
        raise ValueError(
            f"{protocol} evaluation needs the same classes in the training split (memory bank) and the test split; "
            f"{train.name} has {train.num_classes} classes and {test.name} has {test.num_classes}, not the same "
            f"(few-shot splits have disjoint classes: use --protocol fewshot, or choose splits of the same classes "
            f"with --train-split/--split)")


def subsample(n: int, max_n: int | None, seed: int) -> torch.Tensor | None:
    """Sorted indices of a fixed random subset of size max_n (None: keep all n)."""
    if max_n is None or max_n >= n:
        return None
    g = torch.Generator().manual_seed(seed)
    return torch.randperm(n, generator=g)[:max_n].sort().values


@torch.no_grad()
def extract_features(model: Any, images: torch.Tensor, preprocess: Preprocess, batch_size: int = 512) -> torch.Tensor:
    """Encoder features [M, D] (float32) of uint8 images [M, C, H, W], in eval mode, `batch_size` at a time."""
    was = model.encoder.training
    model.train(False)
    try:
        out = [model.learner.embed(model.params, model.buffers, preprocess(images[s:s + batch_size])).float()
               for s in range(0, images.shape[0], batch_size)]
    finally:
        model.train(was)
    return torch.cat(out) if out else torch.zeros(0, 0)


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


@dataclass
class KNNResult:
    accuracy: float  # percent
    protocol: dict[str, Any]
    seconds: float
    per_class: list[float] = field(default_factory=list)  # accuracy (percent) per class

    def to_dict(self) -> dict[str, Any]:
        return {"protocol": self.protocol, "accuracy": self.accuracy, "top1": self.accuracy / 100.0,
                "per_class_accuracy": self.per_class, "seconds": round(self.seconds, 3)}

    def line(self) -> str:
        p = self.protocol
        return (f"{p['dataset']} kNN (k={p['k']}, T={p['temperature']}, cosine; memory bank {p['train_split']} "
                f"{p['train_size']} images, queries {p['test_split']} {p['test_size']}): top-1 {self.accuracy:.2f}%")


def _labels_of(split: ClassSplit, idx: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    labels = split.labels()
    if idx is None:
        return split.images, labels
    idx = idx.to(split.device)
    return split.images[idx], labels[idx]


def frozen_features(model: Any, train: ClassSplit, test: ClassSplit, max_train: int | None, max_test: int | None,
                    seed: int, preprocess: Preprocess | None, batch_size: int
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Frozen-encoder features and labels of (subsampled) train and test images: f_train, y_train, f_test, y_test."""
    prep = preprocess or model.preprocess or train.preprocess
    tr_x, tr_y = _labels_of(train, subsample(train.images.shape[0], max_train, seed))
    te_x, te_y = _labels_of(test, subsample(test.images.shape[0], max_test, seed + 1))
    return (extract_features(model, tr_x, prep, batch_size), tr_y, extract_features(model, te_x, prep, batch_size),
            te_y)


def knn_evaluate(model: Any, train: ClassSplit, test: ClassSplit, dataset: str, k: int = 200,
                 temperature: float = 0.1, max_train: int | None = None, max_test: int | None = None, seed: int = 0,
                 preprocess: Preprocess | None = None, batch_size: int = 512) -> KNNResult:
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
                "train_split": train.name.split("/")[-1], "test_split": test.name.split("/")[-1],
                "train_size": int(bank.shape[0]), "test_size": int(queries.shape[0]),
                "train_total": int(train.images.shape[0]), "test_total": int(test.images.shape[0]),
                "subsample_seed": seed if (bank.shape[0] < train.images.shape[0] or queries.shape[0] < test.images.shape[0])
                else None,
                "classes": train.num_classes,
                "features": "encoder output before any projection head; eval mode; no augmentation"}
    return KNNResult(100.0 * float(correct.mean()), protocol, time.perf_counter() - t0, per_class)


class KNNMonitor:
    """The online kNN monitor of a training run: the same fixed subsets (at most `max_train` memory images and
    `max_test` queries, seed `seed`) at every call; returns the row logged as kind "knn"."""

    def __init__(self, model: Any, train: ClassSplit, test: ClassSplit, preprocess: Preprocess, dataset: str,
                 max_train: int = 10000, max_test: int = 2000, seed: int = 0, k: int = 200,
                 temperature: float = 0.1):
        check_label_splits(train, test)
        self.model, self.preprocess, self.dataset = model, preprocess, dataset
        self.k, self.temperature, self.seed = k, temperature, seed
        self.train_x, self.train_y = _labels_of(train, subsample(train.images.shape[0], max_train, seed))
        self.test_x, self.test_y = _labels_of(test, subsample(test.images.shape[0], max_test, seed + 1))
        self.num_classes = train.num_classes

    def __call__(self) -> dict[str, Any]:
        t0 = time.perf_counter()
        bank = extract_features(self.model, self.train_x, self.preprocess)
        queries = extract_features(self.model, self.test_x, self.preprocess)
        pred = knn_predict(bank, self.train_y, queries, self.num_classes, self.k, self.temperature)
        top1 = float((pred == self.test_y.to(pred.device)).float().mean())
        return {"knn_top1": top1, "k": self.k, "temperature": self.temperature,
                "train_size": int(self.train_x.shape[0]), "test_size": int(self.test_x.shape[0]),
                "seconds": round(time.perf_counter() - t0, 3)}
