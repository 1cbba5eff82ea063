"""Few-shot regression: splits whose tasks have real-valued targets, and the `regression` task source.

A task is K support and Q query points (x, y) of one function; a learner adapts on the support points and is judged
by the mean squared error on the queries (Finn et al. 2017, section 5.1). Two kinds of split:

- a split of *functions* (`FunctionSplit` subclasses, e.g. the sinusoids of `data/loaders/sinusoid.py`): every
  task is a new function drawn from the family, with its own x values;
- a split of *rows* (`RowSplit`: a table with target columns, `data/loaders/table.py`): a task is K + Q distinct
  rows of one group (the values of a group column, or all rows as one group).

Both draw T training tasks on the split's device in one call (`sample`) and give fixed evaluation tasks that are
a pure function of (split name, K, Q, seed, index) (`fixed_tasks`, drawn on the CPU, one generator per task, like
`episodic.eval_episodes`): every method, device and batch size sees the same test tasks.

`TaskBatch` of a regression task: `support_x [T, K, *input_shape]`, `support_y [T, K, P]` float, the same for the
queries, `ways` None; P is the number of target values (`target_dim`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch

from ..config import ConfigError, TaskConfig, option
from .episodic import Preprocess, TaskBatch, _draw, episode_seed
from .task_sources import register_task_source

__all__ = ["RegressionSplit", "FunctionSplit", "RowSplit", "RegressionTaskConfig", "RegressionTasks",
           "is_regression"]


def is_regression(split: Any) -> bool:
    """Whether a loaded split holds regression tasks (every other split is classification)."""
    return getattr(split, "task_type", "classification") == "regression"


class RegressionSplit:
    """What the engine needs of a regression split; subclasses implement `check`, `sample`, `fixed_tasks`."""

    task_type = "regression"
    name: str = ""
    preprocess: Preprocess = Preprocess()  # inputs are already floats: the identity
    image_shape: tuple[int, ...] = (1,)  # the shape of one input (the engine's name for it)
    target_dim: int = 1

    @property
    def device(self) -> torch.device:
        raise NotImplementedError

    def to(self, device) -> "RegressionSplit":
        raise NotImplementedError

    def check(self, shots: int, queries: int) -> None:
        """Raise a ValueError naming the problem if K-shot Q-query tasks cannot be drawn."""
        for key, v, lo in (("shots", shots, 1), ("queries", queries, 1)):
            if not isinstance(v, int) or v < lo:
                raise ValueError(f"{key} must be an integer >= {lo}, got {v!r}")

    def sample(self, shots: int, queries: int, num_tasks: int, generator: torch.Generator | None) -> TaskBatch:
        raise NotImplementedError

    def fixed_tasks(self, shots: int, queries: int, seed: int, start: int, count: int) -> TaskBatch:
        raise NotImplementedError


class FunctionSplit(RegressionSplit):
    """A family of functions y = f_theta(x): subclasses draw parameters theta and inputs x, and evaluate f."""

    def __init__(self, name: str, device: torch.device | str = "cpu"):
        self.name, self._device = name, torch.device(device)

    @property
    def device(self) -> torch.device:
        return self._device

    def to(self, device) -> "FunctionSplit":
        out = object.__new__(type(self))
        out.__dict__.update(self.__dict__)
        out._device = torch.device(device)
        return out

    # -- the family (subclasses) ------------------------------------------------------------------------------
    def draw_params(self, num_tasks: int, generator, device) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def draw_inputs(self, num_tasks: int, points: int, generator, device) -> torch.Tensor:
        raise NotImplementedError

    def function(self, params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """y [T, M, P] of inputs x [T, M, *input_shape] under per-task params (each [T, ...])."""
        raise NotImplementedError

    # -- tasks ------------------------------------------------------------------------------------------------
    def _tasks(self, params, x, shots: int) -> TaskBatch:
        y = self.function(params, x)
        return TaskBatch(x[:, :shots], y[:, :shots], x[:, shots:], y[:, shots:], None)

    def sample(self, shots, queries, num_tasks, generator):
        params = self.draw_params(num_tasks, generator, self.device)
        x = self.draw_inputs(num_tasks, shots + queries, generator, self.device)
        return self._tasks(params, x, shots)

    def fixed_params(self, shots: int, queries: int, seed: int, start: int, count: int
                     ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """(params, inputs [count, K+Q, ...]) of test tasks start..start+count-1, on the CPU."""
        ps, xs = [], []
        for i in range(start, start + count):
            g = torch.Generator().manual_seed(episode_seed(self.name, "regression", shots, queries, seed, i))
            ps.append(self.draw_params(1, g, torch.device("cpu")))
            xs.append(self.draw_inputs(1, shots + queries, g, torch.device("cpu")))
        params = {k: torch.cat([p[k] for p in ps]) for k in ps[0]}
        return params, torch.cat(xs)

    def fixed_tasks(self, shots, queries, seed, start, count):
        self.check(shots, queries)
        params, x = self.fixed_params(shots, queries, seed, start, count)
        return self._tasks(params, x, shots).to(self.device)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, device={self.device})"


class RowSplit(RegressionSplit):
    """Rows of a table with real targets, grouped: x [M, *shape], y [M, P] sorted by group, `counts` per group.
    A task is K + Q distinct rows of one group (chosen among the groups with at least K + Q rows)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, counts: torch.Tensor, group_names: list[str], name: str,
                 preprocess: Preprocess | None = None):
        if not (x.is_floating_point() and y.is_floating_point() and y.dim() == 2 and x.shape[0] == y.shape[0]):
            raise ValueError(f"{name}: rows need float inputs [M, ...] and float targets [M, P], got "
                             f"{tuple(x.shape)} {x.dtype} and {tuple(y.shape)} {y.dtype}")
        self.x, self.y, self.name = x, y, name
        self.counts = torch.as_tensor(counts, dtype=torch.int64, device=x.device)
        if int(self.counts.sum()) != x.shape[0] or len(group_names) != self.counts.numel():
            raise ValueError(f"{name}: group counts {self.counts.tolist()} do not fit {x.shape[0]} rows")
        self.group_names = list(group_names)
        self.offsets = torch.cumsum(self.counts, 0) - self.counts
        self.host_counts = self.counts.cpu()
        self.max_count = int(self.host_counts.max()) if self.host_counts.numel() else 0
        self.image_shape = tuple(x.shape[1:])
        self.target_dim = int(y.shape[1])
        if preprocess is not None:
            self.preprocess = preprocess

    @property
    def device(self) -> torch.device:
        return self.x.device

    def to(self, device) -> "RowSplit":
        return RowSplit(self.x.to(device), self.y.to(device), self.counts.to(device), self.group_names, self.name,
                        self.preprocess)

    def check(self, shots, queries):
        super().check(shots, queries)
        need = shots + queries
        if not bool((self.host_counts >= need).any()):
            best = int(self.host_counts.argmax())
            what = (f"group {self.group_names[best]!r} (the largest)" if len(self.group_names) > 1 else
                    "the split")
            raise ValueError(f"{self.name}: {shots} shots + {queries} queries = {need} rows per task are needed, but "
                             f"{what} has {int(self.host_counts[best])}; lower shots or queries")

    def _assemble(self, groups: torch.Tensor, pos: torch.Tensor, shots: int) -> TaskBatch:
        groups, pos = groups.to(self.device), pos.to(self.device)
        idx = (self.offsets[groups].unsqueeze(-1) + pos).flatten(1)  # [T, K+Q] row indices
        x, y = self.x[idx], self.y[idx]
        return TaskBatch(x[:, :shots], y[:, :shots], x[:, shots:], y[:, shots:], None)

    def sample(self, shots, queries, num_tasks, generator):
        self.check(shots, queries)
        groups, pos = _draw(self.counts, 1, shots + queries, num_tasks, generator, self.device, self.max_count)
        return self._assemble(groups, pos, shots)

    def fixed_tasks(self, shots, queries, seed, start, count):
        self.check(shots, queries)
        gs, ps = [], []
        for i in range(start, start + count):
            g = torch.Generator().manual_seed(episode_seed(self.name, "regression", shots, queries, seed, i))
            c, p = _draw(self.host_counts, 1, shots + queries, 1, g, torch.device("cpu"), self.max_count)
            gs.append(c)
            ps.append(p)
        return self._assemble(torch.cat(gs), torch.cat(ps), shots)

    def __repr__(self) -> str:
        return (f"RowSplit({self.name!r}, rows={self.x.shape[0]}, groups={len(self.group_names)}, "
                f"input={self.image_shape}, targets={self.target_dim}, device={self.device})")


@dataclass
class RegressionTaskConfig(TaskConfig):
    """K-shot Q-query regression tasks (`tasks.ways` is not used: a task is one function)."""

    source: str = option("regression", help="regression: K support + Q query points of one function per task")
    shots: int = option(10, range=(1, 100000), help="K, the support points of a task")
    queries: int = option(10, range=(1, 100000), help="query points of a task (the reference code: K)")
    tasks_per_batch: int = option(25, range=(1, 100000), help="tasks per meta-batch (the MAML paper: 25)")
    targets: int | None = option(None, range=(1, 100000), help="values per target (the learner's output size); "
                                 "filled in from the data set when training starts")

    def outputs(self) -> int:
        return self.targets or 1

    def for_split(self, split: Any) -> "RegressionTaskConfig":
        return replace(self, targets=int(split.target_dim)) if is_regression(split) else self


@register_task_source("regression", RegressionTaskConfig, batch="episodes")
class RegressionTasks:
    """K-shot Q-query regression tasks (real targets) from a regression split, T per call, on the split's device."""

    def __init__(self, cfg: Any, split: Any, generator: torch.Generator, **_: Any):
        if not is_regression(split):
            raise ConfigError(f"tasks.source=regression needs a regression data set (e.g. data.dataset=sinusoid, or "
                              f"table with data.options.target_columns); {getattr(split, 'name', split)} has class "
                              f"labels: use tasks.source=auto")
        try:
            split.check(cfg.shots, cfg.queries)
        except ValueError as e:
            raise ConfigError(f"tasks.shots / tasks.queries do not fit the data: {e}") from e
        self.cfg, self.split, self.generator = cfg, split, generator

    def sample(self) -> TaskBatch:
        c = self.cfg
        return self.split.sample(c.shots, c.queries, c.tasks_per_batch, self.generator)
