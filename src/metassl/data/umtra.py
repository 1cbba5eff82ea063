"""UMTRA task source (Khodadadeh, Bölöni & Shah, "Unsupervised Meta-Learning for Few-Shot Image Classification",
NeurIPS 2019): episodes built from unlabeled images, for any learner.

Each task draws N distinct images uniformly at random from the split and declares each its own class: the support
set holds the images themselves (and, for K > 1 shots, K - 1 augmented copies), the query set holds Q augmented views
of each. With many classes in the unlabeled pool, the N images rarely share a class, which is what makes the
pseudo-labels useful. The split's class structure is never read (a test shuffles it and gets the same tasks).
Augmentation is `metassl.data.augment` with the run's `augment` section (Omniglot: random crop/shift/rotation).
"""

from __future__ import annotations

from typing import Any

import torch

from ..config import ConfigError
from .augment import augment, resolve_augment
from .episodic import ClassSplit, TaskBatch
from .task_sources import register_task_source


@register_task_source("umtra", batch="episodes")
class UMTRATasks:
    def __init__(self, cfg: Any, split: ClassSplit, generator: torch.Generator, config: Any = None, **_: Any):
        total = split.images.shape[0]
        if cfg.ways > total:
            raise ConfigError(f"tasks.ways={cfg.ways} is larger than the {total} images of {split.name}")
        self.split, self.generator, self.cfg = split, generator, cfg
        dataset = config.data.dataset if config is not None else (split.name.split("/")[0] or "generic")
        self.spec = resolve_augment(config.augment if config is not None else None, dataset)

    def sample(self) -> TaskBatch:
        c = self.cfg
        t, n, k, q = c.tasks_per_batch, c.ways, c.shots, c.queries
        images = self.split.images
        dev = images.device
        keys = torch.rand(t, images.shape[0], generator=self.generator, device=dev)
        idx = torch.topk(keys, n, dim=1, largest=False, sorted=False).indices  # [T, N] distinct images per task
        base = images[idx.flatten()]  # [T*N, C, H, W] uint8
        views = augment(base, self.spec, (k - 1) + q, self.generator)  # [k-1+q, T*N, C, H, W] float in [0, 1]
        shape = base.shape[1:]
        original = base.float().div(255.0).unsqueeze(0)
        support = torch.cat([original, views[: k - 1]]) if k > 1 else original  # [K, T*N, ...]
        query = views[k - 1:]  # [Q, T*N, ...]

        def arrange(v: torch.Tensor, per: int) -> tuple[torch.Tensor, torch.Tensor]:
            x = v.view(per, t, n, *shape).permute(1, 2, 0, *range(3, 3 + len(shape)))  # [T, N, per, ...]
            y = torch.arange(n, device=dev).view(1, n, 1).expand(t, n, per)
            return x.reshape(t, n * per, *shape), y.reshape(t, n * per)

        sx, sy = arrange(support, k)
        qx, qy = arrange(query, q)
        return TaskBatch(sx, sy, qx, qy, n, None)
