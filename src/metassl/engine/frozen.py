"""Frozen encoders of saved runs: load a split of a run's data at the run's image size, and embed a split with
another run's encoder.

`load_run_split` is "load a run's split" for `engine/evaluate.py` (few-shot, kNN and linear-probe evaluation) and
the report; `embed_with_run` gives CACTUs (`tasks.embed_from`, in the trainer) its embeddings. The embedding loop
itself is `eval.features.embed_images`, which the kNN and linear-probe protocols, prediction
(`api.FewShotClassifier`) and the report's t-SNE map use too.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..data.episodic import ClassSplit
from ..data.registry import load_dataset
from ..errors import ConfigError
from ..eval.features import embed_images
from .build import Model, load_model

__all__ = ["embed_with_run", "load_run_split"]


def load_run_split(model: Model, dataset: str | None = None, split: str | None = None, data_root: str | None = None,
                   device: torch.device | str | None = None) -> ClassSplit:
    """A split of `dataset` (default: the run's data set; split default: its test split; data root default: the
    run's data.root) at the model's image size, on `device` (default: the model's), checked against the image shape
    the model was trained on."""
    cfg = model.config
    ds, sp = dataset or cfg.data.dataset, split or cfg.data.test_split
    # images: the model's image size; other inputs (vectors, functions) are never resized
    size = model.image_shape[-1] if len(model.image_shape) == 3 else None
    data = load_dataset(ds, sp, data_root or cfg.data.root, size,
                        device if device is not None else model.params[next(iter(model.params))].device,
                        cfg.data.options)
    if data.image_shape != tuple(model.image_shape):
        raise ValueError(f"{ds}/{sp} images are {data.image_shape} but the model was trained on "
                         f"{tuple(model.image_shape)} images")
    return data


def embed_with_run(run: str | Path, split: ClassSplit, device: torch.device | str = "cpu",
                   batch_size: int = 1024) -> torch.Tensor:
    """Encoder features [M, D] (float32, eval mode, the run's recorded preprocessing) of every image of `split`."""
    model, _ = load_model(run, device)
    if tuple(model.image_shape) != split.image_shape:
        raise ConfigError(f"{run}: its encoder takes {tuple(model.image_shape)} images but {split.name} has "
                          f"{split.image_shape}; use an encoder trained at this image size")
    return embed_images(model, split.images, model.preprocess, batch_size)
