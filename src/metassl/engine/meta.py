"""Forward and backward of one training batch: chunks, the vmap-or-loop choice, bf16 autocast, torch.compile.

The options are the learner's `EngineOptions` (`learner.tasks_per_chunk`, `learner.path`, `learner.amp`,
`learner.compile`, `train.channels_last`), read here and nowhere else. Every batch type (a `TaskBatch` of episodes,
a `ViewBatch` of augmented views) has `num_tasks` and `chunks(n)`, so one path serves them all.

- Chunks: the batch of T tasks is processed `tasks_per_chunk` tasks at a time; each chunk's loss (a mean over
  its tasks) is back-propagated scaled by its share of the tasks, so the accumulated gradient equals the unchunked
  one, for any chunk size (the last chunk may be smaller). Memory is bounded by the chunk, not the batch. The
  chunks' `state` tensors are concatenated along their first dimension.
- Path (learners that map per-task functions, `Learner.maps_tasks`): "vmap" runs the tasks of a chunk as one
  vectorized call, "loop" one task at a time; without a chunk size, the loop path back-propagates every task as soon
  as its loss is computed (as learn2learn does: only one task's graph is alive, which also keeps a CPU's caches warm;
  the gradient is the same). With `auto` the first steps alternate between the two (a warm-up step each, then
  `trial_rounds` timed steps each; the gradients are the same either way, so training is unaffected) and the faster
  path is kept; the choice and the timings are reported through `info` (the trainer prints it and writes a
  `kind: info` row to metrics.jsonl). The learner is never changed: each path is a learner made by `with_options`.
  The two paths differ in the last bits, so the choice (or, during the trials, the trial steps left and their
  timings) is part of a run's state: `state_dict()` goes into every checkpoint and `load_state_dict` continues it
  on resume, so a resumed run takes the same path on every step as an uninterrupted one.
- amp "bf16": the forward runs under `torch.autocast("cuda", torch.bfloat16)`; on other devices it is ignored with
  a note.
- compile: the chunk loss is wrapped in `torch.compile`; if compiling fails, the step is redone eagerly and compile
  stays off (with a note).
- Parameter groups (`Learner.param_groups`, e.g. a GAN's discriminator and generator): each group's loss in
  `LossOutput.group_losses` is back-propagated into that group's parameters only (`torch.autograd.backward` with
  `inputs`), from one forward pass; the engine's optimizer has one param group per group (`optim.param_groups`).
"""

from __future__ import annotations

import contextlib
import time
from typing import Any, Callable

import torch

from .. import parallel
from ..learners.base import Learner, LossOutput
from .build import Model
from .optim import group_params

Info = Callable[[str, dict[str, Any]], None]
PATHS = ("vmap", "loop")


def _print_info(message: str, values: dict[str, Any]) -> None:
    print(message)


class StepRunner:
    def __init__(self, model: Model, device: torch.device | str, info: Info | None = None, trial_rounds: int = 2):
        self.model = model
        self.device = torch.device(device)
        self.info = info or _print_info
        opts = model.learner.options
        self.options = opts
        self.autocast = opts.amp == "bf16" and self.device.type == "cuda"
        if opts.amp == "bf16" and not self.autocast:
            self.info(f"learner.amp=bf16 is ignored on {self.device.type}: bf16 autocast is used on CUDA only; "
                      f"training in float32", {"event": "amp", "amp": "none", "requested": "bf16"})
        self.compiled: Callable | None = torch.compile(self._loss) if opts.compile else None
        self.total, self.world_size = 0, 1  # set per batch by __call__
        self.plan: list[str] = []
        self.timings: dict[str, list[float]] = {}
        self.learners: dict[str, Learner] = {}
        self.learner: Learner = model.learner
        # parameter groups with their own losses: name -> the group's parameter tensors
        self.groups = {g.name: [model.params[k] for k in names] for g, names in group_params(model.learner,
                                                                                              model.params)}
        if model.learner.maps_tasks and opts.path in ("auto", *PATHS):
            self.learners = {p: model.learner.with_options(path=p) for p in PATHS}
            if opts.path == "auto":
                self.plan = [p for _ in range(1 + trial_rounds) for p in PATHS]
                self.timings = {p: [] for p in PATHS}
            else:
                self.learner = self.learners[opts.path]

    # -- one batch ----------------------------------------------------------------------------------------------
    def __call__(self, batch: Any, total: int | None = None, world_size: int = 1) -> LossOutput:
        """Forward and backward (gradients accumulate into the params' .grad); returns the detached loss, metrics
        and state, each weighted by this batch's share of the global objective: `batch` may be one process's share
        of a global batch of `total` tasks (default: all of it) on `world_size` processes. Summing the gradients
        (and the weighted metrics) over the processes then gives exactly the one-process values."""
        self.total = batch.num_tasks if total is None else total
        self.world_size = world_size
        if not self.plan:
            return self._run(batch)
        path = self.plan.pop(0)
        self.learner = self.learners[path]
        self._sync()
        t0 = time.perf_counter()
        out = self._run(batch)
        self._sync()
        self.timings[path].append(time.perf_counter() - t0)
        if not self.plan:
            self._choose()
        return out

    def _choose(self) -> None:
        # the first step of each path is a warm-up (allocator, kernel selection, compilation)
        mean = {p: sum(t[1:]) / max(len(t) - 1, 1) for p, t in self.timings.items()}
        if parallel.active():  # every process takes the same path: the choice by the timings summed over them
            summed = parallel.all_reduce_sum(torch.tensor([mean[p] for p in PATHS], dtype=torch.float64))
            mean = {p: float(v) / parallel.world_size() for p, v in zip(PATHS, summed)}
        best = min(mean, key=mean.get)
        self.learner = self.learners[best]
        other = [p for p in mean if p != best][0]
        self.info(f"learner.path=auto: using {best} ({mean[best]:.3f} s per meta-batch; {other} "
                  f"{mean[other]:.3f} s) on {self.device}",
                  {"event": "path", "path": best, **{f"{p}_s": round(v, 4) for p, v in mean.items()},
                   "device": str(self.device)})

    def state_dict(self) -> dict[str, Any]:
        """The path choice of `learner.path=auto` ({} otherwise): the path kept, or the trials left and their
        timings."""
        if not self.learners or self.options.path != "auto":
            return {}
        return {"path": None if self.plan else self.path, "plan": list(self.plan),
                "timings": {p: list(t) for p, t in self.timings.items()}}

    def load_state_dict(self, state: dict[str, Any] | None) -> str | None:
        """Continue the choice saved by `state_dict` (a resumed run); returns the path restored, if one was chosen.
        Nothing is reported through `info`: the uninterrupted run reported the choice once, and so does this one."""
        if not state or not self.learners or self.options.path != "auto":
            return None
        plan = [p for p in state.get("plan") or [] if p in PATHS]
        if not plan and state.get("path") in PATHS:
            self.plan, self.learner = [], self.learners[state["path"]]
            return state["path"]
        if plan:
            saved = state.get("timings") or {}
            self.plan = plan
            self.timings = {p: [float(x) for x in saved.get(p, [])] for p in PATHS}
        return None

    @property
    def path(self) -> str | None:
        """The vmap/loop path in use (None for learners that do not map over tasks)."""
        return self.learner.options.path if self.learners else None

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _loss(self, learner: Learner, params, buffers, batch) -> LossOutput:
        return learner.loss(params, buffers, batch)

    def _run(self, batch: Any) -> LossOutput:
        if self.compiled is not None:
            try:
                return self._chunks(batch, self.compiled)
            except Exception as e:  # compilation problems surface at the first call: go on eagerly
                self.compiled = None
                for p in self.model.params.values():
                    p.grad = None
                self.info(f"learner.compile: torch.compile failed ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
                          f"continuing without it", {"event": "compile", "compile": False, "error": type(e).__name__})
        return self._chunks(batch, self._loss)

    def _backward_groups(self, losses: dict[str, torch.Tensor], share: float) -> None:
        """Each group's loss into its own parameters (the graph is kept until the last group's backward)."""
        if set(losses) != set(self.groups):
            raise KeyError(f"learner {self.model.config.learner.name}: its loss returned group losses "
                           f"{sorted(losses)} for the parameter groups {sorted(self.groups)}")
        names = [n for n in self.groups if losses[n].requires_grad]
        for i, name in enumerate(names):
            torch.autograd.backward(losses[name].float() * share, inputs=self.groups[name],
                                    retain_graph=i < len(names) - 1)

    def _chunks(self, batch: Any, loss_fn: Callable) -> LossOutput:
        total = self.total
        chunk = self.options.tasks_per_chunk
        if chunk is None and self.path == "loop":
            chunk = 1  # the loop path back-propagates each task at once: one task's graph alive, cache-warm
        global_loss = self.learner.global_loss
        if global_loss:  # the loss is already the whole batch's (gathered over the processes): one call
            parts = [batch]
        else:
            parts = batch.chunks(chunk) if chunk and chunk < batch.num_tasks else [batch]
        amp = torch.autocast("cuda", dtype=torch.bfloat16) if self.autocast else contextlib.nullcontext()
        loss_sum: torch.Tensor | None = None
        metrics: dict[str, torch.Tensor] = {}
        states: list[dict[str, torch.Tensor]] = []
        m = self.model
        for part in parts:
            # a loss of the gathered global batch is the same on every process: each takes 1/world of it
            share = 1.0 / self.world_size if global_loss else part.num_tasks / total
            with amp:
                out = loss_fn(self.learner, m.params, m.buffers, part)
            if out.group_losses:
                self._backward_groups(out.group_losses, share)
            elif out.loss.requires_grad:
                (out.loss.float() * share).backward()
            loss = out.loss.detach().float() * share
            loss_sum = loss if loss_sum is None else loss_sum + loss
            for k, v in out.metrics.items():
                v = torch.as_tensor(v).detach().float() * share
                metrics[k] = v if k not in metrics else metrics[k] + v
            states.append({k: v.detach() for k, v in out.state.items()})
        assert loss_sum is not None
        state = states[0] if len(states) == 1 else {k: torch.cat([s[k] for s in states]) for k in states[0]}
        return LossOutput(loss_sum, metrics, state)
