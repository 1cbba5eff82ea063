"""MAML (Finn, Abbeel & Levine, ICML 2017) and first-order MAML.

Per task, the whole network (encoder and linear head) takes `inner_steps` gradient steps of size `inner_lr` on the
support cross-entropy; the meta-objective is the query cross-entropy of the adapted network, averaged over the
tasks of a meta-batch, differentiated through the inner steps (second order) or, with `first_order: true` (the
paper's "first-order approximation"; also registered as `learner.name: fomaml`), with the inner gradients treated as
constants. Evaluation adapts on each episode's support set with `eval_inner_steps` steps of `eval_inner_lr` (the
paper: 1 step of 0.4 in training and 3 in evaluation for Omniglot 5-way; 5 steps of 0.1 for 20-way).

The head is fixed at `tasks.ways` outputs, so evaluation must use the same number of ways (a clear error
otherwise). BatchNorm uses the statistics of the batch it is given (support set, then query set), as in the paper.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..config import option
from .base import LearnerSpec, register_learner
from .inner import GradientLearner, InnerLoopConfig


@dataclass
class MAMLConfig(InnerLoopConfig):
    name: str = "maml"
    inner_lr: float = option(0.4, range=(0.0, 100.0), help="inner-loop step size in meta-training (alpha)")
    eval_inner_lr: float | None = option(None, range=(0.0, 100.0), help="step size in evaluation; null: inner_lr")
    first_order: bool = option(False, help="first-order MAML: do not differentiate through the inner gradients")


@dataclass
class FOMAMLConfig(InnerLoopConfig):
    name: str = "fomaml"
    inner_lr: float = option(0.4, range=(0.0, 100.0), help="inner-loop step size in meta-training (alpha)")
    eval_inner_lr: float | None = option(None, range=(0.0, 100.0), help="step size in evaluation; null: inner_lr")
    first_order: bool = option(True, choices=(True,), help="always true for fomaml (use learner.name=maml for "
                                                            "second order)")


class MAML(GradientLearner):
    def __init__(self, config, encoder):
        super().__init__(config, encoder)
        self.first_order = bool(config.first_order)


register_learner(LearnerSpec("maml", MAMLConfig, lambda cfg, enc: MAML(cfg, enc),
                             "model-agnostic meta-learning: the whole network adapts by gradient steps per task",
                             "Finn et al., Model-Agnostic Meta-Learning for Fast Adaptation of Deep Networks, ICML 2017"))
register_learner(LearnerSpec("fomaml", FOMAMLConfig, lambda cfg, enc: MAML(cfg, enc),
                             "first-order MAML: MAML without second derivatives",
                             "Finn et al. 2017 (first-order approximation); Nichol et al. 2018"))
