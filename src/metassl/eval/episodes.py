"""Few-shot evaluation on fixed episodes: any learner, any split, a protocol that names everything needed to repeat it."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any, Callable

import torch

from ..data.episodic import ClassSplit, Preprocess, eval_episodes
from .batching import AUTO, EpisodeBatcher
from .metrics import confidence_interval, episode_metrics
from .result import EvalResult

METRICS = ("accuracy", "precision", "recall", "f1", "roc_auc")


@dataclass(frozen=True)
class Protocol:
    dataset: str
    split: str
    ways: int
    shots: int
    queries: int
    episodes: int
    seed: int
    # semi-supervised episodes (Ren et al. 2018): M unlabeled images of each class and of D distractor classes
    unlabeled: int = 0
    distractors: int = 0

    @property
    def tag(self) -> str:
        return f"{self.ways}w{self.shots}s"

    def to_dict(self) -> dict[str, Any]:
        """The protocol as `EvalResult.protocol` records it: its name, then these fields (`unlabeled` and
        `distractors` only for semi-supervised episodes, so plain protocols read as they always did)."""
        d = {"name": "fewshot", **asdict(self)}
        if not (self.unlabeled or self.distractors):
            del d["unlabeled"], d["distractors"]
        return d


PredictFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, int], torch.Tensor]


def evaluate(predict: PredictFn, split: ClassSplit, protocol: Protocol, preprocess: Preprocess | None = None,
             batch_episodes: int | EpisodeBatcher = AUTO, progress: Callable[[int], None] | None = None,
             part: tuple[int, int] | None = None, gather: Callable[[Any], list[Any]] | None = None) -> EvalResult:
    """Run `protocol`'s episodes through `predict(support_x, support_y, query_x, ways) -> logits [T, Nq, N]`, under
    torch.no_grad (learners that adapt by gradient steps enable gradients themselves). Semi-supervised protocols
    (`protocol.unlabeled` > 0) call `predict(..., unlabeled_x=U)` with the episode's unlabeled images [T, U, ...].

    `batch_episodes`: episodes per model call (0: measured on the device, see `eval.batching`). Episode i is the
    same for every method (see `eval_episodes`), so results of different methods are paired.
    Several processes: each evaluates its `part` [start, stop) of the episodes and `gather` (every process's
    per-episode results, in process order) makes every process summarize all of them, so the result equals one
    process's.
    """
    prep = preprocess or split.preprocess
    t0 = time.perf_counter()
    per: dict[str, list[torch.Tensor]] = {k: [] for k in METRICS}
    confusion = torch.zeros(protocol.ways, protocol.ways)
    first, last = part or (0, protocol.episodes)

    def step(start: int, count: int) -> None:
        nonlocal confusion
        tasks = eval_episodes(split, protocol.ways, protocol.shots, protocol.queries, protocol.seed, start, count,
                              protocol.unlabeled, protocol.distractors)
        tasks = tasks.map_images(prep)
        extra = {} if tasks.unlabeled_x is None else {"unlabeled_x": tasks.unlabeled_x}
        with torch.no_grad():
            logits = predict(tasks.support_x, tasks.support_y, tasks.query_x, protocol.ways, **extra)
        m = episode_metrics(logits, tasks.query_y, protocol.ways)
        for k in METRICS:
            per[k].append(m[k].cpu())
        confusion = confusion + m["confusion"].sum(0).cpu()
        if progress:
            progress(count)

    EpisodeBatcher.of(batch_episodes).run(first, last, step)
    values = {k: torch.cat(v) if v else torch.zeros(0) for k, v in per.items()}
    if gather is not None:
        parts = gather((values, confusion))
        values = {k: torch.cat([v[k] for v, _ in parts]) for k in METRICS}
        confusion = sum(c for _, c in parts)
    summary = {}
    for k, v in values.items():
        scale = 100.0 if k == "accuracy" else 1.0
        mean, ci = confidence_interval(v * scale)
        summary[k] = {"mean": mean, "ci95": ci}
    return EvalResult(protocol.to_dict(), summary["accuracy"]["mean"], summary["accuracy"]["ci95"], summary,
                      time.perf_counter() - t0, confusion=confusion.tolist(),
                      per_episode_accuracy=(values["accuracy"] * 100).tolist())
