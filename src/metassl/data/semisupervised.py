"""The `semisupervised` task source: N-way K-shot episodes with an unlabeled set (Ren et al., "Meta-Learning for
Semi-Supervised Few-Shot Classification", ICLR 2018): `tasks.unlabeled` further images of each of the N classes
and of `tasks.distractors` classes outside the episode, shuffled, without labels (`TaskBatch.unlabeled_x`).

The paper's Omniglot setting: 5 unlabeled images per class in training (20 in testing), as many distractor classes
as ways. Deviation: the paper first splits every class's images into a labeled 10% and an unlabeled 90% and draws
the support and query sets only from the labeled part; here all images of a class can be drawn for either role
(within an episode the sets are disjoint), and `data.train_fraction` limits the labeled classes instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..config import ConfigError, TaskConfig, option
from .episodic import ClassSplit, TaskBatch, check_task_shape, sample_tasks
from .task_sources import register_task_source


@dataclass
class SemiSupervisedTaskConfig(TaskConfig):
    unlabeled: int = option(5, range=(0, 100000), help="unlabeled images per class in each episode (the paper: 5 "
                            "in training, 20 in testing)")
    distractors: int = option(0, range=(0, 100000), help="classes outside the episode that add `unlabeled` images "
                              "each to its unlabeled set (the paper: as many as ways)")


@register_task_source("semisupervised", SemiSupervisedTaskConfig, batch="episodes")
class SemiSupervisedTasks:
    """N-way K-shot Q-query tasks with M unlabeled images per class and D distractor classes, on the split's device."""

    def __init__(self, cfg: Any, split: ClassSplit, generator: torch.Generator, **_: Any):
        try:
            check_task_shape(split, cfg.ways, cfg.shots, cfg.queries, cfg.unlabeled, cfg.distractors)
        except ValueError as e:
            raise ConfigError(f"tasks (source semisupervised): {e}") from e
        self.cfg, self.split, self.generator = cfg, split, generator

    def sample(self) -> TaskBatch:
        c = self.cfg
        return sample_tasks(self.split, c.ways, c.shots, c.queries, c.tasks_per_batch, self.generator,
                            unlabeled=c.unlabeled, distractors=c.distractors)
