"""Evaluation: fixed few-shot episodes with 95% confidence intervals and per-episode metrics (`episodes`), the
frozen-encoder protocols kNN (`knn`) and linear probe (`linear`) on features from `features.embed_images`, and the
one result type of all three (`result.EvalResult`)."""

from .episodes import Protocol, evaluate
from .features import embed_images
from .metrics import confidence_interval, episode_metrics
from .result import EvalResult

__all__ = ["EvalResult", "Protocol", "evaluate", "embed_images", "confidence_interval", "episode_metrics"]
