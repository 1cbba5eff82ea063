"""The one result type of every evaluation protocol: few-shot episodes, kNN and the linear probe."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

__all__ = ["EvalResult"]


@dataclass
class EvalResult:
    """What one protocol measured.

    `protocol` names the protocol and everything needed to repeat it: `{"name": "fewshot", "dataset", "split",
    "ways", "shots", "queries", "episodes", "seed"}`, `{"name": "regression", ...}` (few-shot regression,
    `eval/regression.py`: accuracy nan, metrics mse / mae / r2), or `{"name": "knn" | "linear", ...}` with the settings, splits
    and subset sizes; a transductive few-shot result adds `transductive` (the method), `transductive_options`,
    `query_set_size` and `query_balance`, since its accuracy depends on the query set.
    `ci95` is nan where no confidence interval is defined (kNN, linear probe: one number over the
    test set). `metrics` holds the other measurements, each `{"mean", "ci95"}` (few-shot: accuracy in percent and
    precision / recall / F1 / ROC-AUC as fractions; linear probe: `train_accuracy` in percent)."""

    protocol: dict[str, Any]
    accuracy: float  # percent
    ci95: float = math.nan  # percent, half-width
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    seconds: float = 0.0
    confusion: list[list[float]] = field(default_factory=list)  # few-shot: summed over episodes, [true][predicted]
    per_class_accuracy: list[float] = field(default_factory=list)  # kNN: percent per class (nan: no test image)
    per_episode_accuracy: list[float] = field(default_factory=list)  # few-shot: percent per episode

    @property
    def name(self) -> str:
        return str(self.protocol.get("name", ""))

    @property
    def tag(self) -> str:
        """`5w1s` for a few-shot protocol (the key of `eval.paper`), else the protocol's name."""
        p = self.protocol
        if self.name == "regression":  # `k10_1step`: K and the evaluation inner steps (eval/regression.py)
            steps = p.get("inner_steps")
            return f"k{p['shots']}" + ("" if steps is None else f"_{steps}step{'s' if steps != 1 else ''}")
        return f"{p['ways']}w{p['shots']}s" if self.name == "fewshot" else self.name

    def to_dict(self, per_episode: bool = False) -> dict[str, Any]:
        """JSON-ready: the protocol, accuracy and ci95, each other metric's mean under its own name (plus all of
        them with their CIs under `metrics`), `top1` (a fraction) for the frozen-encoder protocols, the per-class
        accuracies where measured, and the seconds. Values that are not defined (nan) become None (JSON null).
        The confusion matrix stays on the object; the per-episode accuracies (percent, in episode order: what a
        paired comparison of methods needs) are included with `per_episode`."""
        d: dict[str, Any] = {"protocol": dict(self.protocol), "accuracy": self.accuracy, "ci95": self.ci95,
                             **{k: v["mean"] for k, v in self.metrics.items() if k != "accuracy"},
                             "metrics": self.metrics}
        if self.name not in ("fewshot", "regression"):
            d["top1"] = self.accuracy / 100.0
        if self.per_class_accuracy:
            d["per_class_accuracy"] = self.per_class_accuracy
        if per_episode and self.per_episode_accuracy:
            d["per_episode_accuracy"] = self.per_episode_accuracy
        d["seconds"] = round(self.seconds, 3)
        return _defined(d)

    def line(self) -> str:
        """One line for people: the protocol, then the accuracy (± CI where defined) and the main other metrics."""
        p, m = self.protocol, self.metrics
        if self.name == "fewshot":
            how = ""
            if p.get("transductive"):  # transductive accuracy depends on the query set: say which one
                how = (f", transductive {p['transductive']} on query sets of {p.get('query_set_size', '?')} images, "
                       f"{p.get('query_balance', 'balance not recorded')}")
            if p.get("unlabeled") or p.get("distractors"):
                how += (f", {p.get('unlabeled', 0)} unlabeled images per class and {p.get('distractors', 0)} "
                        f"distractor classes per episode")
            return (f"{p['dataset']}/{p['split']} {p['ways']}-way {p['shots']}-shot ({p['episodes']} episodes, "
                    f"{p['queries']} queries, seed {p['seed']}{how}): accuracy {self.accuracy:.2f} ± "
                    f"{self.ci95:.2f}%  F1 {m['f1']['mean']:.3f}  ROC-AUC {m['roc_auc']['mean']:.3f}")
        if self.name == "metadataset":  # variable-way variable-shot episodes (eval/metadataset.py)
            return (f"{p['dataset']}/{p['split']} Meta-Dataset episodes ({p['episodes']} episodes, ways "
                    f"{p['min_ways']}-{p['max_ways']} (mean {p.get('mean_ways', float('nan')):.1f}), mean support "
                    f"{p.get('mean_support', float('nan')):.0f} / query {p.get('mean_query', float('nan')):.0f} "
                    f"images, seed {p['seed']}): accuracy {self.accuracy:.2f} ± {self.ci95:.2f}%")
        if self.name == "regression":  # few-shot regression: errors on the query points of fixed tasks
            steps = "" if p.get("inner_steps") is None else f", {p['inner_steps']} inner step{'s' if p['inner_steps'] != 1 else ''}"
            return (f"{p['dataset']}/{p['split']} {p['shots']}-shot regression ({p['episodes']} tasks, "
                    f"{p['queries']} query points, seed {p['seed']}{steps}): MSE {m['mse']['mean']:.4f} ± "
                    f"{m['mse']['ci95']:.4f}  MAE {m['mae']['mean']:.4f} ± {m['mae']['ci95']:.4f}  "
                    f"R² {m['r2']['mean']:.3f}")
        if self.name == "knn":
            return (f"{p['dataset']} kNN (k={p['k']}, T={p['temperature']}, cosine; memory bank {p['train_split']} "
                    f"{p['train_size']} images, queries {p['test_split']} {p['test_size']}): "
                    f"top-1 {self.accuracy:.2f}%")
        if self.name == "linear":
            return (f"{p['dataset']} linear probe (L-BFGS logistic regression on frozen standardized features, "
                    f"weight decay {p['weight_decay']}; train {p['train_split']} {p['train_size']} images, test "
                    f"{p['test_split']} {p['test_size']}): top-1 {self.accuracy:.2f}% "
                    f"(train {m['train_accuracy']['mean']:.2f}%)")
        ci = "" if math.isnan(self.ci95) else f" ± {self.ci95:.2f}"
        return f"{self.name or 'evaluation'} {p}: accuracy {self.accuracy:.2f}{ci}%"


def _defined(v: Any) -> Any:
    """`v` with every nan float replaced by None, through dicts and lists."""
    if isinstance(v, float):
        return None if math.isnan(v) else v
    if isinstance(v, dict):
        return {k: _defined(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_defined(x) for x in v]
    return v
