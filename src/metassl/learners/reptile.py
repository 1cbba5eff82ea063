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
the paper's code (`inner_optimizer: adam`, lr 0.001; TensorFlow's form of Adam, see `inner.inner_loop`) or plain
SGD. The query set is not used by the update: the logged loss and accuracy are those of phi_i on the task's queries
(a free progress signal). Evaluation adapts on each episode's support set with `eval_inner_steps` steps (the paper:
50) and classifies its queries.

The inner Adam state (`inner_state`). The reference code (openai/supervised-reptile, `reptile.py` and `models.py`)
builds one `tf.train.AdamOptimizer(beta1=0)` and never resets it in training: `Reptile.train_step` saves and
restores only the trainable variables around each task, so Adam's moments m, v and its step count t (the beta-power
accumulators of the bias corrections) run on from task to task of a meta-batch, in order, and from meta-step to
meta-step; `Reptile.evaluate` saves and restores all variables around each evaluation episode, so an episode starts
from the current training state of Adam and leaves nothing behind.

- `inner_state: carry` (the default, the reference): one Adam state in the learner's buffers
  (`learner.inner_adam.m.<param>`, `learner.inner_adam.v.<param>`, `learner.inner_adam.t`: zeros at the start,
  saved in checkpoints). `loss` runs the tasks of the meta-batch **sequentially, as the reference does**, task i
  starting from the state task i - 1 left (a Python loop over the tasks whatever `learner.path` says: the tasks
  depend on each other through the state, so they cannot be vectorized); the end state comes back in
  `LossOutput.state` and `update` stores it. `learner.tasks_per_chunk` is refused with carry: the engine calls
  `loss` once per chunk with the same (pre-step) buffers, so every chunk would restart from the step's state;
  chunks would not save memory either (the inner loop is first order and holds one task at a time; what stays
  alive until the backward is the surrogate's product of the parameters with constants). For the same reason this
  learner does not declare `maps_tasks` with carry, so the engine neither splits the batch one task per call (its
  loop path) nor times vmap against the loop for training; evaluation (`adapt`) still maps the episodes with
  vmap or the loop, each from the buffers' state, without changing it.
- `inner_state: reset`: a fresh Adam (zeros, t = 0) for every task (what this module did before): each element's
  first inner step of every task is then exactly lr * sign(g) (up to eps).
With `inner_optimizer: sgd` there is no state and the two are the same. Runs saved before `inner_state` existed were
trained with reset and have no `learner.inner_adam.*` buffers: load or evaluate them with that override, e.g.
`metassl eval RUN learner.inner_state=reset --ways 5`. Their inner Adam was the textbook form (eps outside the
bias-corrected sqrt(v)); both modes now use TensorFlow's, which differs only for gradient elements below ~1e-6.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import ConfigError, option
from .base import LearnerSpec, LossOutput, register_learner, task_loss
from .inner import FixedStepConfig, GradientLearner, inner_loop, score

ADAM = "learner.inner_adam."  # buffers: ADAM + "m." + name, ADAM + "v." + name, ADAM + "t"


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
    inner_state: str = option("carry", choices=("carry", "reset"),
                              help="inner Adam state: carry = one state across the tasks (run sequentially) and "
                                   "meta-steps, kept in buffers (the reference code); reset = a fresh Adam per task")


class Reptile(GradientLearner):
    def __init__(self, config, encoder, options=None):
        super().__init__(config, encoder, options)
        self.inner_optimizer = config.inner_optimizer
        self.carry = config.inner_optimizer == "adam" and config.inner_state == "carry"
        self.sequential_tasks = self.carry
        if self.carry:
            # the tasks of a meta-batch depend on each other through the Adam state: `loss` loops over them itself,
            # so the engine must hand it the whole batch in one call (no per-task chunks of its loop path, no
            # vmap/loop timing); see the module docstring
            self.maps_tasks = False
            self._check_options()

    def with_options(self, options=None, **changes):
        new = super().with_options(options, **changes)
        if new.carry:
            new._check_options()
        return new

    def _check_options(self) -> None:
        if self.options.tasks_per_chunk is not None:
            raise ConfigError(
                f"learner.tasks_per_chunk={self.options.tasks_per_chunk} does not apply to reptile with "
                f"inner_state=carry: its tasks run one after the other through one Adam state (one task's graph "
                f"alive at a time), and chunks would each restart from the step's state; unset it, or use "
                f"learner.inner_state=reset")

    # -- the carried Adam state ---------------------------------------------------------------------------------
    def init_buffers(self, params, buffers):
        out = super().init_buffers(params, buffers)
        if self.carry:
            for k in self.adapted_names(params):
                p = params[k]
                out[f"{ADAM}m.{k}"] = torch.zeros(p.shape, dtype=p.dtype, device=p.device)
                out[f"{ADAM}v.{k}"] = torch.zeros(p.shape, dtype=p.dtype, device=p.device)
            out[f"{ADAM}t"] = torch.zeros((), dtype=torch.int64)
        return out

    def adam_state(self, params, buffers) -> dict | None:
        """The carried state from the buffers, in `inner_loop`'s form (None with reset or SGD: a fresh one)."""
        if not self.carry:
            return None
        names = self.adapted_names(params)
        return {"m": {k: buffers[f"{ADAM}m.{k}"] for k in names}, "v": {k: buffers[f"{ADAM}v.{k}"] for k in names},
                "t": buffers[f"{ADAM}t"]}

    def update(self, params, buffers, state, step, total_steps):
        """The Adam state the meta-batch ended with (`loss` returns it with a leading dimension of 1; were the batch
        ever split, the last part's state is taken)."""
        return {k: v[-1] for k, v in state.items() if k.startswith(ADAM)}

    # -- one task -----------------------------------------------------------------------------------------------
    def adapt_with_state(self, params, buffers, support_x, support_y, train, adam_state=None):
        """Fast weights and the Adam state after them; `adam_state` None: the buffers' (carry) or a fresh one."""
        if adam_state is None:
            adam_state = self.adam_state(params, buffers)
        return inner_loop(self.forward, params, buffers, support_x, support_y, self.steps(train),
                          self.step_sizes(params, train), True, self.adapted_names(params), self.inner_optimizer,
                          adam_state=adam_state, return_state=True)

    def adapt_one(self, params, buffers, support_x, support_y, train):
        """Fast weights from the buffers' Adam state (carry), which is left as it is: the reference restores Adam's
        state after every evaluation episode. `GradientLearner.adapt` maps this over the episodes."""
        return self.adapt_with_state(params, buffers, support_x, support_y, train)[0]

    def task_objective(self, params, buffers, support_x, support_y, query_x, query_y, adam_state=None):
        """(surrogate, query loss, query accuracy) of one task; with `adam_state` also the end state."""
        names = self.adapted_names(params)
        start = {k: v.detach() for k, v in params.items()}
        fast, end = self.adapt_with_state(start, buffers, support_x, support_y, True, adam_state)
        surrogate = sum((params[k] * (start[k] - fast[k].detach())).sum() for k in names)
        with torch.no_grad():
            logits = self.forward(fast, buffers, query_x)
            loss = task_loss(logits, query_y)
            acc = score(logits, query_y, loss)
        if adam_state is None:
            return surrogate, loss, acc
        return surrogate, loss, acc, end

    # -- the Learner contract -----------------------------------------------------------------------------------
    def loss(self, params, buffers, tasks):
        if not self.carry:
            return super().loss(params, buffers, tasks)
        self.check_ways(params, tasks.ways)
        state = self.adam_state(params, buffers)
        objs, losses, accs = [], [], []
        for i in range(tasks.num_tasks):  # sequential, as the reference: task i starts from task i - 1's state
            obj, loss, acc, state = self.task_objective(params, buffers, tasks.support_x[i], tasks.support_y[i],
                                                        tasks.query_x[i], tasks.query_y[i], state)
            objs.append(obj)
            losses.append(loss)
            accs.append(acc)
        end = {f"{ADAM}t": state["t"].detach().reshape(1)}
        for part in ("m", "v"):
            end.update({f"{ADAM}{part}.{k}": x.detach().unsqueeze(0) for k, x in state[part].items()})
        metric = "mse" if tasks.query_y.is_floating_point() else "accuracy"
        return LossOutput(torch.stack(objs).mean(), {"loss": torch.stack(losses).mean(),
                                                     metric: torch.stack(accs).mean()}, end)


register_learner(LearnerSpec("reptile", ReptileConfig, Reptile,
                             "first-order meta-learning: move the initialization towards task-adapted weights"))
