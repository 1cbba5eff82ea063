"""Frozen-encoder features: the one embedding loop (`embed_images`) of the kNN and linear-probe protocols, CACTUs'
embeddings (`engine/frozen.embed_with_run`), `api.FewShotClassifier`'s logistic classifier and the report's t-SNE
map; and what the two labeled-split protocols (kNN, linear probe) share: the class check, the fixed subsets, and
the protocol fields that describe them."""

from __future__ import annotations

from typing import Any

import torch

from ..data.episodic import ClassSplit, Preprocess
from .batching import AUTO, EpisodeBatcher

__all__ = ["embed_images", "check_label_splits", "subsample", "labeled_subset", "frozen_features",
           "frozen_protocol"]

FEATURES = "encoder output before any projection head; eval mode; no augmentation"


@torch.no_grad()
def embed_images(model: Any, images: torch.Tensor, preprocess: Preprocess | None = None,
                 batch_size: int = AUTO) -> torch.Tensor:
    """Encoder features [M, D] (float32) of uint8 images [M, C, H, W]: `batch_size` images at a time (0: the size
    measured fastest on this device, `eval.batching`; a row's features do not depend on it), each batch
    moved to the model's device and preprocessed (default: the model's recorded `preprocess`), the encoder in eval
    mode (BatchNorm running statistics; its previous mode is restored after), no gradients. The features are the
    learner's `embed`: the encoder output, before any projection head."""
    prep = preprocess or model.preprocess
    device = next(iter(model.params.values())).device
    was = model.encoder.training
    model.train(False)
    try:
        out = EpisodeBatcher.of(batch_size).run(0, images.shape[0], lambda s, n: model.learner.embed(
            model.params, model.buffers, prep(images[s:s + n].to(device))).float())
    finally:
        model.train(was)
    return torch.cat(out) if out else torch.zeros(0, 0)


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


def labeled_subset(split: ClassSplit, max_n: int | None, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Images and labels of a fixed subset of `split` (`subsample`; all of it when max_n is None)."""
    labels = split.labels()
    idx = subsample(split.images.shape[0], max_n, seed)
    if idx is None:
        return split.images, labels
    idx = idx.to(split.device)
    return split.images[idx], labels[idx]


def frozen_features(model: Any, train: ClassSplit, test: ClassSplit, max_train: int | None, max_test: int | None,
                    seed: int, preprocess: Preprocess | None = None, batch_size: int = AUTO
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Frozen-encoder features and labels of the (subsampled: seed for train, seed + 1 for test) train and test
    images: f_train, y_train, f_test, y_test."""
    tr_x, tr_y = labeled_subset(train, max_train, seed)
    te_x, te_y = labeled_subset(test, max_test, seed + 1)
    return (embed_images(model, tr_x, preprocess, batch_size), tr_y, embed_images(model, te_x, preprocess, batch_size),
            te_y)


def frozen_protocol(train: ClassSplit, test: ClassSplit, train_size: int, test_size: int, seed: int
                    ) -> dict[str, Any]:
    """The protocol fields of a labeled-split protocol: which splits, how many of their images, the subset seed
    (None when both splits were used whole), the classes and what the features are."""
    subsampled = train_size < train.images.shape[0] or test_size < test.images.shape[0]
    return {"train_split": train.name.split("/")[-1], "test_split": test.name.split("/")[-1],
            "train_size": int(train_size), "test_size": int(test_size),
            "train_total": int(train.images.shape[0]), "test_total": int(test.images.shape[0]),
            "subsample_seed": seed if subsampled else None, "classes": train.num_classes, "features": FEATURES}
