"""BOIL, "body only update in inner loop" (Oh, Yoo, Kim & Yun, "BOIL: Towards Representation Change for Few-shot
Learning", ICLR 2021).

MAML with the inner loop restricted to the encoder (the "body"): per task, every encoder tensor (convolutions and
BatchNorm affine parameters) takes `inner_steps` gradient steps of size `inner_lr` on the support cross-entropy,
while the linear head (`learner.head.*`) stays frozen at its meta-learned value; the meta-gradient (second order
unless `first_order: true`) reaches the head through the query loss and the inner steps, so the head is still
meta-learned in the outer loop. The opposite of ANIL (head only). BatchNorm uses each batch's own statistics.

The authors' code (github.com/jhoon-oh/BOIL, on torchmeta) gives the head step size 0 and the body step size 0.5,
one inner step, Adam 1e-3, 4 tasks per meta-batch, a 4-conv network with 64 filters and max-pooling, and
torchmeta's `MetaLinear` head (nn.Linear's initialization); these are the defaults here. Deviation: none in what is
computed. A zero head (`head_init: zero`, the MAML zeroing trick) is not offered: with all logits equal the body's
inner gradient W^T (p - y) is zero, so the inner loop could not move at all.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..config import option
from .base import ENCODER, register_learner
from .inner import FixedStepConfig, GradientLearner


@dataclass
class BOILConfig(FixedStepConfig):
    name: str = "boil"
    inner_lr: float = option(0.5, range=(0.0, 100.0), help="inner-loop step size of the body (the paper: 0.5)")
    head_init: str = option("linear", choices=("linear", "normal"),
                            help="classifier head init: nn.Linear's (the authors' code) or N(0,1); not zero: a "
                                 "zero head gives the body no inner gradient")


def body_names(params) -> list[str]:
    """The names BOIL's inner loop updates: every encoder tensor, never the head."""
    return [k for k in params if k.startswith(ENCODER)]


@register_learner("boil", BOILConfig,
                  description="MAML with the inner loop on the body only; the head is frozen per task, meta-learned")
class BOIL(GradientLearner):
    def adapted_names(self, params):
        return body_names(params)
