"""Evaluation: fixed few-shot episodes with 95% confidence intervals and per-episode metrics."""

from .episodes import EvalResult, Protocol, evaluate
from .metrics import confidence_interval, episode_metrics

__all__ = ["EvalResult", "Protocol", "evaluate", "confidence_interval", "episode_metrics"]
