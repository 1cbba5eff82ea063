"""Paired comparison of methods evaluated on the same fixed episodes.

Every method sees episode i of a protocol identically (`data.episodic.eval_episodes`), so per-episode accuracies of
two methods are paired samples: the difference of means is estimated from the per-episode differences, whose spread
is usually far smaller than either method's own (episode difficulty cancels). For each method against the first:
the mean paired difference in points, its 95% CI from Student's t with n - 1 degrees of freedom (the interval
excludes 0 exactly when the paired t-test's two-sided p < 0.05), the paired t-test (`scipy.stats.ttest_rel`) and the
Wilcoxon signed-rank test (`scipy.stats.wilcoxon`, zero differences dropped, as its default) p-values.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np

from .result import EvalResult

__all__ = ["PairedComparison", "paired_comparison", "compare_results", "same_episodes_key"]


@dataclass(frozen=True)
class PairedComparison:
    """Method B against method A on the same n episodes (differences B - A, in accuracy points)."""

    episodes: int
    mean_difference: float
    ci95: float  # half-width, Student's t
    t_statistic: float
    t_pvalue: float
    wilcoxon_statistic: float
    wilcoxon_pvalue: float
    wins: int  # episodes where B is more accurate than A
    losses: int
    ties: int

    def to_dict(self) -> dict:
        return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in asdict(self).items()}


def paired_comparison(a: Sequence[float], b: Sequence[float]) -> PairedComparison:
    """Paired statistics of per-episode accuracies `b` against `a` (same episodes, same order)."""
    from scipy import stats

    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"paired comparison needs per-episode values of the same episodes; got {x.shape} and "
                         f"{y.shape}")
    n = x.size
    if n < 2:
        raise ValueError(f"paired comparison needs at least 2 episodes, got {n}")
    d = y - x
    mean = float(d.mean())
    sd = float(d.std(ddof=1))
    if sd == 0.0:  # every episode differs by the same amount (e.g. both methods perfect): no spread to test
        t_stat = math.nan if mean == 0.0 else math.copysign(math.inf, mean)
        t_p = 1.0 if mean == 0.0 else 0.0
        half = 0.0
    else:
        r = stats.ttest_rel(y, x)
        t_stat, t_p = float(r.statistic), float(r.pvalue)
        half = float(stats.t.ppf(0.975, n - 1)) * sd / math.sqrt(n)
    if np.count_nonzero(d) == 0:
        w_stat, w_p = math.nan, 1.0  # all ties: no evidence of a difference
    else:
        w = stats.wilcoxon(y, x)
        w_stat, w_p = float(w.statistic), float(w.pvalue)
    return PairedComparison(n, mean, half, t_stat, t_p, w_stat, w_p, int((d > 0).sum()), int((d < 0).sum()),
                            int((d == 0).sum()))


def same_episodes_key(r: EvalResult) -> tuple:
    """What must be equal for two few-shot results to be paired: the data, the episode shape, count and seed."""
    p = r.protocol
    return tuple(p.get(k) for k in ("name", "dataset", "split", "ways", "shots", "queries", "episodes", "seed")) + \
        (p.get("unlabeled", 0), p.get("distractors", 0))  # semi-supervised episodes draw other support sets


def compare_results(results: Sequence[EvalResult]) -> list[PairedComparison | None]:
    """Each result against the first (None for the first itself); all must come from the same episodes."""
    if not results:
        raise ValueError("nothing to compare")
    base = results[0]
    for r in results[1:]:
        if same_episodes_key(r) != same_episodes_key(base):
            raise ValueError(f"results are not paired: protocol {r.protocol} differs from {base.protocol}; "
                             f"evaluate every run on the same episodes (dataset, split, ways, shots, queries, "
                             f"episodes, seed)")
        if len(r.per_episode_accuracy) != len(base.per_episode_accuracy):
            raise ValueError("results are not paired: they hold different numbers of per-episode accuracies")
    return [None] + [paired_comparison(base.per_episode_accuracy, r.per_episode_accuracy) for r in results[1:]]
