"""The `views` task source: unlabeled batches of augmented views for self-supervised learners.

Each step draws `tasks.batch_size` distinct images uniformly at random from the training split (one `randperm` on the
device per step, independent across steps; the class structure of the split is never read, so shuffling or dropping
its labels gives the same batches) and makes `tasks.views` augmented views of each with `augment` (on the device,
one call, see `metassl.data.augment`). A "200-epoch" preset therefore means steps x batch size = 200 x the split's
size in image draws, as in a drop-last DataLoader. The sampler is stateless (a function of the generator), so a run
resumed from a checkpoint draws exactly the batches the uninterrupted run would have drawn.

Multi-crop (SwAV, Caron et al. 2020; DINO, Caron et al. 2021): `tasks.local_crops: M` adds M local crops of each
image at `tasks.local_size` pixels (square; crop area `augment.local_scale`), made after the `tasks.views` global
views in a second augment call (`ViewBatch.local_views` [M, B, C, h, w]). With M = 0 (the default) nothing else
is drawn and the batches are those of a run without multi-crop, bit for bit. Only learners that declare
`multi_crop = True` (DINO, SwAV) read local crops; any other learner refuses them instead of ignoring them.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch

from ..config import ConfigError, TaskConfig, option
from ..registry import LEARNERS
from .augment import AugmentSpec, augment, local_crops, resolve_augment
from .episodic import ClassSplit
from .task_sources import register_task_source

__all__ = ["ViewBatch", "ViewSource", "ViewsTaskConfig"]


@dataclass
class ViewsTaskConfig(TaskConfig):
    batch_size: int = option(256, range=(1, 1000000), help="distinct images per step")
    views: int = option(2, range=(1, 64), help="augmented views per image (with local crops: the global views)")
    local_crops: int = option(0, range=(0, 64), help="multi-crop: local crops per image beside the global views "
                              "(DINO, SwAV; 0: none)")
    local_size: int = option(0, range=(0, 4096), help="side of the local crops in pixels (0: half the image side, "
                             "rounded); at most the image side")


@dataclass
class ViewBatch:
    """V augmented views of B images: `views` [V, B, C, H, W], float (in [0, 1] before preprocessing); with
    multi-crop also `local_views` [M, B, C, h, w], M local crops of each image at a smaller size (else None)."""

    views: torch.Tensor
    indices: torch.Tensor | None = None  # [B] positions of the images in the split (for tests and debugging)
    local_views: torch.Tensor | None = None

    @property
    def num_tasks(self) -> int:
        """The images of the batch: the unit along which it is split into chunks."""
        return self.views.shape[1]

    def select(self, start: int, stop: int) -> "ViewBatch":
        """Images start..stop-1 with all their views (e.g. this process's share of a global batch)."""
        return ViewBatch(self.views[:, start:stop], None if self.indices is None else self.indices[start:stop],
                         None if self.local_views is None else self.local_views[:, start:stop])

    def chunks(self, size: int) -> list["ViewBatch"]:
        """Split along the images into batches of at most `size` (a contrastive loss of a chunk only sees the
        chunk's negatives: chunking a view batch changes the loss, unlike a batch of tasks)."""
        return [self.select(s, s + size) for s in range(0, self.num_tasks, size)]

    def map_images(self, fn) -> "ViewBatch":
        """Apply `fn` to the views and the local crops (e.g. the data set's normalization), as
        `TaskBatch.map_images`."""
        return replace(self, views=fn(self.views),
                       local_views=None if self.local_views is None else fn(self.local_views))

    def to(self, device) -> "ViewBatch":
        return ViewBatch(self.views.to(device), None if self.indices is None else self.indices.to(device),
                         None if self.local_views is None else self.local_views.to(device))


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
        self.local_crops = int(getattr(cfg, "local_crops", 0) or 0)
        self.local_size: tuple[int, int] | None = None
        if self.local_crops:
            self.local_size = local_size(cfg, split)
            method = config.learner.name if config is not None else None
            learner = LEARNERS.get(method) if method else None
            if learner is not None and not getattr(learner.build, "multi_crop", False):
                raise ConfigError(f"learner {method} does not use local crops; set tasks.local_crops=0 (got "
                                  f"{self.local_crops}; multi-crop learners: dino, swav)")

    def draw(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The step's `batch_size` distinct images (positions [B], uint8 images [B, C, H, W]), one randperm."""
        total = self.split.images.shape[0]
        idx = torch.randperm(total, generator=self.generator, device=self.split.device)[: self.batch_size]
        return idx, self.split.images[idx]

    def sample(self) -> ViewBatch:
        idx, images = self.draw()
        views = augment(images, self.spec, self.views, self.generator)
        if not self.local_crops:
            return ViewBatch(views, idx)
        local = local_crops(images, self.spec, self.local_crops, self.local_size, self.views, self.generator)
        return ViewBatch(views, idx, local)


def local_size(cfg: Any, split: ClassSplit) -> tuple[int, int]:
    """The (h, w) of the local crops: `tasks.local_size` (0: half the smaller image side), at most the image."""
    _, h, w = split.image_shape
    side = int(cfg.local_size) or max(1, round(min(h, w) / 2))
    if side > min(h, w):
        raise ConfigError(f"tasks.local_size={cfg.local_size} is larger than the {h}x{w} images of "
                          f"{split.name or 'the training split'}; local crops must be at most the image size "
                          f"(e.g. tasks.local_size={max(1, round(min(h, w) * 3 / 7))}, DINO's 96/224)")
    return side, side
