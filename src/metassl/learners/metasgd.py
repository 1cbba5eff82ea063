"""Meta-SGD (Li, Zhou, Chen & Li, 2017): MAML with a learned learning rate for every parameter element.

The inner update is phi = theta - alpha ∘ grad, where alpha has the shape of theta and is meta-learned together
with it (the tensors `learner.lr.<param name>`, created by `init_params`, initialized uniformly in
[lr_init_low, lr_init_high]: the paper draws them from [0.005, 0.1]). Training and evaluation use the same learned
rates; the paper adapts with one step in both. The meta-gradient is second order unless `first_order: true` (the
rates still get gradients then, through phi's dependence on alpha).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import ConfigError, option
from .base import LearnerSpec, register_learner
from .inner import GradientLearner, InnerLoopConfig

LR = "learner.lr."


@dataclass
class MetaSGDConfig(InnerLoopConfig):
    name: str = "metasgd"
    lr_init_low: float = option(0.005, range=(0.0, 100.0), help="learned rates start uniform in [low, high]")
    lr_init_high: float = option(0.1, range=(0.0, 100.0))

    def validate(self):
        if self.lr_init_high < self.lr_init_low:
            raise ConfigError(f"learner.lr_init_high ({self.lr_init_high}) must be >= learner.lr_init_low "
                              f"({self.lr_init_low})")


class MetaSGD(GradientLearner):
    def init_params(self, feature_dim, ways):
        params = super().init_params(feature_dim, ways)
        shapes = {f"encoder.{k}": v.shape for k, v in self.encoder.named_parameters()}
        shapes.update({k: v.shape for k, v in params.items()})
        lo, hi = self.config.lr_init_low, self.config.lr_init_high
        for k, shape in shapes.items():
            params[LR + k] = torch_uniform(shape, lo, hi)
        return params

    def step_sizes(self, params, train):
        return {k: params[LR + k] for k in self.adapted_names(params)}


def torch_uniform(shape, low: float, high: float) -> torch.Tensor:
    return torch.empty(shape).uniform_(low, high) if high > low else torch.full(shape, float(low))


register_learner(LearnerSpec("metasgd", MetaSGDConfig, MetaSGD,
                             "MAML with meta-learned per-parameter inner learning rates"))
