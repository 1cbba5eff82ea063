"""The inner loop shared by the gradient-based learners (MAML, first-order MAML, ANIL, Meta-SGD, Reptile).

Everything here is a pure function of (params, buffers, support set): `inner_loop` takes a few gradient steps on the
support loss with `torch.func.grad` (with `torch.autograd.grad` when it runs outside any functorch transform, i.e.
in the per-task loop) and returns the adapted ("fast") weights. Because both compose with ordinary autograd, the
meta-gradient of a query loss computed with the fast weights flows back through the inner steps into the
meta-parameters (second order) unless `first_order` detaches the inner gradients.

One task is one call; `map_tasks` runs a per-task function over the tasks of a batch either vectorized with
`torch.func.vmap` (one batched kernel per layer: grouped convolutions, batched matmuls) or in a Python loop (one
small kernel per task and layer). Which is faster depends on the device and the shapes; the training engine times
both and picks one (`path: auto`), see `metassl.engine.meta`.

BatchNorm: these learners require `track_running_stats: false`, so BatchNorm always normalizes with the statistics
of the batch it is given (the transductive setting of the MAML paper), in training and evaluation alike, and no
buffer is updated in place (which vmap could not do).

`GradientLearner` is the base class of the MAML family: the classifier head (`learner.head.weight` [ways, D] and
`learner.head.bias` [ways], created by `init_params`), the per-task training objective and the evaluation path
(adapt on each episode's support set with the evaluation inner-loop settings, then classify its queries).
"""

from __future__ import annotations

import contextvars
import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

from ..config import ConfigError, LearnerConfig, option
from .base import BATCH_NORMS, ENCODER, Learner, LossOutput, sub, task_loss

Tensors = dict[str, torch.Tensor]
Forward = Callable[[Tensors, Tensors, torch.Tensor], torch.Tensor]  # (params, buffers, x) -> logits
HEAD_W, HEAD_B = "learner.head.weight", "learner.head.bias"
PATHS = ("vmap", "loop")


# ---------------------------------------------------------------------------------------------------------------
# configuration shared by the MAML family


@dataclass
class InnerLoopConfig(LearnerConfig):
    """Options every gradient-based learner has (beside the engine options of `LearnerConfig`)."""

    name: str = "maml"
    inner_steps: int = option(1, range=(1, 10000), help="inner-loop gradient steps in meta-training")
    eval_inner_steps: int | None = option(None, range=(1, 10000),
                                          help="inner-loop steps when evaluating; null: as inner_steps")
    head_init: str = option("zero", choices=("zero", "normal", "linear"),
                            help="classifier head init: zeros, N(0,1) as the MAML reference code, or nn.Linear's")
    first_order: bool = option(False, help="do not differentiate through the inner gradients")


@dataclass
class FixedStepConfig(InnerLoopConfig):
    """An inner loop with one step size for every parameter (MAML, ANIL, Reptile; Meta-SGD learns its own)."""

    inner_lr: float = option(0.4, range=(0.0, 100.0), help="inner-loop step size in meta-training (alpha)")
    eval_inner_lr: float | None = option(None, range=(0.0, 100.0), help="step size in evaluation; null: inner_lr")


_VECTORIZED: contextvars.ContextVar[bool] = contextvars.ContextVar("metassl_vectorized", default=False)


def vectorized() -> bool:
    """True inside `map_tasks(..., path="vmap")` (and while torch.compile traces): the per-task function then runs
    on batched tensors, so BatchStatNorm uses elementary ops and the inner loop uses `torch.func.grad`."""
    return torch.compiler.is_compiling() or _VECTORIZED.get()


class BatchStatNorm(nn.Module):
    """BatchNorm that always normalizes with the statistics of its input batch; elementary tensor ops under vmap.

    Why not `nn.BatchNorm*` itself: under `torch.func.vmap`, the batching rule of the fused batch-norm backward gives
    wrong second-order gradients (MAML's meta-gradient off by ~1% on a tiny conv net; pytorch/functorch#534, and
    pytorch/pytorch#196699 for batch_norm's second-order forward AD). Mean, variance and affine map from elementary ops
    have exact batching rules and derivatives of any order. Outside vmap (the per-task loop) the fused kernel is
    right and ~3x faster on a CPU, so it is used there. Same parameters (`weight`, `bias`), same names, same values as
    BatchNorm in training mode (biased variance, `eps` inside the square root).
    """

    def __init__(self, bn: nn.Module):
        super().__init__()
        self.eps = bn.eps
        self.num_features = bn.num_features
        self.weight = bn.weight  # the same Parameter objects (or None without affine)
        self.bias = bn.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not vectorized():
            return F.batch_norm(x, None, None, self.weight, self.bias, True, 0.0, self.eps)
        dims = [0, *range(2, x.dim())]
        mean = x.mean(dims, keepdim=True)
        centered = x - mean
        var = (centered * centered).mean(dims, keepdim=True)
        y = centered * torch.rsqrt(var + self.eps)
        if self.weight is not None:
            shape = (1, -1) + (1,) * (x.dim() - 2)
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, batch statistics"


def use_batch_statistics(module: nn.Module) -> None:
    """Replace every BatchNorm without running statistics by an equivalent `BatchStatNorm` (same parameters)."""
    for name, child in list(module.named_children()):
        if isinstance(child, BATCH_NORMS) and not child.track_running_stats:
            setattr(module, name, BatchStatNorm(child))
        else:
            use_batch_statistics(child)


def check_no_running_stats(encoder: nn.Module, learner: str) -> None:
    """The inner loop needs BatchNorm without running statistics (pure, vmap-able, transductive as in MAML)."""
    for name, m in encoder.named_modules():
        if isinstance(m, BATCH_NORMS) and m.track_running_stats:
            raise ConfigError(
                f"learner {learner} needs BatchNorm without running statistics (batch statistics always, as in "
                f"the MAML paper): set model.track_running_stats=false (module {name or 'encoder'} tracks them)")


# ---------------------------------------------------------------------------------------------------------------
# the pure inner loop


def inner_loop(forward: Forward, params: Tensors, buffers: Tensors, support_x: torch.Tensor,
               support_y: torch.Tensor, steps: int, lr: float | Tensors, first_order: bool,
               names: Iterable[str] | None = None, optimizer: str = "sgd",
               betas: tuple[float, float] = (0.0, 0.999), eps: float = 1e-8,
               adam_state: dict[str, Any] | None = None, return_state: bool = False
               ) -> Tensors | tuple[Tensors, dict[str, Any]]:
    """Adapt `params` to one task's support set with `steps` gradient steps on its cross-entropy; return all params
    (the adapted ones replaced by their fast weights).

    forward: pure (params, buffers, x) -> logits, e.g. built on `functional_call`.
    lr: a step size, or one tensor per adapted name (Meta-SGD: elementwise learning rates, themselves learnable).
    first_order: inner gradients are detached, so the meta-gradient is the query gradient at the fast weights.
    names: which params adapt (default: all); the others are used as they are.
    optimizer: "sgd", or "adam" (first order only; Reptile's reference code uses Adam with beta1 = 0).

    Adam is TensorFlow's `tf.train.AdamOptimizer` (the optimizer of Reptile's reference code), not the textbook
    form: with t counting every step taken so far,
        m <- b1 m + (1 - b1) g,   v <- b2 v + (1 - b2) g^2,
        x <- x - lr_t m / (sqrt(v) + eps),   lr_t = lr sqrt(1 - b2^t) / (1 - b1^t)
    (the textbook / torch.optim form x - lr (m / c1) / (sqrt(v / c2) + eps), c = 1 - b^t, differs only in where eps
    sits: TF's update is the textbook one with eps / sqrt(1 - b2^t) in place of eps, which matters only for
    gradients below ~1e-6). The bias corrections are computed from t in the parameters' dtype as -expm1(t log b)
    (no float32 cancellation in 1 - b^t).
    adam_state: the optimizer state to start from, {"m": {name: tensor}, "v": {name: tensor}, "t": 0-d tensor}
        with one m and v per adapted name and t the number of Adam steps already taken (the bias corrections use
        the global count t + 1, t + 2, ...); None: zeros and t = 0 (a fresh Adam per call).
    return_state: also return the Adam state after the last step, `(params, state)` (state tensors are detached);
        with SGD the state is an empty dict.
    """
    if steps < 1:
        raise ValueError(f"inner-loop steps must be >= 1, got {steps}")
    names = list(params) if names is None else list(names)
    fixed = {k: v for k, v in params.items() if k not in set(names)}
    fast = {k: params[k] for k in names}

    def support_loss(f: Tensors) -> torch.Tensor:
        return task_loss(forward({**fixed, **f}, buffers, support_x), support_y)  # CE, or MSE for real targets

    g_fn = _gradient_function(support_loss, create_graph=not first_order)
    state: dict[str, Any] = {}
    if optimizer == "adam":
        if not first_order:
            raise ValueError("the Adam inner loop is first order only")
        b1, b2 = betas
        if adam_state is None:
            m = {k: torch.zeros_like(x) for k, x in fast.items()}
            v = {k: torch.zeros_like(x) for k, x in fast.items()}
            t0: Any = 0
        else:
            m = {k: adam_state["m"][k] for k in fast}
            v = {k: adam_state["v"][k] for k in fast}
            t0 = adam_state["t"]
        ref = next(iter(fast.values()))
        log_b1, log_b2 = (math.log(b1) if b1 > 0 else None), math.log(b2)
    elif optimizer != "sgd":
        raise ValueError(f"unknown inner-loop optimizer {optimizer!r}; use sgd or adam")
    for step in range(1, steps + 1):
        g = g_fn(fast)
        if first_order:
            g = {k: x.detach() for k, x in g.items()}
        if optimizer == "adam":
            m = {k: b1 * m[k] + (1 - b1) * g[k] for k in fast}
            v = {k: b2 * v[k] + (1 - b2) * g[k] * g[k] for k in fast}
            # a carried count is a tensor (on the device: no host sync); a fresh one a Python number (no tensor)
            t = (t0 + step).to(ref.dtype) if torch.is_tensor(t0) else float(t0 + step)
            expm1 = torch.expm1 if torch.is_tensor(t) else math.expm1
            c2 = -expm1(t * log_b2)  # 1 - b2^t
            c1 = 1.0 if log_b1 is None else -expm1(t * log_b1)  # b1 = 0: 0^t = 0 for t >= 1
            lr_t = (c2.sqrt() if torch.is_tensor(c2) else math.sqrt(c2)) / c1
            fast = {k: fast[k] - (lr[k] if isinstance(lr, dict) else lr) * lr_t * m[k] / (v[k].sqrt() + eps)
                    for k in fast}
        elif isinstance(lr, dict):
            fast = {k: fast[k] - lr[k] * g[k] for k in fast}
        else:
            fast = {k: fast[k] - lr * g[k] for k in fast}
    out = {**fixed, **fast}
    if not return_state:
        return out
    if optimizer == "adam":
        t_end = t0 + steps
        t_end = t_end if torch.is_tensor(t_end) else torch.tensor(t_end, dtype=torch.int64, device=ref.device)
        state = {"m": {k: x.detach() for k, x in m.items()}, "v": {k: x.detach() for k, x in v.items()},
                 "t": t_end.detach()}
    return out, state


def _gradient_function(loss_fn: Callable[[Tensors], torch.Tensor], create_graph: bool
                       ) -> Callable[[Tensors], Tensors]:
    """d loss_fn / d fast as a function of fast. Under `map_tasks`' vmap (or torch.compile) this is `torch.func.grad`;
    in plain eager code (the per-task loop) it is `torch.autograd.grad`, the same math without functorch's
    per-operation wrapping, with `create_graph` for the second-order meta-gradient. Both run under an outer
    torch.no_grad (evaluation): `grad` ignores it, the autograd path enables gradients itself."""
    if vectorized():
        return grad(loss_fn)

    def g(fast: Tensors) -> Tensors:
        with torch.enable_grad():  # evaluation runs the inner loop under no_grad as well
            leaves = {k: v if v.requires_grad else v.detach().requires_grad_() for k, v in fast.items()}
            loss = loss_fn(leaves)
            gs = torch.autograd.grad(loss, list(leaves.values()), create_graph=create_graph, allow_unused=True)
        return {k: torch.zeros_like(v) if gk is None else gk for (k, v), gk in zip(leaves.items(), gs)}

    return g


def score(outputs: torch.Tensor, targets: torch.Tensor, loss: torch.Tensor) -> torch.Tensor:
    """Accuracy for class labels; for real-valued targets the (detached) loss itself."""
    if targets.is_floating_point():
        return loss.detach()
    return (outputs.argmax(-1) == targets).float().mean()


def _take(tree: Any, i: int) -> Any:
    """Element i along the first dimension of a tensor, or of every tensor in a dict / tuple / list."""
    if isinstance(tree, dict):
        return {k: _take(v, i) for k, v in tree.items()}
    if isinstance(tree, (tuple, list)):
        return type(tree)(_take(v, i) for v in tree)
    return tree[i]


def _stack(outs: list[Any]) -> Any:
    """Stack per-task outputs (tensors, or dicts / tuples of tensors of the same structure) along a new dim 0."""
    first = outs[0]
    if isinstance(first, dict):
        return {k: _stack([o[k] for o in outs]) for k in first}
    if isinstance(first, (tuple, list)):
        return type(first)(_stack([o[j] for o in outs]) for j in range(len(first)))
    return torch.stack(outs)


def map_tasks(fn: Callable[..., Any], shared: Sequence[Any], batched: Sequence[Any], path: str) -> Any:
    """`fn(*shared, *per_task)` for every task, outputs stacked along a new first dimension.

    `batched` entries (tensors or dicts of tensors) have the task dimension first. path "vmap": one vectorized
    call (`torch.func.vmap`, randomness "different" so dropout-like ops draw per task), during which `vectorized()`
    is true; "loop": one call per task.
    """
    if path == "vmap":
        dims = (None,) * len(shared) + (0,) * len(batched)
        token = _VECTORIZED.set(True)
        try:
            return vmap(fn, in_dims=dims, randomness="different")(*shared, *batched)
        finally:
            _VECTORIZED.reset(token)
    if path != "loop":
        raise ValueError(f"unknown path {path!r}; use vmap or loop")
    first = batched[0]
    n = (next(iter(first.values())) if isinstance(first, dict) else first).shape[0]
    token = _VECTORIZED.set(False)  # a loop nested in a vmap'd function still runs on batched tensors: not here
    try:
        return _stack([fn(*shared, *_take(tuple(batched), i)) for i in range(n)])
    finally:
        _VECTORIZED.reset(token)


# ---------------------------------------------------------------------------------------------------------------
# the MAML-family learner


class GradientLearner(Learner):
    """Base of the MAML family: an encoder plus a linear head, adapted per task by `inner_loop`.

    Subclasses set which params adapt (`adapted_names`), the step sizes (`step_sizes`), whether the meta-gradient
    is first order, and may replace the per-task objective (`task_objective`, e.g. Reptile's surrogate).
    """

    maps_tasks = True
    inner_optimizer = "sgd"
    supports_regression = True  # float targets: the inner and outer losses are MSE (`base.task_loss`)

    def __init__(self, config: Any, encoder: nn.Module, options=None):
        super().__init__(config, encoder, options)
        check_no_running_stats(encoder, config.name)
        use_batch_statistics(encoder)  # exact second-order gradients under vmap (see BatchStatNorm)
        self.first_order = bool(config.first_order)

    # -- parameters ---------------------------------------------------------------------------------------------
    def init_params(self, feature_dim: int, ways: int) -> Tensors:
        how = self.config.head_init
        if how == "zero":
            w = torch.zeros(ways, feature_dim)
        elif how == "normal":  # the MAML reference code (TensorFlow) for Omniglot: w5 ~ N(0, 1), b5 = 0
            w = torch.randn(ways, feature_dim)
        else:
            lin = nn.Linear(feature_dim, ways)
            return {HEAD_W: lin.weight.detach().clone(), HEAD_B: lin.bias.detach().clone()}
        return {HEAD_W: w, HEAD_B: torch.zeros(ways)}

    def adapted_names(self, params: Tensors) -> list[str]:
        """Names the inner loop updates: MAML adapts the encoder and the head."""
        return [k for k in params if k.startswith(ENCODER) or k in (HEAD_W, HEAD_B)]

    def step_sizes(self, params: Tensors, train: bool) -> float | Tensors:
        c = self.config
        return c.inner_lr if train or c.eval_inner_lr is None else c.eval_inner_lr

    def steps(self, train: bool) -> int:
        c = self.config
        return c.inner_steps if train or c.eval_inner_steps is None else c.eval_inner_steps

    def resolve_path(self, x: torch.Tensor) -> str:
        """`options.path`; "auto" (before the engine has timed both) means vmap on CUDA and the loop on the CPU
        (measured faster there, see results/maml_speed.md)."""
        path = self.options.path
        if path in PATHS:
            return path
        return "vmap" if x.is_cuda else "loop"

    # -- the model of one task ----------------------------------------------------------------------------------
    def embed_one(self, params: Tensors, buffers: Tensors, x: torch.Tensor) -> torch.Tensor:
        """Encoder features of one task's images [B, C, H, W] -> [B, D] (no memory-format change: under vmap the
        fast weights are per task, and a layout conversion per call costs more than it saves)."""
        return functional_call(self.encoder, {**sub(params, ENCODER), **sub(buffers, ENCODER)}, (x,))

    @staticmethod
    def head(params: Tensors, z: torch.Tensor) -> torch.Tensor:
        return F.linear(z, params[HEAD_W], params[HEAD_B])

    def forward(self, params: Tensors, buffers: Tensors, x: torch.Tensor) -> torch.Tensor:
        return self.head(params, self.embed_one(params, buffers, x))

    def adapt_one(self, params: Tensors, buffers: Tensors, support_x: torch.Tensor, support_y: torch.Tensor,
                  train: bool) -> Tensors:
        return inner_loop(self.forward, params, buffers, support_x, support_y, self.steps(train),
                          self.step_sizes(params, train), self.first_order or not train,
                          self.adapted_names(params), self.inner_optimizer)

    def task_objective(self, params: Tensors, buffers: Tensors, support_x, support_y, query_x, query_y
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(objective to differentiate, query loss, query accuracy (regression: the loss again)) of one task."""
        fast = self.adapt_one(params, buffers, support_x, support_y, True)
        logits = self.forward(fast, buffers, query_x)
        loss = task_loss(logits, query_y)
        return loss, loss.detach(), score(logits, query_y, loss)

    # -- the Learner contract -----------------------------------------------------------------------------------
    def check_ways(self, params: Tensors, ways: int | None) -> None:
        have = params[HEAD_W].shape[0]
        if ways is not None and ways != have:
            raise ValueError(
                f"learner {self.config.name}: its classifier head was meta-trained for {have}-way tasks "
                f"(tasks.ways={have}) and cannot classify {ways}-way episodes; evaluate with --ways {have} "
                f"(eval.ways={have}) or train with tasks.ways={ways}")

    def batch_objective(self, buffers: Tensors, tasks: Any) -> Callable[..., Any]:
        """The per-task objective for this batch: `task_objective`; MAML++ picks its step's loss weights and
        derivative order, ProtoMAML its number of ways."""
        return self.task_objective

    def loss(self, params, buffers, tasks):
        self.check_ways(params, tasks.ways)
        obj, loss, acc = map_tasks(self.batch_objective(buffers, tasks), (params, buffers),
                                   (tasks.support_x, tasks.support_y, tasks.query_x, tasks.query_y),
                                   self.resolve_path(tasks.support_x))
        metric = "mse" if tasks.query_y.is_floating_point() else "accuracy"
        return LossOutput(obj.mean(), {"loss": loss.mean(), metric: acc.mean()})

    def adapt(self, params, buffers, support_x, support_y, ways):
        """Fast weights of every task, stacked [T, ...] (evaluation: no meta-gradient, params are detached)."""
        self.check_ways(params, ways)
        params = {k: v.detach() for k, v in params.items()}

        names = self.adapted_names(params)

        def one(p, b, sx, sy):
            fast = self.adapt_one(p, b, sx, sy, False)
            return {k: fast[k].detach() for k in names}  # only what adapted: the rest is shared by all tasks

        return map_tasks(one, (params, buffers), (support_x, support_y), self.resolve_path(support_x))

    def classify(self, params, buffers, state, query_x):
        with torch.no_grad():
            return map_tasks(lambda p, b, f, q: self.forward({**p, **f}, b, q), (params, buffers),
                             (state, query_x), self.resolve_path(query_x))
