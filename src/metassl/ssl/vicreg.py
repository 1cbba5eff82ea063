"""VICReg (Bardes, Ponce & LeCun, "VICReg: Variance-Invariance-Covariance Regularization for Self-Supervised
Learning", ICLR 2022).

Expander (3 linear layers of 8192 in the paper) outputs Z, Z' of the two views; L = lambda s(Z, Z') + mu [v(Z) +
v(Z')] / 2 + nu [c(Z) + c(Z')] with the invariance s = MSE, the variance hinge v = mean_j relu(1 - std(z_j)) and the
covariance c = sum of squared off-diagonal covariances / D; lambda = mu = 25, nu = 1 (see `losses.vicreg_loss`).
The / 2 is the authors' released code (variance_form: code, the default); variance_form: paper drops it, as the
paper writes the loss.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..config import option
from ..learners.base import LearnerSpec, register_learner
from .base import SSLConfig, SSLLearner, fp32
from .losses import vicreg_loss


@dataclass
class VICRegConfig(SSLConfig):
    name: str = "vicreg"
    sim_weight: float = option(25.0, range=(0.0, None), help="lambda: invariance (MSE) weight")
    var_weight: float = option(25.0, range=(0.0, None), help="mu: variance hinge weight")
    cov_weight: float = option(1.0, range=(0.0, None), help="nu: covariance weight")
    variance_form: str = option("code", choices=("code", "paper"), help="code: mu [v(Z) + v(Z')] / 2 as the "
                                "authors' released code; paper: mu [v(Z) + v(Z')] as the paper")
    proj_hidden: int = option(8192, range=(1, None))
    proj_dim: int = option(8192, range=(1, None))
    proj_layers: int = option(3, range=(1, 8))


class VICReg(SSLLearner):
    min_batch_reason = "the variance and covariance terms are statistics over the batch"

    def loss(self, params, buffers, batch):
        (z,) = self.project_views(params, buffers, batch)
        c = self.config
        with fp32(z):
            loss, terms = vicreg_loss(z[0], z[1], c.sim_weight, c.var_weight, c.cov_weight,
                                      variance_form=c.variance_form)
        return self.output(loss, terms, z[0])


register_learner(LearnerSpec(
    "vicreg", VICRegConfig, VICReg,
    "variance-invariance-covariance regularization of the two views' expander outputs",
    default_source="views"))
