"""Task sources: where training episodes come from. `labeled` draws N-way K-shot tasks from a labeled split;
unsupervised sources (UMTRA, CACTUs, ...) register here the same way and feed any learner."""

from __future__ import annotations

from ..config import ConfigError
import difflib
from typing import Any, Callable, Protocol

import torch

from .episodic import ClassSplit, TaskBatch, check_task_shape, sample_tasks


class TaskSource(Protocol):
    def sample(self) -> TaskBatch: ...


TASK_SOURCES: dict[str, Callable[[Any, ClassSplit, torch.Generator], TaskSource]] = {}


def register_task_source(name: str):
    def deco(factory):
        if name in TASK_SOURCES:
            raise ValueError(f"task source {name!r} is registered twice")
        TASK_SOURCES[name] = factory
        return factory
    return deco


def make_task_source(task_cfg: Any, split: ClassSplit, generator: torch.Generator, default: str = "labeled",
                     **extra: Any) -> TaskSource:
    """The source named by `tasks.source` (`auto`: the learner's default), built for `split`."""
    name = default if task_cfg.source == "auto" else task_cfg.source
    if name not in TASK_SOURCES:
        close = difflib.get_close_matches(name, TASK_SOURCES, n=2)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ConfigError(f"unknown task source {name!r} (config key tasks.source).{hint} "
                          f"Known: auto, {', '.join(sorted(TASK_SOURCES))}")
    return TASK_SOURCES[name](task_cfg, split, generator, **extra)


@register_task_source("labeled")
class LabeledTasks:
    """N-way K-shot Q-query tasks from the split's labels, drawn on the split's device."""

    def __init__(self, cfg: Any, split: ClassSplit, generator: torch.Generator, **_: Any):
        check_task_shape(split, cfg.ways, cfg.shots, cfg.queries)
        self.cfg, self.split, self.generator = cfg, split, generator

    def sample(self) -> TaskBatch:
        c = self.cfg
        return sample_tasks(self.split, c.ways, c.shots, c.queries, c.tasks_per_batch, self.generator)
