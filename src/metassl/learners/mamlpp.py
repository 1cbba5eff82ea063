"""MAML++ (Antoniou, Edwards & Storkey, "How to train your MAML", ICLR 2019).

MAML (encoder and linear head adapt per task by `inner_steps` gradient steps on the support cross-entropy) with the
paper's five changes, following its reference code (github.com/AntreasAntoniou/HowToTrainYourMAMLPytorch,
`few_shot_learning_system.py`, `inner_loop_optimizers.py`, `meta_neural_network_architectures.py`):

- BNWB, per-step BatchNorm weights and biases: inner step s (its support forward, and the query forward after it)
  uses its own copy of every BatchNorm weight and bias. Copies for steps 0 .. S-2 are the tensors
  `learner.bn.<s>.<encoder name>` (initialized from the encoder's BatchNorm, i.e. ones and zeros); the last step's
  copy is the encoder's own BatchNorm tensors, so the network after the final step, `embed` and an exported encoder
  all use the final-step weights. As in the reference code (`enable_inner_loop_optimizable_bn_params: false`) the
  BatchNorm tensors are meta-learned, not adapted in the inner loop.
- LSLR: a learned step size per adapted tensor and per step, `learner.lr.<name>` of shape [inner_steps],
  initialized at `inner_lr`; step s updates phi <- phi - lr[s] * grad.
- MSL, multi-step loss: for the first `msl_epochs` epochs the meta-objective is sum_s w_s L_query(after step s)
  with the weights of the reference's `get_per_step_loss_importance_vector` (`msl_weights` below: uniform 1/S at
  epoch 0; each non-final weight decays by epoch / (S * msl_epochs) to at least 0.03 / S, the final one grows
  to at most 1 - (S - 1) 0.03 / S); afterwards only the last step's query loss counts.
- DA, derivative-order annealing: the meta-gradient is first order while epoch < `first_order_epochs`, second
  order afterwards (`first_order: true`: always first order).
- CA, cosine annealing of the meta learning rate: the engine's `optim.schedule: cosine` (the presets use it).

Epochs are `iterations_per_epoch` optimizer steps (500 in the paper); the step count is the buffer `learner.step`
(0-d int64), advanced by `update` and saved in checkpoints, so a resumed run continues the schedules exactly.
Evaluation adapts with `eval_inner_steps` (<= inner_steps; default inner_steps, the paper: 5 and 5) steps of the
learned rates and classifies with the weights after the last of them.

Deviations: BatchNorm always normalizes with the statistics of the batch it is given (support set, then query set)
and keeps no per-step running statistics (BNRS): the reference collects them but normalizes with batch statistics
too (`F.batch_norm(..., training=True)`), so nothing computed differs. The reference keeps one rate more than it
uses per tensor ([S + 1]); here [S]. Its cosine schedule steps per epoch down to 1e-5, the engine's per step down
to 0. Its network uses leaky ReLU and Xavier-initialized layers; this project's Conv4 uses ReLU and PyTorch's init.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import ConfigError, option
from .base import BATCH_NORMS, ENCODER, register_learner, task_loss
from .inner import HEAD_B, HEAD_W, BatchStatNorm, GradientLearner, InnerLoopConfig, inner_loop, map_tasks, score

LR = "learner.lr."  # + adapted name: [inner_steps] learned step sizes
BN = "learner.bn."  # + "<step>." + encoder BatchNorm name: that step's weight / bias
STEP = "learner.step"  # optimizer steps taken (0-d int64 buffer)


@dataclass
class MAMLppConfig(InnerLoopConfig):
    name: str = "mamlpp"
    inner_steps: int = option(5, range=(1, 10000), help="inner-loop steps in meta-training (the paper: 5)")
    inner_lr: float = option(0.1, range=(0.0, 100.0),
                             help="initial value of every learned per-layer per-step step size (the paper: 0.1)")
    head_init: str = option("linear", choices=("zero", "normal", "linear"),
                            help="classifier head init: zeros, N(0,1), or nn.Linear's")
    msl_epochs: int = option(10, range=(0, 1000000),
                             help="epochs with the multi-step loss (annealed to the last step); 0: last step only")
    first_order_epochs: int = option(0, range=(0, 1000000),
                                     help="epochs with a first-order meta-gradient before second order (the "
                                          "reference's Omniglot configs: 0)")
    iterations_per_epoch: int = option(500, range=(1, None), help="optimizer steps per epoch (the paper: 500)")

    def validate(self):
        if self.eval_inner_steps is not None and self.eval_inner_steps > self.inner_steps:
            raise ConfigError(
                f"learner.eval_inner_steps ({self.eval_inner_steps}) must be <= learner.inner_steps "
                f"({self.inner_steps}): MAML++ learns step sizes and BatchNorm weights for each of the inner_steps "
                f"steps only; set learner.eval_inner_steps={self.inner_steps} (or null) or train with more steps")


def msl_weights(steps: int, epoch: int, msl_epochs: int) -> list[float]:
    """The multi-step loss weights of the query losses after steps 0..steps-1 at `epoch` (the reference's
    `get_per_step_loss_importance_vector`): uniform at epoch 0, annealed towards the last step."""
    w = [1.0 / steps] * steps
    decay = 1.0 / steps / msl_epochs
    floor = 0.03 / steps
    for i in range(steps - 1):
        w[i] = max(w[i] - epoch * decay, floor)
    w[-1] = min(w[-1] + epoch * (steps - 1) * decay, 1.0 - (steps - 1) * floor)
    return w


def batchnorm_names(encoder: torch.nn.Module) -> list[str]:
    """`encoder.*` names of the affine weights and biases of every BatchNorm in the encoder."""
    out = []
    for name, m in encoder.named_modules():
        if isinstance(m, (BatchStatNorm, *BATCH_NORMS)) and getattr(m, "weight", None) is not None:
            prefix = f"{ENCODER}{name}." if name else ENCODER
            out += [prefix + "weight", prefix + "bias"]
    return out


@register_learner("mamlpp", MAMLppConfig,
                  description="MAML++: per-step BatchNorm weights, learned per-layer per-step rates, multi-step "
                              "loss, derivative-order annealing")
class MAMLpp(GradientLearner):
    def __init__(self, config, encoder, options=None):
        super().__init__(config, encoder, options)
        self.bn_names = batchnorm_names(encoder)

    # -- tensors ------------------------------------------------------------------------------------------------
    def init_params(self, feature_dim, ways):
        params = super().init_params(feature_dim, ways)  # the head
        encoder = {f"{ENCODER}{k}": v for k, v in self.encoder.named_parameters()}
        steps = self.config.inner_steps
        for s in range(steps - 1):  # the last step uses the encoder's own BatchNorm tensors
            for k in self.bn_names:
                params[f"{BN}{s}.{k}"] = encoder[k].detach().clone()
        for k in self.adapted_names({**encoder, **params}):
            params[LR + k] = torch.full((steps,), float(self.config.inner_lr))
        return params

    def init_buffers(self, params, buffers):
        return {STEP: torch.zeros((), dtype=torch.int64)}

    def update(self, params, buffers, state, step, total_steps):
        return {STEP: buffers[STEP] + 1}

    def adapted_names(self, params):
        """The inner loop updates the encoder (not its BatchNorm tensors, which are per step) and the head."""
        bn = set(self.bn_names)
        return [k for k in params if (k.startswith(ENCODER) and k not in bn) or k in (HEAD_W, HEAD_B)]

    def bn_view(self, params, step: int):
        """params with the encoder's BatchNorm tensors replaced by inner step `step`'s copy."""
        if step >= self.config.inner_steps - 1:
            return params
        return {**params, **{k: params[f"{BN}{step}.{k}"] for k in self.bn_names}}

    # -- schedules ----------------------------------------------------------------------------------------------
    def schedule(self, step: int) -> tuple[list[float] | None, bool]:
        """(MSL weights, or None for the last step's loss only; first order?) at optimizer step `step`."""
        c = self.config
        epoch = step // c.iterations_per_epoch
        weights = msl_weights(c.inner_steps, epoch, c.msl_epochs) if epoch < c.msl_epochs else None
        return weights, bool(c.first_order or epoch < c.first_order_epochs)

    # -- one task -----------------------------------------------------------------------------------------------
    def adapt_steps(self, params, buffers, support_x, support_y, steps: int, first_order: bool) -> list:
        """The params after each inner step s = 0..steps-1 (with step s's BatchNorm copy): step s takes one gradient
        step with the rates lr[s] on the support loss of the network with step s's BatchNorm tensors."""
        names = self.adapted_names(params)
        fast = {k: params[k] for k in names}
        out = []
        for s in range(steps):
            view = {**self.bn_view(params, s), **fast}
            new = inner_loop(self.forward, view, buffers, support_x, support_y, 1,
                             {k: params[LR + k][s] for k in names}, first_order, names)
            fast = {k: new[k] for k in names}
            out.append({**view, **fast})
        return out

    def adapt_one(self, params, buffers, support_x, support_y, train):
        """All params after the inner loop (training steps or evaluation steps); the training objective itself
        (`task_objective_at`) takes the derivative order from the schedule."""
        first_order = self.first_order or not train
        return self.adapt_steps(params, buffers, support_x, support_y, self.steps(train), first_order)[-1]

    def task_objective_at(self, weights: list[float] | None, first_order: bool):
        def objective(params, buffers, support_x, support_y, query_x, query_y):
            after = self.adapt_steps(params, buffers, support_x, support_y, self.config.inner_steps, first_order)
            logits = self.forward(after[-1], buffers, query_x)
            last = task_loss(logits, query_y)
            if weights is None:
                obj = last
            else:  # the multi-step loss: the query loss after every step, weighted
                obj = weights[-1] * last
                for s in range(len(after) - 1):
                    obj = obj + weights[s] * task_loss(self.forward(after[s], buffers, query_x), query_y)
            return obj, last.detach(), score(logits, query_y, last)

        return objective

    # -- the Learner contract -----------------------------------------------------------------------------------
    def batch_objective(self, buffers, tasks):
        weights, first_order = self.schedule(int(buffers[STEP]))  # one host read per call
        return self.task_objective_at(weights, first_order)

    def adapt(self, params, buffers, support_x, support_y, ways):
        """Per task: the fast weights and the BatchNorm tensors of the last evaluation step, stacked [T, ...]."""
        self.check_ways(params, ways)
        params = {k: v.detach() for k, v in params.items()}
        names = self.adapted_names(params) + self.bn_names

        def one(p, b, sx, sy):
            fast = self.adapt_one(p, b, sx, sy, False)
            return {k: fast[k].detach() for k in names}

        return map_tasks(one, (params, buffers), (support_x, support_y), self.resolve_path(support_x))
