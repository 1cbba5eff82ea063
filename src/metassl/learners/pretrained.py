"""The MAML paper's regression baseline, "pretrained on all tasks, then fine-tuned" (Finn et al. 2017, section 5.1:
"pretraining on all of the tasks, which entails training a network to regress to random sinusoid functions and
then, at test-time, fine-tuning with gradient descent on the K provided points").

Training: one network (encoder + linear head) fitted by plain regression to every point of every task of the batch
(support and query pooled, mean squared error): no inner loop, no meta-gradient. Since the tasks' functions differ
and the inputs carry no task identity, it learns their average. Evaluation: exactly MAML's, `eval_inner_steps` steps
of SGD with step `eval_inner_lr` (else `inner_lr`) on the K support points from the trained weights, then the
queries. Regression only (for classification the transfer baselines are `baseline` / `baseline_pp`). Deviation:
the paper tuned the fine-tuning step size; the preset uses MAML's 0.01 (set learner.eval_inner_lr to change it).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import option
from .base import LearnerSpec, LossOutput, register_learner, task_loss
from .inner import FixedStepConfig, GradientLearner


@dataclass
class PretrainedConfig(FixedStepConfig):
    name: str = "pretrained"
    inner_lr: float = option(0.01, range=(0.0, 100.0), help="fine-tuning step size at test time")
    head_init: str = option("linear", choices=("zero", "normal", "linear"), help="head init (nn.Linear's)")


class Pretrained(GradientLearner):
    regression_only = True  # a classifier of the base classes is `baseline`
    maps_tasks = False  # training is one pooled regression, not a per-task function (evaluation still maps tasks)

    def loss(self, params, buffers, tasks):
        if not tasks.query_y.is_floating_point():
            raise ValueError("learner pretrained regresses (real targets); for classification use learner.name="
                             "baseline or baseline_pp (a classifier of the base classes, then fine-tuning)")
        x = torch.cat([tasks.support_x, tasks.query_x], 1).flatten(0, 1)
        y = torch.cat([tasks.support_y, tasks.query_y], 1).flatten(0, 1)
        loss = task_loss(self.forward(params, buffers, x), y)  # one regression over every point of the batch
        return LossOutput(loss, {"loss": loss.detach(), "mse": loss.detach()})


register_learner(LearnerSpec("pretrained", PretrainedConfig, Pretrained,
                             "regression baseline: one network fitted to all tasks' points, fine-tuned at test time"))
