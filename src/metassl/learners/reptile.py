"""Reptile (Nichol, Achiam & Schulman, "On First-Order Meta-Learning Algorithms", 2018), the batched version.

For each of the n tasks of a meta-batch, start from theta and take `inner_steps` steps on the task's support set,
giving phi_i; then move theta towards the mean of the phi_i:  theta <- theta + eps * mean_i (phi_i - theta).

How this runs in the shared engine: `loss` returns the surrogate

    S(theta) = mean_i sum_k < theta_k , stopgrad(theta_k - phi_ik) >,      grad S = theta - mean_i phi_i,

so one step of the engine's optimizer with plain SGD (optim.name=sgd, optim.momentum=0, no weight decay) and
learning rate eps gives exactly theta - eps * (theta - mean phi) = theta + eps * mean(phi_i - theta). The Reptile
presets use that, with eps = 1 annealed to 0 (the paper anneals linearly; our schedules offer cosine). Any other
optimizer treats (theta - mean phi) as a gradient: Adam on it is a common variant, but the update is then no longer
the interpolation above. The surrogate is linear in the per-task terms, so chunked meta-batches give the same update.

The inner loop is first order by nature (phi is treated as a constant). Its optimizer is Adam with beta1 = 0 as in
the paper's code (`inner_optimizer: adam`, lr 0.001) or plain SGD. The query set is not used by the update: the
logged loss and accuracy are those of phi_i on the task's queries (a free progress signal). Evaluation adapts on
each episode's support set with `eval_inner_steps` steps (the paper: 50) and classifies its queries.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..config import option
from .base import LearnerSpec, register_learner
from .inner import FixedStepConfig, GradientLearner, inner_loop


@dataclass
class ReptileConfig(FixedStepConfig):
    name: str = "reptile"
    inner_steps: int = option(5, range=(1, 10000), help="inner-loop steps per task in meta-training")
    eval_inner_steps: int | None = option(50, range=(1, 10000),
                                          help="inner-loop steps when evaluating; null: as inner_steps")
    inner_lr: float = option(0.001, range=(0.0, 100.0), help="inner-loop learning rate in meta-training")
    eval_inner_lr: float | None = option(None, range=(0.0, 100.0), help="inner learning rate in evaluation; "
                                                                         "null: inner_lr")
    first_order: bool = option(True, choices=(True,), help="Reptile is first order by nature")
    inner_optimizer: str = option("adam", choices=("adam", "sgd"),
                                  help="inner-loop optimizer: Adam with beta1=0 (the paper's code) or SGD")


class Reptile(GradientLearner):
    def __init__(self, config, encoder, options=None):
        super().__init__(config, encoder, options)
        self.inner_optimizer = config.inner_optimizer

    def task_objective(self, params, buffers, support_x, support_y, query_x, query_y):
        names = self.adapted_names(params)
        start = {k: v.detach() for k, v in params.items()}
        fast = inner_loop(self.forward, start, buffers, support_x, support_y, self.steps(True),
                          self.step_sizes(params, True), True, names, self.inner_optimizer)
        surrogate = sum((params[k] * (start[k] - fast[k].detach())).sum() for k in names)
        with torch.no_grad():
            logits = self.forward(fast, buffers, query_x)
            loss = F.cross_entropy(logits, query_y)
            acc = (logits.argmax(-1) == query_y).float().mean()
        return surrogate, loss, acc


register_learner(LearnerSpec("reptile", ReptileConfig, Reptile,
                             "first-order meta-learning: move the initialization towards task-adapted weights"))
