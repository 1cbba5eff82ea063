"""ANIL, "almost no inner loop" (Raghu, Raghu, Bengio & Vinyals, ICLR 2020).

MAML with the inner loop restricted to the linear head: the encoder (the "body") runs once per task on the support
set and once on the query set, outside the inner loop, and only the head takes `inner_steps` gradient steps on
the support features. The meta-gradient still reaches the encoder, through the features and (second order) through
the head's inner updates. BatchNorm uses each task's own batch statistics, as in MAML.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F

from .base import LearnerSpec, register_learner
from .inner import HEAD_B, HEAD_W, FixedStepConfig, GradientLearner, inner_loop


@dataclass
class ANILConfig(FixedStepConfig):
    name: str = "anil"


def _head_forward(params, buffers, z):
    return F.linear(z, params[HEAD_W], params[HEAD_B])


class ANIL(GradientLearner):
    def adapted_names(self, params):
        return [HEAD_W, HEAD_B]

    def adapt_one(self, params, buffers, support_x, support_y, train):
        # the body once, outside the inner loop; the inner loop sees features only
        z = self.embed_one(params, buffers, support_x)
        head = {HEAD_W: params[HEAD_W], HEAD_B: params[HEAD_B]}
        fast = inner_loop(_head_forward, head, {}, z, support_y, self.steps(train), self.step_sizes(params, train),
                          self.first_order or not train)
        return {**params, **fast}


register_learner(LearnerSpec("anil", ANILConfig, ANIL,
                             "MAML with the inner loop on the linear head only (the body runs once per task)"))
