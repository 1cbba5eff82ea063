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

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap
from torch.utils._pytree import tree_map

from ..config import ConfigError, option
from .base import ENCODER, Learner, sub

Tensors = dict[str, torch.Tensor]
Forward = Callable[[Tensors, Tensors, torch.Tensor], torch.Tensor]  # (params, buffers, x) -> logits
HEAD_W, HEAD_B = "learner.head.weight", "learner.head.bias"
PATHS = ("vmap", "loop")


# ---------------------------------------------------------------------------------------------------------------
# configuration shared by the MAML family


@dataclass
class InnerLoopConfig:
    """Options every gradient-based learner has. The last four are read by the training engine
    (`getattr(cfg.learner, ...)`), so a learner without them simply trains unchunked, eagerly, in fp32."""

    name: str = "maml"
    inner_steps: int = option(1, range=(1, 10000), help="inner-loop gradient steps in meta-training")
    eval_inner_steps: int | None = option(None, range=(1, 10000),
                                          help="inner-loop steps when evaluating; null: as inner_steps")
    head_init: str = option("zero", choices=("zero", "normal", "linear"),
                            help="classifier head init: zeros, N(0,1) as the MAML reference code, or nn.Linear's")
    tasks_per_chunk: int | None = option(None, range=(1, None),
                                         help="meta-batch processed this many tasks at a time (bounds memory; "
                                              "same gradient); null: all at once")
    path: str = option("auto", choices=("auto", "vmap", "loop"),
                       help="tasks vectorized with vmap, or a per-task loop; auto: the engine times both")
    amp: str = option("none", choices=("none", "bf16"), help="bf16 autocast of the meta-batch (CUDA only)")
    compile: bool = option(False, help="torch.compile the meta-batch loss (falls back to eager if it fails)")


def _under_vmap() -> bool:
    if torch.compiler.is_compiling():  # elementary ops: traceable (no graph break), and the compiler fuses them
        return True
    try:
        from torch._C._functorch import TransformType
        from torch._functorch.pyfunctorch import retrieve_all_functorch_interpreters

        return any(i.key() == TransformType.Vmap for i in retrieve_all_functorch_interpreters())
    except Exception:  # private API moved: the elementary ops are correct everywhere
        return True


class BatchStatNorm(nn.Module):
    """BatchNorm that always normalizes with the statistics of its input batch; elementary tensor ops under vmap.

    Why not `nn.BatchNorm*` itself: under `torch.func.vmap`, the batching rule of the fused batch-norm backward gives
    wrong second-order gradients (MAML's meta-gradient off by ~1% on a tiny conv net; pytorch/functorch#534, and
    pytorch/pytorch#196699 for batch_norm's second-order forward AD). Mean, variance and affine map from elementary ops
    have exact batching rules and derivatives of any order. Outside vmap (the per-task loop) the fused kernel is
    right and ~3x faster on a CPU, so it is used there. Same parameters (`weight`, `bias`), same names, same values as
    BatchNorm in training mode (biased variance, `eps` inside the square root).
    """

    def __init__(self, bn: nn.modules.batchnorm._BatchNorm):
        super().__init__()
        self.eps = bn.eps
        self.num_features = bn.num_features
        self.weight = bn.weight  # the same Parameter objects (or None without affine)
        self.bias = bn.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not _under_vmap():
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
        if isinstance(child, nn.modules.batchnorm._BatchNorm) and not child.track_running_stats:
            setattr(module, name, BatchStatNorm(child))
        else:
            use_batch_statistics(child)


def check_no_running_stats(encoder: nn.Module, learner: str) -> None:
    """The inner loop needs BatchNorm without running statistics (pure, vmap-able, transductive as in MAML)."""
    for name, m in encoder.named_modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats:
            raise ConfigError(
                f"learner {learner} needs BatchNorm without running statistics (batch statistics always, as in "
                f"the MAML paper): set model.track_running_stats=false (module {name or 'encoder'} tracks them)")


# ---------------------------------------------------------------------------------------------------------------
# the pure inner loop


def inner_loop(forward: Forward, params: Tensors, buffers: Tensors, support_x: torch.Tensor,
               support_y: torch.Tensor, steps: int, lr: float | Tensors, first_order: bool,
               names: Iterable[str] | None = None, optimizer: str = "sgd",
               betas: tuple[float, float] = (0.0, 0.999), eps: float = 1e-8) -> Tensors:
    """Adapt `params` to one task's support set with `steps` gradient steps on its cross-entropy; return all params
    (the adapted ones replaced by their fast weights).

    forward: pure (params, buffers, x) -> logits, e.g. built on `functional_call`.
    lr: a step size, or one tensor per adapted name (Meta-SGD: elementwise learning rates, themselves learnable).
    first_order: inner gradients are detached, so the meta-gradient is the query gradient at the fast weights.
    names: which params adapt (default: all); the others are used as they are.
    optimizer: "sgd", or "adam" (first order only; Reptile's reference code uses Adam with beta1 = 0).
    """
    if steps < 1:
        raise ValueError(f"inner-loop steps must be >= 1, got {steps}")
    names = list(params) if names is None else list(names)
    fixed = {k: v for k, v in params.items() if k not in set(names)}
    fast = {k: params[k] for k in names}

    def support_loss(f: Tensors) -> torch.Tensor:
        return F.cross_entropy(forward({**fixed, **f}, buffers, support_x), support_y)

    g_fn = _gradient_function(support_loss, create_graph=not first_order)
    if optimizer == "adam":
        if not first_order:
            raise ValueError("the Adam inner loop is first order only")
        v = {k: torch.zeros_like(x) for k, x in fast.items()}
        m = {k: torch.zeros_like(x) for k, x in fast.items()}
    for t in range(1, steps + 1):
        g = g_fn(fast)
        if first_order:
            g = {k: x.detach() for k, x in g.items()}
        if optimizer == "adam":
            b1, b2 = betas
            m = {k: b1 * m[k] + (1 - b1) * g[k] for k in fast}
            v = {k: b2 * v[k] + (1 - b2) * g[k] * g[k] for k in fast}
            c1, c2 = 1 - b1 ** t, 1 - b2 ** t
            fast = {k: fast[k] - lr * (m[k] / c1) / ((v[k] / c2).sqrt() + eps) for k in fast}
        elif isinstance(lr, dict):
            fast = {k: fast[k] - lr[k] * g[k] for k in fast}
        else:
            fast = {k: fast[k] - lr * g[k] for k in fast}
    return {**fixed, **fast}


def _functorch_active() -> bool:
    if torch.compiler.is_compiling():
        return True
    try:
        from torch._functorch.pyfunctorch import retrieve_all_functorch_interpreters

        return bool(retrieve_all_functorch_interpreters())
    except Exception:
        return True


def _gradient_function(loss_fn: Callable[[Tensors], torch.Tensor], create_graph: bool
                       ) -> Callable[[Tensors], Tensors]:
    """d loss_fn / d fast as a function of fast. Under vmap (or torch.compile) this is `torch.func.grad`; in plain
    eager code (the per-task loop) it is `torch.autograd.grad`, the same math without functorch's per-operation
    wrapping, with `create_graph` for the second-order meta-gradient."""
    if _functorch_active():
        return grad(loss_fn)

    def g(fast: Tensors) -> Tensors:
        with torch.enable_grad():  # evaluation runs the inner loop under no_grad as well
            leaves = {k: v if v.requires_grad else v.detach().requires_grad_() for k, v in fast.items()}
            loss = loss_fn(leaves)
            gs = torch.autograd.grad(loss, list(leaves.values()), create_graph=create_graph, allow_unused=True)
        return {k: torch.zeros_like(v) if gk is None else gk for (k, v), gk in zip(leaves.items(), gs)}

    return g


def map_tasks(fn: Callable[..., Any], shared: Sequence[Any], batched: Sequence[Any], path: str) -> Any:
    """`fn(*shared, *per_task)` for every task, outputs stacked along a new first dimension.

    `batched` entries (tensors or dicts of tensors) have the task dimension first. path "vmap": one vectorized
    call (`torch.func.vmap`, randomness "different" so dropout-like ops draw per task); "loop": one call per task.
    """
    if path == "vmap":
        dims = (None,) * len(shared) + (0,) * len(batched)
        return vmap(fn, in_dims=dims, randomness="different")(*shared, *batched)
    if path != "loop":
        raise ValueError(f"unknown path {path!r}; use vmap or loop")
    first = batched[0]
    n = (next(iter(first.values())) if isinstance(first, dict) else first).shape[0]
    outs = [fn(*shared, *tree_map(lambda x: x[i], tuple(batched))) for i in range(n)]
    return tree_map(lambda *xs: torch.stack(xs), *outs)


# ---------------------------------------------------------------------------------------------------------------
# the MAML-family learner


class GradientLearner(Learner):
    """Base of the MAML family: an encoder plus a linear head, adapted per task by `inner_loop`.

    Subclasses set which params adapt (`adapted_names`), the step sizes (`step_sizes`), whether the meta-gradient
    is first order, and may replace the per-task objective (`task_objective`, e.g. Reptile's surrogate).
    """

    adapts_with_gradients = True
    first_order = False
    inner_optimizer = "sgd"

    def __init__(self, config: Any, encoder: nn.Module):
        super().__init__(config, encoder)
        check_no_running_stats(encoder, config.name)
        use_batch_statistics(encoder)  # exact second-order gradients under vmap (see BatchStatNorm)
        #: "vmap" or "loop"; the engine sets it ("auto" is resolved by timing, see metassl.engine.meta).
        #: Until then, "auto" means vmap on CUDA and the loop on CPU (measured faster there, see results/maml_speed.md)
        self.path = config.path

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
        if self.path in PATHS:
            return self.path
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
        """(objective to differentiate, query loss, query accuracy) of one task."""
        fast = self.adapt_one(params, buffers, support_x, support_y, True)
        logits = self.forward(fast, buffers, query_x)
        loss = F.cross_entropy(logits, query_y)
        return loss, loss.detach(), (logits.argmax(-1) == query_y).float().mean()

    # -- the Learner contract -----------------------------------------------------------------------------------
    def check_ways(self, params: Tensors, ways: int) -> None:
        have = params[HEAD_W].shape[0]
        if ways != have:
            raise ValueError(
                f"learner {self.config.name}: its classifier head was meta-trained for {have}-way tasks "
                f"(tasks.ways={have}) and cannot classify {ways}-way episodes; evaluate with --ways {have} "
                f"(eval.ways={have}) or train with tasks.ways={ways}")

    def loss(self, params, buffers, tasks):
        self.check_ways(params, tasks.ways)
        obj, loss, acc = map_tasks(self.task_objective, (params, buffers),
                                   (tasks.support_x, tasks.support_y, tasks.query_x, tasks.query_y),
                                   self.resolve_path(tasks.support_x))
        return obj.mean(), {"loss": loss.mean(), "accuracy": acc.mean()}

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
