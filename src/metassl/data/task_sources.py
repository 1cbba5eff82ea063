"""Task sources: where training batches come from. `labeled` draws N-way K-shot tasks from a labeled split;
unsupervised sources (UMTRA, CACTUs, views, PsCo's views) register the same way, each in its own file, with the
config class of their `tasks.*` keys (a subclass of `TaskConfig`), and feed any learner that takes their batches.

A source is built as `factory(task_cfg, split, generator, config=RunConfig, **context)`; the engine's context may
hold `device` and `embed` (a function `embed(run_or_checkpoint, split) -> [M, D]` features of the split's images,
for sources that cluster an earlier model's embeddings: the data layer never loads a model itself)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Callable, Protocol

import torch

from ..config import TaskConfig
from ..registry import TASK_SOURCES
from .augment import augment
from .episodic import ClassSplit, TaskBatch, check_task_shape, sample_tasks

__all__ = ["TaskSource", "TaskSourceSpec", "register_task_source", "make_task_source", "LabeledTasks",
           "AuxiliaryViews"]


class TaskSource(Protocol):
    def sample(self) -> Any: ...


@dataclass(frozen=True)
class TaskSourceSpec:
    name: str
    factory: Callable[..., TaskSource]
    config: type = TaskConfig  # the `tasks` section when this source is chosen
    description: str = ""
    # the kind of batch it yields (a key of config.BATCH_KINDS: episodes, views, classes), so a learner that cannot
    # train on it is refused when the config is read; None: not declared, never refused
    batch: str | None = None


def register_task_source(name: str, config: type = TaskConfig, description: str = "", batch: str | None = None):
    """Class decorator: registers `factory(task_cfg, split, generator, config=RunConfig, **context)` and the
    config class of its `tasks.*` keys."""
    if not issubclass(config, TaskConfig):
        raise TypeError(f"task source {name!r}: its config class must subclass metassl.config.TaskConfig")

    def deco(factory):
        TASK_SOURCES.add(name, TaskSourceSpec(name, factory, config, description or _first_line(factory), batch))
        return factory
    return deco


def _first_line(obj: Any) -> str:
    return (obj.__doc__ or "").strip().split("\n")[0]


def make_task_source(task_cfg: Any, split: ClassSplit, generator: torch.Generator, default: str = "labeled",
                     **extra: Any) -> TaskSource:
    """The source named by `tasks.source` (`auto`: the learner's default), built for `split`."""
    name = default if task_cfg.source == "auto" else task_cfg.source
    return TASK_SOURCES.lookup(name).factory(task_cfg, split, generator, **extra)


@register_task_source("labeled", batch="episodes")
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
