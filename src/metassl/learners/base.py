"""What a learner is: a few pure functions of (parameters, buffers, batch), and the engine options it runs under.

Parameters and buffers are flat name -> tensor dicts; the encoder's entries start with `encoder.`, a learner's own
tensors (heads, per-parameter learning rates, EMA targets, queues) with `learner.`. The engine owns the tensors, the
optimizer, the device and the processes; a learner owns none of them and is never changed by the engine (options
are given at construction, `with_options` returns a new learner), so the same functions serve training,
evaluation, prediction and any number of processes.

The contract, as in easyfsl's process-support-then-classify and optax's (init, update):
  out    = learner.loss(params, buffers, batch)          # LossOutput(loss, metrics, state)
  new    = learner.update(params, buffers, out.state, step, total_steps)   # new values of learner.* buffers
  state  = learner.adapt(params, buffers, support_x, support_y, ways)       # prototypes, fast weights, ...
  logits = learner.classify(params, buffers, state, query_x)               # [T, N*Q, N]
`loss` defaults to cross-entropy of the query logits; `update` (after each optimizer step) to no change. A task's
targets need not be class labels: `TaskBatch.support_y`/`query_y` may be float tensors (regression), for which a
learner defines its own `loss`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from ..config import ConfigError, LearnerConfig
from ..data.episodic import TaskBatch
from ..registry import LEARNERS

Tensors = dict[str, torch.Tensor]
ENCODER = "encoder."
BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)

__all__ = ["ENCODER", "EngineOptions", "Learner", "LearnerSpec", "LossOutput", "ParamGroup", "Tensors", "get_learner",
           "query_loss", "register_learner", "sub", "task_loss", "check_task_type"]


def sub(tensors: Tensors, prefix: str) -> Tensors:
    """The entries under `prefix`, with the prefix removed."""
    n = len(prefix)
    return {k[n:]: v for k, v in tensors.items() if k.startswith(prefix)}


@dataclass(frozen=True)
class EngineOptions:
    """How the engine runs a learner's functions; every learner has them (`LearnerConfig` keys + train.channels_last),
    read in one place (`EngineOptions.from_config`)."""

    amp: str = "none"  # "bf16": autocast on CUDA
    compile: bool = False
    tasks_per_chunk: int | None = None
    path: str = "auto"  # "vmap" | "loop" | "auto" (the engine times both for learners that map over tasks)
    channels_last: bool = False  # images are fed in NHWC layout (conv backbones)
    input_ndim: int = 3  # dims of one input: 3 for images [C, H, W], 1 for vectors [D]
    global_batchnorm: bool = False  # several processes: BatchNorm over the global batch (heads built by the learner)
    input_shape: tuple[int, ...] = ()  # the shape of one input (images [C, H, W]), for heads that produce images

    @classmethod
    def from_config(cls, cfg: Any, encoder: nn.Module | None = None) -> "EngineOptions":
        """From a RunConfig: the learner's engine keys, and channels-last when asked for and the encoder convolves."""
        lc = cfg.learner
        conv = encoder is not None and any(isinstance(m, nn.Conv2d) for m in encoder.modules())
        return cls(lc.amp, lc.compile, lc.tasks_per_chunk, lc.path, bool(cfg.train.channels_last and conv))

    def for_inputs(self, input_shape: tuple[int, ...]) -> "EngineOptions":
        """These options for inputs of one example's shape (images [C, H, W]; vectors [D]: no channels-last)."""
        return dataclasses.replace(self, input_ndim=len(input_shape), input_shape=tuple(input_shape),
                                   channels_last=self.channels_last and len(input_shape) == 3)


@dataclass
class LossOutput:
    """What `Learner.loss` returns: the scalar to differentiate, 0-d metrics to log, and detached tensors the
    learner's `update` needs after the optimizer step (e.g. MoCo's keys for its queue), never logged.

    `group_losses` (learners with several parameter groups, `Learner.param_groups`, e.g. a GAN's discriminator and
    generator): one loss per group name; the engine back-propagates each group's loss into that group's parameters
    only, and `loss` is then what is logged. Empty: `loss` is differentiated for every parameter."""

    loss: torch.Tensor
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)
    state: dict[str, torch.Tensor] = field(default_factory=dict)
    group_losses: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass(frozen=True)
class ParamGroup:
    """A group of parameters with its own objective and optimizer settings (`Learner.param_groups`): the parameters
    whose names start with one of `prefixes`, trained on `LossOutput.group_losses[name]`, with the learning rate
    `lr_scale` x the schedule's and optimizer hyperparameters `options` (e.g. Adam's betas) overriding the optim
    section. The engine gives every group its own optimizer state (one param group of one torch optimizer: a
    checkpoint holds them all); each parameter must be in exactly one group."""

    name: str
    prefixes: tuple[str, ...]
    lr_scale: float = 1.0
    options: tuple[tuple[str, Any], ...] = ()

    def owns(self, param: str) -> bool:
        return param.startswith(self.prefixes)


class Learner:
    """Base class: subclasses override `adapt` and `classify` (and `loss` when the objective is not query CE)."""

    #: the learner maps per-task functions over the tasks (`inner.map_tasks`), so the vmap/loop path applies
    maps_tasks: bool = False
    #: on several processes, `loss` gathers the batch's embeddings over the processes (`metassl.parallel.gather`)
    #: and returns the loss of the global batch, the same on every process (contrastive losses need every
    #: negative); otherwise each process's loss is the mean over its own share of the tasks
    global_loss: bool = False
    #: the tasks of a batch depend on each other in order (Reptile's carried inner Adam state), so a batch cannot
    #: be split over processes
    sequential_tasks: bool = False
    #: the learner adapts to few-shot regression tasks (real targets, MSE; `data.regression`): the MAML family.
    #: Metric, closed-form and transfer learners classify, and the trainer refuses them on a regression data set
    supports_regression: bool = False
    #: the learner reads padded variable-way variable-shot batches (`TaskBatch.padded`: masks, per-task ways; the
    #: `metadataset` task source) so that padding changes no logit or loss; the others are refused such batches
    variable_ways: bool = False
    #: the learner only regresses (the MAML paper's pretrained baseline): refused on classification data sets
    regression_only: bool = False

    def __init__(self, config: Any, encoder: nn.Module, options: EngineOptions | None = None):
        self.config = config
        self.encoder = encoder  # a stateless shape: its tensors are always passed in by the caller
        self.options = options or EngineOptions()
        # BatchNorm without running statistics normalizes with the statistics of the batch it is given, so
        # evaluation embeds each episode on its own (results must not depend on how episodes are batched)
        self.batch_statistics = any(isinstance(m, BATCH_NORMS) and not m.track_running_stats
                                    for m in encoder.modules())

    def with_options(self, options: EngineOptions | None = None, **changes: Any) -> "Learner":
        """A copy of this learner running under other engine options (the original is unchanged)."""
        new = object.__new__(type(self))
        new.__dict__.update(self.__dict__)
        new.options = dataclasses.replace(options or self.options, **changes)
        return new

    @property
    def channels_last(self) -> bool:
        return self.options.channels_last

    # -- tensors the learner adds beside the encoder ----------------------------------------------------------
    def init_params(self, feature_dim: int, ways: int) -> Tensors:
        """Learnable tensors beside the encoder, named `learner.*` (e.g. a head for `ways` classes)."""
        return {}

    def init_buffers(self, params: Tensors, buffers: Tensors) -> Tensors:
        """Non-learnable state carried between steps and saved in checkpoints, named `learner.*` (e.g. an EMA
        target network or a queue of negatives)."""
        return {}

    def update(self, params: Tensors, buffers: Tensors, state: Tensors, step: int, total_steps: int) -> Tensors:
        """New values of `learner.*` buffers after optimizer step `step` (from 0), from the updated params and the
        `state` that `loss` returned; the engine stores them. A pure function (run under no_grad)."""
        return {}

    #: once trained, the learner summarizes the training split's features (e.g. SimpleShot's base-class mean for
    #: centering): the engine then calls `summarize` with every training image's features, in evaluation mode
    summarizes_training_split: bool = False

    def summarize(self, params: Tensors, buffers: Tensors, features: torch.Tensor, labels: torch.Tensor
                  ) -> Tensors:
        """New values of `learner.*` buffers from the features [M, D] (evaluation mode) and class indices [M] of the
        whole training split, computed after the last training step and before the final checkpoint."""
        return {}

    def diagnose(self, metrics: dict[str, float], step: int) -> str | None:
        """A warning the logged metrics call for (e.g. collapsed embeddings), or None; the engine shows each once."""
        return None

    def param_groups(self) -> tuple[ParamGroup, ...]:
        """Parameter groups trained on separate losses with their own optimizer settings (a GAN's discriminator
        and generator); empty (the default): one objective, `LossOutput.loss`, for all parameters."""
        return ()

    # -- the functional core ----------------------------------------------------------------------------------
    def embed(self, params: Tensors, buffers: Tensors, images: torch.Tensor, per_task: bool = False
              ) -> torch.Tensor:
        """Encoder features of images shaped [..., C, H, W] -> [..., D] (leading dims flattened and restored).
        `per_task`: images [T, M, C, H, W] of T independent episodes; with batch-statistics BatchNorm each episode
        is normalized on its own."""
        tensors = {**sub(params, ENCODER), **sub(buffers, ENCODER)}
        nd = self.options.input_ndim
        if per_task and self.batch_statistics and images.dim() == nd + 2 and images.shape[0] > 1:
            return torch.stack([self.encode_with(tensors, x) for x in images.unbind(0)])
        return self.encode_with(tensors, images)

    def encode_with(self, tensors: Tensors, inputs: torch.Tensor) -> torch.Tensor:
        """The encoder with these tensors (names without `encoder.`): inputs [..., *input_shape] -> [..., D], the
        leading dims flattened into one batch and restored; channels-last images when the options say so."""
        nd = self.options.input_ndim
        lead = inputs.shape[:-nd]
        x = inputs.reshape(-1, *inputs.shape[-nd:])
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        z = functional_call(self.encoder, tensors, (x,))
        return z.reshape(*lead, z.shape[-1])

    def adapt(self, params: Tensors, buffers: Tensors, support_x: torch.Tensor, support_y: torch.Tensor,
              ways: int) -> Any:
        raise NotImplementedError

    def classify(self, params: Tensors, buffers: Tensors, state: Any, query_x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def predict(self, params: Tensors, buffers: Tensors, support_x: torch.Tensor, support_y: torch.Tensor,
                query_x: torch.Tensor, ways: int, unlabeled_x: torch.Tensor | None = None) -> torch.Tensor:
        """Logits [T, Nq, N] of the query images after adapting to the support set (evaluation path; runs under
        torch.no_grad: learners that adapt by gradient steps enable gradients themselves). `unlabeled_x`: the
        episode's unlabeled images (semi-supervised episodes); an inductive learner ignores them."""
        return self.classify(params, buffers, self.adapt(params, buffers, support_x, support_y, ways), query_x)

    def loss(self, params: Tensors, buffers: Tensors, batch: TaskBatch) -> LossOutput:
        """The meta-training loss of a batch of tasks (mean over tasks) and metrics to log."""
        logits = self.predict(params, buffers, batch.support_x, batch.support_y, batch.query_x, batch.ways)
        return query_loss(logits, batch.query_y)


def task_loss(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The loss of one task's (or a batch's) outputs: cross-entropy for class labels (integer targets), mean squared
    error for real-valued targets (few-shot regression: outputs and targets of the same shape)."""
    if targets.is_floating_point():
        return F.mse_loss(outputs, targets)
    return F.cross_entropy(outputs.reshape(-1, outputs.shape[-1]), targets.reshape(-1))


def embed_masked(learner: "Learner", params: Tensors, buffers: Tensors, images: torch.Tensor, mask: torch.Tensor
                 ) -> torch.Tensor:
    """Features [T, M, D] of padded images [T, M, ...] where `mask` [T, M] marks the real ones: only those go
    through the encoder (one call), so padding cannot reach BatchNorm statistics; padded rows are 0."""
    z = learner.embed(params, buffers, images[mask])  # [sum(mask), D]
    out = z.new_zeros(*mask.shape, z.shape[-1])
    out[mask] = z
    return out


def class_mask(task_ways: torch.Tensor, ways: int) -> torch.Tensor:
    """[T, N] True for each task's real classes 0..ways_t-1."""
    return torch.arange(ways, device=task_ways.device) < task_ways.unsqueeze(1)


def masked_query_loss(logits: torch.Tensor, query_y: torch.Tensor, query_mask: torch.Tensor,
                      task_ways: torch.Tensor) -> LossOutput:
    """Cross-entropy and accuracy of padded variable-way tasks: logits of padded classes are -inf, padded queries
    weigh 0, each task's loss is the mean over its real queries and the batch's the mean over tasks (as
    `query_loss` for equal-size tasks)."""
    n = logits.shape[-1]
    logits = logits.masked_fill(~class_mask(task_ways, n).unsqueeze(1), float("-inf"))
    ce = F.cross_entropy(logits.reshape(-1, n), query_y.reshape(-1), reduction="none").view(query_y.shape)
    w = query_mask.to(ce.dtype)
    per_task = (ce.masked_fill(~query_mask, 0.0) * w).sum(1) / w.sum(1).clamp_min(1.0)
    loss = per_task.mean()
    hit = ((logits.argmax(-1) == query_y).to(ce.dtype) * w).sum(1) / w.sum(1).clamp_min(1.0)
    return LossOutput(loss, {"loss": loss.detach(), "accuracy": hit.mean().detach()})


def query_loss(logits: torch.Tensor, query_y: torch.Tensor) -> LossOutput:
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), query_y.reshape(-1))
    acc = (logits.argmax(-1) == query_y).float().mean()
    return LossOutput(loss, {"loss": loss.detach(), "accuracy": acc.detach()})


@dataclass(frozen=True)
class LearnerSpec:
    name: str
    config: type  # a LearnerConfig subclass with the method's hyperparameters (its `name` default is `name`)
    build: Callable[[Any, nn.Module], Learner]
    description: str = ""  # one line, shown by `metassl presets --keys`
    # the task source used when the config says `tasks.source: auto`: labeled episodes for meta-learners,
    # unlabeled augmented views for self-supervised methods
    default_source: str = "labeled"
    # adapts the data set's augmentation preset to the method's views (e.g. BYOL's asymmetric blur/solarization)
    augment: Callable[[Any], Any] | None = None
    # the method starts from an earlier run (`init_from`, e.g. Meta-Baseline from a classifier run): required or not,
    # and which learners' runs fit (empty: any); the trainer names what is needed when the run does not fit
    needs_init_from: bool = False
    init_from_learners: tuple[str, ...] = ()
    # the batch kinds it trains on (keys of config.BATCH_KINDS); empty: the kind its default source yields
    accepts: tuple[str, ...] = ()


def register_learner(spec_or_name: LearnerSpec | str, config: type | None = None, *, description: str = "",
                     default_source: str = "labeled", augment: Callable[[Any], Any] | None = None,
                     needs_init_from: bool = False, init_from_learners: tuple[str, ...] = ()):
    """Register a learner: `register_learner(LearnerSpec(...))`, or as a class decorator

        @register_learner("protonet", ProtoNetConfig, description="...")
        class ProtoNet(Learner): ...
    """
    if isinstance(spec_or_name, LearnerSpec):
        return _add(spec_or_name)
    if config is None or not issubclass(config, LearnerConfig):
        raise TypeError(f"learner {spec_or_name!r}: its config class must subclass metassl.config.LearnerConfig")

    def deco(cls: type) -> type:
        _add(LearnerSpec(spec_or_name, config, cls, description, default_source, augment, needs_init_from,
                         tuple(init_from_learners)))
        return cls

    return deco


def _add(spec: LearnerSpec) -> LearnerSpec:
    default = next((f.default for f in dataclasses.fields(spec.config) if f.name == "name"), None)
    if default != spec.name:
        raise TypeError(f"learner {spec.name!r}: the `name` field of {spec.config.__name__} defaults to "
                        f"{default!r}; it must default to {spec.name!r}")
    return LEARNERS.add(spec.name, spec)


def get_learner(name: str) -> LearnerSpec:
    return LEARNERS.lookup(name)


def check_task_type(spec: LearnerSpec, task_type: str, dataset: str) -> None:
    """A ConfigError when the learner cannot train on the data set's kind of task (regression: the MAML family)."""
    if task_type != "regression":
        if getattr(spec.build, "regression_only", False):
            raise ConfigError(f"learner.name={spec.name} regresses (real targets), but data.dataset={dataset} gives "
                              f"classification episodes: use a regression data set (e.g. data.dataset=sinusoid), or "
                              f"learner.name=baseline / baseline_pp for the classification counterpart")
        return
    if getattr(spec.build, "supports_regression", False):
        return
    fits = sorted(n for n, s in LEARNERS.items() if getattr(s.build, "supports_regression", False))
    raise ConfigError(f"learner.name={spec.name} classifies, but data.dataset={dataset} gives regression tasks (real "
                      f"targets): use a gradient-based learner, one of {', '.join(fits)}")
