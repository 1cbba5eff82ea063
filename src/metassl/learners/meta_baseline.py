"""Meta-Baseline (Chen, Liu, Xu, Darrell & Wang, "Meta-Baseline: Exploring Simple Meta-Learning for Few-Shot
Learning", ICCV 2021; arXiv:2003.04390).

Two stages. Stage 1 (Classifier-Baseline) is a classifier over the base classes: here a `baseline`, `baseline_pp`
or `simpleshot` run. Stage 2 is this learner: its encoder starts from the stage-1 run (`init_from=RUN`, required;
only `encoder.*` tensors are copied) and is meta-trained on labelled N-way K-shot episodes: prototypes are the class
means of the support features, and the logits of a query are
    tau * cos(f(q), p_c),
with tau a learned temperature (`learner.temperature`, initialized to 10 as the authors' code,
github.com/yinboc/few-shot-meta-baseline models/meta_baseline.py: `temp=10., temp_learnable=True`), and the loss is
the cross-entropy of the queries. Support and query images of all episodes of a batch go through the encoder in one
call, as the reference code. Evaluation uses the same prototype classifier, for any number of ways.
`learn_temperature: false` keeps tau fixed (a `learner.temperature` buffer instead of a parameter).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..config import ConfigError, LearnerConfig, option
from ..data.episodic import TaskBatch
from .base import Learner, LossOutput, query_loss, register_learner
from .protonet import prototypes

TEMPERATURE = "learner.temperature"

__all__ = ["MetaBaselineConfig", "MetaBaseline", "cosine_prototype_logits", "TEMPERATURE"]


@dataclass
class MetaBaselineConfig(LearnerConfig):
    name: str = "meta_baseline"
    temperature: float = option(10.0, range=(1e-6, 1e6), help="initial value of the temperature tau that scales "
                                                              "the cosine logits (the authors' code: 10)")
    learn_temperature: bool = option(True, help="tau is learned with the encoder (the paper); false: fixed")


def cosine_prototype_logits(queries: torch.Tensor, protos: torch.Tensor, tau: torch.Tensor | float
                            ) -> torch.Tensor:
    """tau * cos(q, p): queries [T, Q, D], prototypes [T, N, D] -> [T, Q, N]."""
    return tau * (F.normalize(queries, dim=-1) @ F.normalize(protos, dim=-1).transpose(1, 2))


@register_learner("meta_baseline", MetaBaselineConfig, needs_init_from=True,
                  init_from_learners=("baseline", "baseline_pp", "simpleshot"),
                  description="episodes on a pre-trained classifier's encoder: tau * cosine to class means, "
                              "learned tau (init_from a baseline run)")
class MetaBaseline(Learner):
    def init_params(self, feature_dim, ways):
        if not self.config.learn_temperature:
            return {}
        return {TEMPERATURE: torch.tensor(float(self.config.temperature))}

    def init_buffers(self, params, buffers):
        if self.config.learn_temperature:
            return {}
        return {TEMPERATURE: torch.tensor(float(self.config.temperature))}

    @staticmethod
    def tau(params, buffers) -> torch.Tensor:
        return params[TEMPERATURE] if TEMPERATURE in params else buffers[TEMPERATURE]

    def adapt(self, params, buffers, support_x, support_y, ways):
        return prototypes(self.embed(params, buffers, support_x, per_task=True), support_y, ways)

    def classify(self, params, buffers, state, query_x):
        z = self.embed(params, buffers, query_x, per_task=True)
        return cosine_prototype_logits(z, state, self.tau(params, buffers).to(z.dtype))

    def loss(self, params, buffers, tasks):
        if not isinstance(tasks, TaskBatch) or tasks.ways is None:
            raise ConfigError(f"learner meta_baseline meta-trains on labelled N-way K-shot episodes, but got a "
                              f"{type(tasks).__name__}; set tasks.source=labeled (or auto)")
        s = tasks.support_x.shape[1]
        z = self.embed(params, buffers, torch.cat([tasks.support_x, tasks.query_x], 1))
        tau = self.tau(params, buffers)
        logits = cosine_prototype_logits(z[:, s:], prototypes(z[:, :s], tasks.support_y, tasks.ways), tau.to(z.dtype))
        out = query_loss(logits, tasks.query_y)
        return LossOutput(out.loss, {**out.metrics, "temperature": tau.detach().float()})
