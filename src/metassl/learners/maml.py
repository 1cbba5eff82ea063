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
from .inner import FixedStepConfig, GradientLearner


@dataclass
class MAMLConfig(FixedStepConfig):
    name: str = "maml"


@dataclass
class FOMAMLConfig(FixedStepConfig):
    name: str = "fomaml"
    first_order: bool = option(True, choices=(True,), help="always true for fomaml (use learner.name=maml for "
                                                            "second order)")


class MAML(GradientLearner):
    """The whole network adapts; `first_order` from the config."""


register_learner(LearnerSpec("maml", MAMLConfig, MAML,
                             "model-agnostic meta-learning: the whole network adapts by gradient steps per task"))
register_learner(LearnerSpec("fomaml", FOMAMLConfig, MAML, "first-order MAML: MAML without second derivatives"))
