"""The `classes` task source: plain supervised mini-batches with global labels over every base class.

This is how the transfer baselines pre-train (Chen et al., "A Closer Look at Few-shot Classification", ICLR 2019;
SimpleShot; Meta-Baseline's classifier stage): `tasks.batch_size` distinct images drawn uniformly from the whole
training split per step (one `randperm` on the device, as the `views` source; no DataLoader), labelled by their class
index in the split (0..C-1). `tasks.num_classes` is the number of classes of the training split; the trainer fills it
in (and stores it in config.yaml) so that a saved run rebuilds its C-way classifier head without reading the data.
With `tasks.augment: true` each image is replaced by one augmented view (the run's `augment` section / the data
set's preset), on the device.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, replace
from typing import Any

import torch

from ..config import ConfigError, TaskConfig, option
from .augment import augment, resolve_augment
from .episodic import ClassSplit
from .task_sources import register_task_source

__all__ = ["ClassBatch", "ClassesTaskConfig", "ClassSource"]


@dataclass
class ClassesTaskConfig(TaskConfig):
    batch_size: int = option(128, range=(1, 1000000), help="images per step (distinct, uniform over the split)")
    num_classes: int | None = option(None, range=(2, 10000000),
                                     help="classes of the training split (the classifier's outputs); null: filled "
                                          "in from the split when training starts")
    augment: bool = option(False, help="one augmented view per image (the augment section, else the data set's "
                                       "preset) instead of the image itself")

    def outputs(self) -> int:
        if self.num_classes is None:
            raise ConfigError("tasks.num_classes is not set: the `classes` source fills it in from the training "
                              "split when training starts; set tasks.num_classes to the split's number of classes")
        return self.num_classes

    def for_split(self, split: ClassSplit) -> "ClassesTaskConfig":
        if self.num_classes is None:
            return replace(self, num_classes=split.num_classes)
        if self.num_classes != split.num_classes:
            raise ConfigError(f"tasks.num_classes={self.num_classes} but {split.name or 'the training split'} has "
                              f"{split.num_classes} classes; set tasks.num_classes={split.num_classes} or null")
        return self


@dataclass
class ClassBatch:
    """B labelled images: `images` [B, C, H, W] (uint8, or float views in [0, 1]) and `labels` [B] in 0..C-1."""

    images: torch.Tensor
    labels: torch.Tensor
    num_classes: int

    @property
    def num_tasks(self) -> int:
        """The images of the batch: the unit along which it is split into chunks and over processes."""
        return self.images.shape[0]

    def select(self, start: int, stop: int) -> "ClassBatch":
        return ClassBatch(self.images[start:stop], self.labels[start:stop], self.num_classes)

    def chunks(self, size: int) -> list["ClassBatch"]:
        return [self.select(s, s + size) for s in range(0, self.num_tasks, size)]

    def map_images(self, fn) -> "ClassBatch":
        return dataclasses.replace(self, images=fn(self.images))

    def to(self, device) -> "ClassBatch":
        return ClassBatch(self.images.to(device), self.labels.to(device), self.num_classes)


@register_task_source("classes", ClassesTaskConfig, batch="classes")
class ClassSource:
    """`tasks.batch_size` labelled images of the training split per step (global labels), drawn on its device."""

    def __init__(self, cfg: Any, split: ClassSplit, generator: torch.Generator, config: Any = None, **_: Any):
        total = split.images.shape[0]
        if cfg.batch_size > total:
            raise ConfigError(f"tasks.batch_size={cfg.batch_size} is larger than the {total} images of "
                              f"{split.name or 'the training split'}; lower tasks.batch_size")
        cfg.for_split(split)  # the head's size must match the split
        self.split, self.generator, self.batch_size = split, generator, int(cfg.batch_size)
        self.labels = split.labels()
        self.spec = None
        if cfg.augment:
            dataset = config.data.dataset if config is not None else (split.name.split("/")[0] or "generic")
            self.spec = resolve_augment(config.augment if config is not None else None, dataset)

    def sample(self) -> ClassBatch:
        total = self.split.images.shape[0]
        idx = torch.randperm(total, generator=self.generator, device=self.split.device)[: self.batch_size]
        images = self.split.images[idx]
        if self.spec is not None:
            images = augment(images, self.spec, 1, self.generator)[0]
        return ClassBatch(images, self.labels[idx], self.split.num_classes)
