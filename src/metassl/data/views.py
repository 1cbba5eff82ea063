"""The `views` task source: unlabeled batches of augmented views for self-supervised learners.

Each step draws `tasks.batch_size` distinct images uniformly at random from the training split (one `randperm` on the
device per step, independent across steps; the class structure of the split is never read, so shuffling or dropping
its labels gives the same batches) and makes `tasks.views` augmented views of each with `augment` (on the device,
one call, see `metassl.data.augment`). A "200-epoch" preset therefore means steps x batch size = 200 x the split's
size in image draws, as in a drop-last DataLoader. The sampler is stateless (a function of the generator), so a run
resumed from a checkpoint draws exactly the batches the uninterrupted run would have drawn.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch

from ..config import ConfigError, TaskConfig, option
from .augment import AugmentSpec, augment, resolve_augment
from .episodic import ClassSplit
from .task_sources import register_task_source

__all__ = ["ViewBatch", "ViewSource", "ViewsTaskConfig"]


@dataclass
class ViewsTaskConfig(TaskConfig):
    batch_size: int = option(256, range=(1, 1000000), help="distinct images per step")
    views: int = option(2, range=(1, 64), help="augmented views per image")


@dataclass
class ViewBatch:
    """V augmented views of B images: `views` [V, B, C, H, W], float (in [0, 1] before preprocessing)."""

    views: torch.Tensor
    indices: torch.Tensor | None = None  # [B] positions of the images in the split (for tests and debugging)

    @property
    def num_tasks(self) -> int:
        """The images of the batch: the unit along which it is split into chunks."""
        return self.views.shape[1]

    def select(self, start: int, stop: int) -> "ViewBatch":
        """Images start..stop-1 with all their views (e.g. this process's share of a global batch)."""
        return ViewBatch(self.views[:, start:stop], None if self.indices is None else self.indices[start:stop])

    def chunks(self, size: int) -> list["ViewBatch"]:
        """Split along the images into batches of at most `size` (a contrastive loss of a chunk only sees the
        chunk's negatives: chunking a view batch changes the loss, unlike a batch of tasks)."""
        return [self.select(s, s + size) for s in range(0, self.num_tasks, size)]

    def map_images(self, fn) -> "ViewBatch":
        """Apply `fn` to the views (e.g. the data set's normalization), as `TaskBatch.map_images`."""
        return replace(self, views=fn(self.views))

    def to(self, device) -> "ViewBatch":
        return ViewBatch(self.views.to(device), None if self.indices is None else self.indices.to(device))


@register_task_source("views", ViewsTaskConfig, batch="views")
class ViewSource:
    """`tasks.batch_size` images x `tasks.views` augmented views per step, drawn on the split's device."""

    def __init__(self, cfg: Any, split: ClassSplit, generator: torch.Generator, config: Any = None,
                 spec: AugmentSpec | None = None, **_: Any):
        total = split.images.shape[0]
        if cfg.batch_size > total:
            raise ConfigError(f"tasks.batch_size={cfg.batch_size} is larger than the {total} images of "
                              f"{split.name or 'the training split'}; lower tasks.batch_size")
        self.split, self.generator = split, generator
        self.batch_size, self.views = int(cfg.batch_size), int(cfg.views)
        if spec is None:
            dataset = config.data.dataset if config is not None else (split.name.split("/")[0] or "generic")
            method = config.learner.name if config is not None else None
            spec = resolve_augment(config.augment if config is not None else None, dataset, method)
        if spec.rotate90 > 0 and split.image_shape[1] != split.image_shape[2]:
            raise ConfigError(f"augment.rotate90 needs square images; {split.name} has "
                              f"{split.image_shape[1]}x{split.image_shape[2]}")
        self.spec = spec

    def draw(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The step's `batch_size` distinct images (positions [B], uint8 images [B, C, H, W]), one randperm."""
        total = self.split.images.shape[0]
        idx = torch.randperm(total, generator=self.generator, device=self.split.device)[: self.batch_size]
        return idx, self.split.images[idx]

    def sample(self) -> ViewBatch:
        idx, images = self.draw()
        return ViewBatch(augment(images, self.spec, self.views, self.generator), idx)
