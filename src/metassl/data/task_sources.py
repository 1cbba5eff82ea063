"""Task sources: where training episodes come from. `labeled` draws N-way K-shot tasks from a labeled split;
unsupervised sources (UMTRA, CACTUs, ...) register here the same way and feed any learner."""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Callable, Protocol

import torch

from ..registry import Registry
from .augment import augment
from .episodic import ClassSplit, TaskBatch, check_task_shape, sample_tasks


class TaskSource(Protocol):
    def sample(self) -> TaskBatch: ...


TASK_SOURCES: Registry[Callable[..., TaskSource]] = Registry("task source", "tasks.source")


def register_task_source(name: str):
    """Class decorator: `factory(task_cfg, split, generator, config=RunConfig, device=...)` builds the source."""
    def deco(factory):
        return TASK_SOURCES.add(name, factory)
    return deco


def make_task_source(task_cfg: Any, split: ClassSplit, generator: torch.Generator, default: str = "labeled",
                     **extra: Any) -> TaskSource:
    """The source named by `tasks.source` (`auto`: the learner's default), built for `split`."""
    name = default if task_cfg.source == "auto" else task_cfg.source
    return TASK_SOURCES.lookup(name)(task_cfg, split, generator, **extra)


@register_task_source("labeled")
class LabeledTasks:
    """N-way K-shot Q-query tasks from the split's labels, drawn on the split's device."""

    def __init__(self, cfg: Any, split: ClassSplit, generator: torch.Generator, **_: Any):
        check_task_shape(split, cfg.ways, cfg.shots, cfg.queries)
        self.cfg, self.split, self.generator = cfg, split, generator

    def sample(self) -> TaskBatch:
        c = self.cfg
        return sample_tasks(self.split, c.ways, c.shots, c.queries, c.tasks_per_batch, self.generator)


class AuxiliaryViews:
    """Wraps a task source for a self-supervised auxiliary term (`aux.contrastive`): each TaskBatch also carries
    `views` [T, V, N*(K+Q), C, H, W], V augmented views of each task's support then query images. The views are made
    from the images alone (labels are never read), on the images' device, with the run's generator. Batches that are
    not TaskBatches (the self-supervised learners' ViewBatch, which has views already) pass through unchanged."""

    def __init__(self, source: TaskSource, spec: Any, generator: torch.Generator, views: int = 2):
        self.source, self.spec, self.generator, self.views = source, spec, generator, int(views)

    def sample(self) -> Any:
        batch = self.source.sample()
        if not isinstance(batch, TaskBatch):
            return batch

        def unit(x: torch.Tensor) -> torch.Tensor:  # uint8 (labeled tasks) or float in [0, 1] (UMTRA's views)
            return x.float().div(255.0) if x.dtype == torch.uint8 else x

        images = torch.cat([unit(batch.support_x), unit(batch.query_x)], 1)
        t, m = images.shape[:2]
        views = augment(images.flatten(0, 1), self.spec, self.views, self.generator)  # [V, T*M, C, H, W]
        return replace(batch, views=views.unflatten(1, (t, m)).transpose(0, 1))
