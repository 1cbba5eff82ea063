"""R2-D2, "ridge regression differentiable discriminator" (Bertinetto, Henriques, Torr & Vedaldi, "Meta-learning with
differentiable closed-form solvers", ICLR 2019).

Per task, the base learner is ridge regression from the support embeddings to one-hot labels, solved in closed
form and differentiated through (torch.linalg.solve): X = [Z_s, 1] (a column of ones for the bias), Y one-hot,

    W = X^T (X X^T + lam I_S)^-1 Y    (Woodbury, when S <= D + 1)    or    (X^T X + lam I_{D+1})^-1 X^T Y,

and the query logits are alpha (Z_q W_{1..D} + w_bias) + beta, with the scale alpha and offset beta ("adjust"
layer) and the regularizer lam meta-learned (`learner.scale`, `learner.bias`, `learner.lambda`). All tasks of a
batch are solved by one batched solve. As in the reference code (github.com/bertinetto/r2d2, fewshots/models/
r2d2.py), X and Y are divided by sqrt(S) before solving (`normalize`, equivalent to regularizing with lam * S); its
initial values are lam = 50, alpha = 10 for Omniglot (1e-4 for miniImageNet), beta = 0.

Deviations: the reference code keeps lam fixed unless asked (`learn_lambda` is false in its configuration) while
the paper meta-learns it; here `learn_lambda` defaults to true (the paper) and lam is used clamped at >= 1e-6 so a
learned value cannot make the system singular. Works for any number of ways and shots in evaluation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import LearnerConfig, option
from .base import Learner, query_loss, register_learner
from .heads import WOODBURY, r2d2_logits, r2d2_weights

SCALE, BIAS, LAMBDA = "learner.scale", "learner.bias", "learner.lambda"
LAMBDA_MIN = 1e-6


@dataclass
class R2D2Config(LearnerConfig):
    name: str = "r2d2"
    lambda_init: float = option(50.0, range=(1e-6, 1e6), help="ridge regularizer lambda (initial value when learned; "
                                "reference code: 50)")
    learn_lambda: bool = option(True, help="meta-learn lambda (the paper); false: fixed (the reference code's default)")
    scale_init: float = option(10.0, range=(-1e6, 1e6), help="initial output scale alpha (reference code: 10 for "
                               "Omniglot, 1e-4 for miniImageNet)")
    bias_init: float = option(0.0, range=(-1e6, 1e6), help="initial output offset beta")
    normalize: bool = option(True, help="divide X and Y by sqrt(support size) before solving, as the reference code "
                             "(= lambda * S)")
    woodbury: str = option("auto", choices=WOODBURY,
                           help="solve the S x S (Woodbury) or the (D+1) x (D+1) system; auto: the smaller")


def _scalar(value: float) -> torch.Tensor:
    return torch.tensor([float(value)])


@register_learner("r2d2", R2D2Config,
                  description="closed-form ridge regression on support embeddings, learned scale, bias and lambda")
class R2D2(Learner):
    def init_params(self, feature_dim, ways):
        c = self.config
        params = {SCALE: _scalar(c.scale_init), BIAS: _scalar(c.bias_init)}
        if c.learn_lambda:
            params[LAMBDA] = _scalar(c.lambda_init)
        return params

    def init_buffers(self, params, buffers):
        return {} if self.config.learn_lambda else {LAMBDA: _scalar(self.config.lambda_init)}

    def regularizer(self, params, buffers) -> torch.Tensor:
        lam = params[LAMBDA] if LAMBDA in params else buffers[LAMBDA]
        return lam.clamp_min(LAMBDA_MIN).reshape(())

    def weights(self, params, buffers, z_support, support_y, ways):
        """Ridge weights with bias row [T, D + 1, N] from support embeddings [T, S, D]."""
        c = self.config
        return r2d2_weights(z_support, support_y, ways, self.regularizer(params, buffers), c.normalize, c.woodbury)

    def logits_from_embeddings(self, params, z_query, weights):
        out = r2d2_logits(z_query, weights, params[SCALE].reshape(()), params[BIAS].reshape(()))
        return out.to(torch.promote_types(z_query.dtype, torch.float32))

    def adapt(self, params, buffers, support_x, support_y, ways):
        return self.weights(params, buffers, self.embed(params, buffers, support_x, per_task=True), support_y, ways)

    def classify(self, params, buffers, state, query_x):
        return self.logits_from_embeddings(params, self.embed(params, buffers, query_x, per_task=True), state)

    def loss(self, params, buffers, tasks):
        # support and query through the encoder in one call, as the reference code (shared BatchNorm statistics)
        s = tasks.support_x.shape[1]
        z = self.embed(params, buffers, torch.cat([tasks.support_x, tasks.query_x], 1), per_task=True)
        w = self.weights(params, buffers, z[:, :s], tasks.support_y, tasks.ways)
        out = query_loss(self.logits_from_embeddings(params, z[:, s:], w), tasks.query_y)
        out.metrics["lambda"] = self.regularizer(params, buffers).detach()
        return out
