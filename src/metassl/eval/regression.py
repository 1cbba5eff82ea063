"""Few-shot regression evaluation on fixed test tasks: mean squared error, mean absolute error and R², each the mean
over tasks ± a 95% confidence interval (`metrics.confidence_interval`, as for accuracy).

Per task, with query targets y_q and predictions f_q (q = 1..Q, P values each):
    MSE = mean_q,p (f - y)^2,   MAE = mean_q,p |f - y|,   R² = 1 - sum (f - y)^2 / sum (y - mean_q y)^2
(R² of a task's queries around their own mean; a task whose query targets are all equal has no R², left out).
Test task i is a pure function of (split, K, Q, seed, i) (`RegressionSplit.fixed_tasks`), so every method sees the
same tasks; the learner's evaluation inner-loop settings decide the number of adaptation steps (`metassl eval RUN
learner.eval_inner_steps=10`), recorded in the protocol.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable

import torch

from .batching import AUTO, EpisodeBatcher
from .metrics import confidence_interval
from .result import EvalResult

__all__ = ["RegressionProtocol", "evaluate_regression", "task_errors"]

METRICS = ("mse", "mae", "r2")


@dataclass(frozen=True)
class RegressionProtocol:
    dataset: str
    split: str
    shots: int
    queries: int
    episodes: int
    seed: int
    inner_steps: int | None = None  # the learner's evaluation inner steps (recorded, not applied here)

    @property
    def tag(self) -> str:
        """`k10` or, with recorded inner steps, `k10_1step` / `k10_10steps` (the key of `eval.paper`)."""
        if self.inner_steps is None:
            return f"k{self.shots}"
        return f"k{self.shots}_{self.inner_steps}step{'s' if self.inner_steps != 1 else ''}"

    def to_dict(self) -> dict[str, Any]:
        return {"name": "regression", **asdict(self)}


def task_errors(pred: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-task MSE, MAE and R² [T] of predictions and targets [T, Q, P] (R² nan where the targets are constant)."""
    pred, target = pred.detach().double(), target.detach().double().reshape(pred.shape)
    err = pred - target
    sse = (err * err).flatten(1).sum(1)
    centered = target - target.mean(1, keepdim=True)
    sst = (centered * centered).flatten(1).sum(1)
    r2 = torch.where(sst > 0, 1 - sse / sst.clamp_min(1e-300), torch.full_like(sse, math.nan))
    return {"mse": (err * err).flatten(1).mean(1), "mae": err.abs().flatten(1).mean(1), "r2": r2}


def evaluate_regression(predict: Callable, split: Any, protocol: RegressionProtocol,
                        batch_episodes: int | EpisodeBatcher = AUTO, progress: Callable[[int], None] | None = None,
                        part: tuple[int, int] | None = None,
                        gather: Callable[[Any], list[Any]] | None = None) -> EvalResult:
    """Run the protocol's fixed tasks through `predict(support_x, support_y, query_x, None) -> [T, Q, P]` under
    no_grad. `part` / `gather`: this process's share of the tasks and the collective that joins every process's
    per-task errors (the result then equals one process's), as in `eval.episodes.evaluate`."""
    t0 = time.perf_counter()
    per: dict[str, list[torch.Tensor]] = {k: [] for k in METRICS}
    first, last = part or (0, protocol.episodes)
    prep = split.preprocess

    def step(start: int, count: int) -> None:
        tasks = split.fixed_tasks(protocol.shots, protocol.queries, protocol.seed, start, count).map_images(prep)
        with torch.no_grad():
            out = predict(tasks.support_x, tasks.support_y, tasks.query_x, None)
        for k, v in task_errors(out, tasks.query_y).items():
            per[k].append(v.cpu())
        if progress:
            progress(count)

    EpisodeBatcher.of(batch_episodes).run(first, last, step)
    values = {k: torch.cat(v) if v else torch.zeros(0, dtype=torch.float64) for k, v in per.items()}
    if gather is not None:
        values = {k: torch.cat([p[k] for p in gather(values)]) for k in METRICS}
    summary = {}
    for k, v in values.items():
        v = v[~torch.isnan(v)]
        mean, ci = confidence_interval(v) if v.numel() else (math.nan, math.nan)
        summary[k] = {"mean": mean, "ci95": ci}
    return EvalResult(protocol.to_dict(), math.nan, math.nan, summary, time.perf_counter() - t0,
                      per_episode_accuracy=[])
