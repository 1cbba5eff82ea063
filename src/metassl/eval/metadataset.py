"""The Meta-Dataset evaluation protocol (Triantafillou et al. 2020): on each data set's test classes, fixed
variable-way variable-shot episodes (`data/metadataset.py`, the paper's sampler settings; Omniglot with its
alphabet hierarchy), accuracy ± 95% CI per data set, and the average rank of several methods over the data sets.

Every episode is evaluated on its own, unpadded (T = 1), so any learner whose `predict` takes any number of ways
can be evaluated, and the result does not depend on batching. Ranks: per data set, methods ordered by mean
accuracy (1 = best), ties sharing the mean of their ranks; the average rank is their mean over the data sets.
Deviation: the paper's tables also mark methods whose intervals overlap the best; ranks here use the means only.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch

from ..data.episodic import ClassSplit, Preprocess
from ..data.metadataset import MetaDatasetTaskConfig, metadataset_episodes
from .metrics import confidence_interval
from .result import EvalResult

__all__ = ["MetaDatasetProtocol", "evaluate_metadataset", "average_ranks", "ranks"]


@dataclass(frozen=True)
class MetaDatasetProtocol:
    dataset: str
    split: str
    episodes: int
    seed: int
    hierarchy: bool = True  # Omniglot's bi-level sampling, as Meta-Dataset evaluates it (other data sets: no effect)

    def sampler(self) -> MetaDatasetTaskConfig:
        """The paper's sampler settings (ways 5..50, 10 queries, support set <= 500, contributions <= 100)."""
        return MetaDatasetTaskConfig(source="metadataset", hierarchy=self.hierarchy)

    def to_dict(self) -> dict[str, Any]:
        s = self.sampler()
        keys = ("min_ways", "max_ways", "max_query", "max_support", "max_support_per_class")
        return {"name": "metadataset", **dataclasses.asdict(self), **{k: getattr(s, k) for k in keys}}


PredictFn = Callable[..., torch.Tensor]


def evaluate_metadataset(predict: PredictFn, split: ClassSplit, protocol: MetaDatasetProtocol,
                         preprocess: Preprocess | None = None, chunk: int = 10,
                         progress: Callable[[int], None] | None = None) -> EvalResult:
    """Accuracy ± 95% CI over the protocol's episodes of `split`, each through `predict(support_x, support_y,
    query_x, ways)` on its own (under torch.no_grad); also the mean ways, support and query sizes."""
    prep = preprocess or split.preprocess
    t0 = time.perf_counter()
    acc, ways, support, query = [], [], [], []
    cfg = protocol.sampler()
    for start in range(0, protocol.episodes, chunk):
        count = min(chunk, protocol.episodes - start)
        for ep in metadataset_episodes(split, cfg, protocol.seed, start, count):
            ep = ep.map_images(prep)
            with torch.no_grad():
                logits = predict(ep.support_x, ep.support_y, ep.query_x, ep.ways)
            acc.append(float((logits.argmax(-1) == ep.query_y).float().mean()) * 100.0)
            ways.append(ep.ways)
            support.append(ep.support_x.shape[1])
            query.append(ep.query_x.shape[1])
        if progress:
            progress(count)
    mean, ci = confidence_interval(torch.tensor(acc))
    p = protocol.to_dict()
    p.update(mean_ways=sum(ways) / len(ways), mean_support=sum(support) / len(support),
             mean_query=sum(query) / len(query))
    return EvalResult(p, mean, ci, {"accuracy": {"mean": mean, "ci95": ci}}, time.perf_counter() - t0,
                      per_episode_accuracy=acc)


def ranks(values: list[float]) -> list[float]:
    """Ranks of `values` (1 = highest), ties sharing the mean of the ranks they span."""
    order = sorted(range(len(values)), key=lambda i: -values[i])
    out = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            out[order[k]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return out


def average_ranks(table: list[list[float]]) -> list[float]:
    """Average rank of each method (column) over the data sets (rows) of mean accuracies."""
    if not table:
        return []
    per = [ranks(row) for row in table]
    return [sum(r[m] for r in per) / len(per) for m in range(len(table[0]))]
