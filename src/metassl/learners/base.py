"""What a learner is: a few pure functions of (parameters, buffers, batch of tasks).

Parameters and buffers are flat name -> tensor dicts; the encoder's entries start with `encoder.`, a learner's own
learnable tensors (heads, per-parameter learning rates) with the names `init_params` gives them. The engine owns the
tensors, the optimizer and the device; a learner owns none of them, so the same functions serve training,
evaluation, prediction and any number of processes.

The contract, as in easyfsl's process-support-then-classify and learn2learn's clone/adapt:
  state  = learner.adapt(params, buffers, support_x, support_y, ways)   # prototypes, fast weights, ...
  logits = learner.classify(params, buffers, state, query_x)            # [T, N*Q, N]
and `loss` (the meta-training objective) defaults to cross-entropy of those logits on the query labels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from ..data.episodic import TaskBatch
from ..registry import Registry

Tensors = dict[str, torch.Tensor]
ENCODER = "encoder."


def sub(tensors: Tensors, prefix: str) -> Tensors:
    """The entries under `prefix`, with the prefix removed."""
    n = len(prefix)
    return {k[n:]: v for k, v in tensors.items() if k.startswith(prefix)}


class Learner:
    """Base class: subclasses override `adapt` and `classify` (and `loss` when the objective is not query CE)."""

    #: adaptation needs autograd (MAML family), so evaluation must not run under torch.no_grad
    adapts_with_gradients: bool = False

    def __init__(self, config: Any, encoder: nn.Module):
        self.config = config
        self.encoder = encoder  # a stateless shape: its tensors are always passed in by the caller
        self.channels_last = False  # set by the engine; images are then fed in NHWC layout

    # -- tensors the learner adds beside the encoder ----------------------------------------------------------
    def init_params(self, feature_dim: int, ways: int) -> Tensors:
        """Learnable tensors beside the encoder, named `learner.*` (e.g. a head for `ways` classes)."""
        return {}

    def init_buffers(self, params: Tensors, buffers: Tensors) -> Tensors:
        """Non-learnable state carried between steps and saved in checkpoints, named `learner.*` (e.g. an EMA
        target network or a queue of negatives)."""
        return {}

    def after_step(self, params: Tensors, buffers: Tensors, aux: dict[str, Any], step: int, total_steps: int) -> None:
        """Called by the engine after each optimizer step, under no_grad, with the `aux` dict `loss` returned;
        the only place a learner may update its `learner.*` buffers in place (EMA, queue)."""

    # -- the functional core ----------------------------------------------------------------------------------
    def embed(self, params: Tensors, buffers: Tensors, images: torch.Tensor) -> torch.Tensor:
        """Encoder features of images shaped [..., C, H, W] -> [..., D] (leading dims flattened and restored)."""
        lead = images.shape[:-3]
        x = images.reshape(-1, *images.shape[-3:])
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        z = functional_call(self.encoder, {**sub(params, ENCODER), **sub(buffers, ENCODER)}, (x,))
        return z.reshape(*lead, z.shape[-1])

    def adapt(self, params: Tensors, buffers: Tensors, support_x: torch.Tensor, support_y: torch.Tensor,
              ways: int) -> Any:
        raise NotImplementedError

    def classify(self, params: Tensors, buffers: Tensors, state: Any, query_x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def predict(self, params: Tensors, buffers: Tensors, support_x: torch.Tensor, support_y: torch.Tensor,
                query_x: torch.Tensor, ways: int) -> torch.Tensor:
        """Logits [T, Nq, N] of the query images after adapting to the support set (evaluation path)."""
        return self.classify(params, buffers, self.adapt(params, buffers, support_x, support_y, ways), query_x)

    def loss(self, params: Tensors, buffers: Tensors, tasks: TaskBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The meta-training loss of a batch of tasks (mean over tasks) and metrics to log."""
        logits = self.predict(params, buffers, tasks.support_x, tasks.support_y, tasks.query_x, tasks.ways)
        return query_loss(logits, tasks.query_y)


def query_loss(logits: torch.Tensor, query_y: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), query_y.reshape(-1))
    acc = (logits.argmax(-1) == query_y).float().mean()
    return loss, {"loss": loss.detach(), "accuracy": acc.detach()}


@dataclass(frozen=True)
class LearnerSpec:
    name: str
    config: type  # dataclass with a `name` field and the method's hyperparameters
    build: Callable[[Any, nn.Module], Learner]
    description: str = ""
    paper: str = ""
    # the task source used when the config says `tasks.source: auto`: labeled episodes for meta-learners,
    # unlabeled augmented views for self-supervised methods
    default_source: str = "labeled"


LEARNERS: Registry[LearnerSpec] = Registry("learner", "learner.name")


def register_learner(spec: LearnerSpec) -> LearnerSpec:
    return LEARNERS.add(spec.name, spec)


def get_learner(name: str) -> LearnerSpec:
    return LEARNERS.lookup(name)
