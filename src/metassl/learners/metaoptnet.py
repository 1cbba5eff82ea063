"""MetaOptNet (Lee, Maji, Ravichandran & Soatto, "Meta-Learning with Differentiable Convex Optimization", CVPR 2019).

The base learner is a linear classifier fitted to each task's support embeddings by convex optimization, and the
encoder is meta-trained through its solution by implicit differentiation of the optimality conditions:

- `head: svm` (MetaOptNet-SVM, the paper's main head): the Crammer-Singer multi-class SVM, solved in its dual with the
  kernel K = Z_s Z_s^T (S x N variables: the cost grows with the support size, not the feature dimension), exactly the
  QP of the reference code (github.com/kjunelee/MetaOptNet, models/classification_heads.py, MetaOptNetHead_SVM_CS):
  C = `svm_c` (0.1), and `svm_dual_ridge` (1.0) added to the diagonal of the dual's kernel as the reference does.
  Solved by our batched interior-point method to the KKT tolerance `svm_tol` (see `heads.crammer_singer_dual`); the
  gradient comes from the KKT conditions, not from unrolling the solver. Query logits: scale * (w_m . z_q).
- `head: ridge` (MetaOptNet-RR): the reference's ridge-regression QP, 2 Z_q Z_s^T (K + lam I)^-1 Y with lam =
  `ridge_lambda` (50) fixed, no bias, times the scale.

`learner.scale` (init 1, the reference's) is meta-learned. Training loss: cross-entropy of the query logits, with the
reference's label smoothing (true class 1 - eps, others eps / (N - 1); `label_smoothing`, 0 = none; their
miniImageNet runs use 0.1).

The SVM's convergence is checked, never assumed: the natural KKT residual of every task is computed, logged in
training as `svm_residual` (worst task of the batch), and a residual above `svm_tol` raises or warns
(`on_nonconvergence`). Deviation: the reference stops its QP solver (qpth) after a fixed 15 iterations in training
and 3 at test time, whatever the accuracy; here the solver runs to tolerance (at most `svm_iters` iterations, float64
by default). Works for any number of ways and shots in evaluation.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..config import LearnerConfig, option
from .base import Learner, LossOutput, register_learner
from .heads import WOODBURY, SVMSolution, crammer_singer_dual, metaoptnet_ridge_weights, onehot, svm_weights

SCALE = "learner.scale"


class SVMConvergenceWarning(RuntimeWarning):
    """The SVM dual was not solved to `learner.svm_tol` within `learner.svm_iters` iterations."""


class SVMNotConvergedError(RuntimeError):
    """`on_nonconvergence: error` and the SVM dual was not solved to tolerance."""


@dataclass
class MetaOptNetConfig(LearnerConfig):
    name: str = "metaoptnet"
    head: str = option("svm", choices=("svm", "ridge"), help="Crammer-Singer SVM (MetaOptNet-SVM) or ridge regression "
                       "(MetaOptNet-RR)")
    svm_c: float = option(0.1, range=(1e-8, 1e6), help="SVM regularization C (reference code: 0.1)")
    svm_dual_ridge: float = option(1.0, range=(1e-8, 1e6), help="added to the diagonal of the SVM dual's kernel (the "
                                   "reference code adds 1.0); keeps the dual strongly convex")
    svm_iters: int = option(30, range=(1, 10000), help="interior-point iterations at most (reference: a fixed 15 in "
                            "training, 3 at test)")
    svm_tol: float = option(1e-6, range=(0.0, 1.0), help="KKT (natural) residual the SVM dual must reach, in label "
                            "units")
    svm_double: bool = option(True, help="solve the SVM dual in float64 (float32 may not reach a small svm_tol)")
    on_nonconvergence: str = option("warn", choices=("warn", "error"),
                                    help="what an SVM not solved to svm_tol within svm_iters does")
    ridge_lambda: float = option(50.0, range=(1e-8, 1e8), help="ridge head's regularizer (reference code: 50)")
    woodbury: str = option("auto", choices=WOODBURY, help="ridge head: S x S (dual, the reference) or D x D system; "
                           "auto: the smaller (same solution)")
    scale_init: float = option(1.0, range=(-1e6, 1e6), help="initial logit scale (reference code: 1)")
    label_smoothing: float = option(0.0, range=(0.0, 0.999), help="training targets: 1 - eps on the true class, "
                                    "eps / (N - 1) on the others (reference: 0.1 on miniImageNet)")


def smoothed_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, eps: float) -> torch.Tensor:
    """Mean over queries of -sum_m t_m log softmax(logits)_m with t = 1 - eps on the label, eps / (N - 1) elsewhere
    (the reference code's smoothing); eps = 0 is plain cross-entropy. logits [..., N], labels [...]."""
    n = logits.shape[-1]
    logp = F.log_softmax(logits.reshape(-1, n), -1)
    if eps == 0:
        return F.nll_loss(logp, labels.reshape(-1))
    t = onehot(labels.reshape(1, -1), n, logp.dtype)[0]
    t = t * (1 - eps) + (1 - t) * eps / (n - 1)
    return -(t * logp).sum(-1).mean()


@register_learner("metaoptnet", MetaOptNetConfig,
                  description="linear SVM (or ridge) fitted per task by differentiable convex optimization")
class MetaOptNet(Learner):
    def init_params(self, feature_dim, ways):
        return {SCALE: torch.tensor([float(self.config.scale_init)])}

    # -- the head on embeddings --------------------------------------------------------------------------------
    def solve(self, z_support: torch.Tensor, support_y: torch.Tensor, ways: int
              ) -> tuple[torch.Tensor, SVMSolution | None]:
        """Primal weights [T, D, N] of each task's linear classifier (ridge: including its factor 2), and the SVM
        solution (None for ridge). Checks the SVM's convergence (warns or raises)."""
        c = self.config
        if c.head == "ridge":
            return metaoptnet_ridge_weights(z_support, support_y, ways, c.ridge_lambda, c.woodbury), None
        sol = crammer_singer_dual(z_support, support_y, ways, c.svm_c, c.svm_dual_ridge, c.svm_iters, c.svm_tol,
                                  c.svm_double)
        self.check_convergence(sol)
        return svm_weights(z_support, sol.alpha), sol

    def check_convergence(self, sol: SVMSolution) -> None:
        if sol.converged:
            return
        c = self.config
        worst = sol.max_residual
        msg = (f"metaoptnet: the SVM dual was not solved to tolerance within learner.svm_iters={c.svm_iters} "
               f"interior-point iterations: KKT residual {worst:.1e} > learner.svm_tol={c.svm_tol:g} (worst of "
               f"{sol.residual.numel()} tasks); raise learner.svm_iters, loosen learner.svm_tol, keep "
               f"learner.svm_double=true, or lower learner.svm_c / raise learner.svm_dual_ridge (a better-conditioned "
               f"dual)")
        if c.on_nonconvergence == "error":
            raise SVMNotConvergedError(msg)
        warnings.warn(msg, SVMConvergenceWarning, stacklevel=3)

    def logits_from_embeddings(self, params, z_query: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        out = params[SCALE].reshape(()).to(weights.dtype) * (z_query.to(weights.dtype) @ weights)
        return out.to(torch.promote_types(z_query.dtype, torch.float32))

    # -- the Learner contract -----------------------------------------------------------------------------------
    def adapt(self, params, buffers, support_x, support_y, ways):
        return self.solve(self.embed(params, buffers, support_x, per_task=True), support_y, ways)[0]

    def classify(self, params, buffers, state, query_x):
        return self.logits_from_embeddings(params, self.embed(params, buffers, query_x, per_task=True), state)

    def loss(self, params, buffers, tasks):
        # support and query embedded in separate calls, as the reference code
        zs = self.embed(params, buffers, tasks.support_x, per_task=True)
        zq = self.embed(params, buffers, tasks.query_x, per_task=True)
        w, sol = self.solve(zs, tasks.support_y, tasks.ways)
        logits = self.logits_from_embeddings(params, zq, w)
        loss = smoothed_cross_entropy(logits, tasks.query_y, self.config.label_smoothing)
        acc = (logits.argmax(-1) == tasks.query_y).float().mean()
        metrics = {"loss": loss.detach(), "accuracy": acc.detach()}
        if sol is not None:
            metrics["svm_residual"] = sol.residual.max().detach().float()
            metrics["svm_iterations"] = torch.tensor(float(sol.iterations), device=loss.device)
        return LossOutput(loss, metrics)
