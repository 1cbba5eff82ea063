"""Forward and backward of one meta-batch: task chunks, the vmap-or-loop choice, bf16 autocast, torch.compile.

The options come from the learner's config (`learner.tasks_per_chunk`, `learner.path`, `learner.amp`,
`learner.compile`, see `metassl.learners.inner.InnerLoopConfig`); a learner without them (ProtoNet) gets the plain
`loss.backward()` of the whole batch.

- Chunks: the meta-batch of T tasks is processed `tasks_per_chunk` tasks at a time; each chunk's loss (a mean over
  its tasks) is back-propagated scaled by its share of the tasks, so the accumulated gradient equals the unchunked
  one, for any chunk size (the last chunk may be smaller). Memory is bounded by the chunk, not the meta-batch.
- Path: "vmap" runs the tasks of a chunk as one vectorized call, "loop" one task at a time; without a chunk size,
  the loop path back-propagates every task as soon as its loss is computed (as learn2learn does: only one task's
  graph is alive, which also keeps a CPU's caches warm; the gradient is the same). With `auto` the first
  steps alternate between the two (a warm-up step each, then `trial_rounds` timed steps each; the gradients are the
  same either way, so training is unaffected) and the faster path is kept; the choice and the timings are reported
  through `info` (the trainer prints it and writes a `kind: info` row to metrics.jsonl).
- amp "bf16": the forward runs under `torch.autocast("cuda", torch.bfloat16)`; on other devices it is ignored with
  a note.
- compile: the chunk loss is wrapped in `torch.compile`; if compiling fails, the step is redone eagerly and compile
  stays off (with a note).
"""

from __future__ import annotations

import contextlib
import time
from typing import Any, Callable

import torch

from ..data.episodic import TaskBatch
from .build import Model

Info = Callable[[str, dict[str, Any]], None]
PATHS = ("vmap", "loop")


def _print_info(message: str, values: dict[str, Any]) -> None:
    print(message)


class StepRunner:
    def __init__(self, model: Model, device: torch.device | str, info: Info | None = None, trial_rounds: int = 2):
        self.model, self.learner = model, model.learner
        self.device = torch.device(device)
        self.info = info or _print_info
        opts = model.config.learner
        self.chunk: int | None = getattr(opts, "tasks_per_chunk", None)
        amp = getattr(opts, "amp", "none")
        self.autocast = amp == "bf16" and self.device.type == "cuda"
        if amp == "bf16" and not self.autocast:
            self.info(f"learner.amp=bf16 is ignored on {self.device.type}: bf16 autocast is used on CUDA only; "
                      f"training in float32", {"event": "amp", "amp": "none", "requested": "bf16"})
        self.compiled: Callable | None = None
        if getattr(opts, "compile", False):
            self.compiled = torch.compile(self._loss)
        path = getattr(opts, "path", None)
        self.plan: list[str] = []
        self.timings: dict[str, list[float]] = {}
        if path == "auto" and hasattr(self.learner, "path"):
            self.plan = [p for _ in range(1 + trial_rounds) for p in PATHS]
            self.timings = {p: [] for p in PATHS}
        elif path in PATHS and hasattr(self.learner, "path"):
            self.learner.path = path

    @property
    def choosing(self) -> bool:
        return bool(self.plan)

    # -- one meta-batch -----------------------------------------------------------------------------------------
    def __call__(self, tasks: TaskBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Forward and backward (gradients accumulate into the params' .grad); returns the loss and metrics."""
        if not isinstance(tasks, TaskBatch):  # e.g. the SSL learners' ViewBatch: one call, no chunks or paths
            return self._run_whole(tasks)
        if not self.plan:
            return self._run(tasks)
        path = self.plan.pop(0)
        self.learner.path = path
        self._sync()
        t0 = time.perf_counter()
        out = self._run(tasks)
        self._sync()
        self.timings[path].append(time.perf_counter() - t0)
        if not self.plan:
            self._choose()
        return out

    def _choose(self) -> None:
        # the first step of each path is a warm-up (allocator, kernel selection, compilation)
        mean = {p: sum(t[1:]) / max(len(t) - 1, 1) for p, t in self.timings.items()}
        best = min(mean, key=mean.get)
        self.learner.path = best
        other = [p for p in mean if p != best][0]
        self.info(f"learner.path=auto: using {best} ({mean[best]:.3f} s per meta-batch; {other} "
                  f"{mean[other]:.3f} s) on {self.device}",
                  {"event": "path", "path": best, **{f"{p}_s": round(v, 4) for p, v in mean.items()},
                   "device": str(self.device)})

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _loss(self, params, buffers, support_x, support_y, query_x, query_y, ways: int, views=None):
        return self.learner.loss(params, buffers, TaskBatch(support_x, support_y, query_x, query_y, ways,
                                                            views=views))

    def _run(self, tasks: TaskBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if self.compiled is not None:
            try:
                return self._chunks(tasks, self.compiled)
            except Exception as e:  # compilation problems surface at the first call: go on eagerly
                self.compiled = None
                for p in self.model.params.values():
                    p.grad = None
                self.info(f"learner.compile: torch.compile failed ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
                          f"continuing without it", {"event": "compile", "compile": False, "error": type(e).__name__})
        return self._chunks(tasks, self._loss)

    def _whole_loss(self, params, buffers, batch):
        return self.learner.loss(params, buffers, batch)

    def _run_whole(self, batch: Any) -> tuple[torch.Tensor, dict[str, Any]]:
        """A batch that is not a TaskBatch (the self-supervised learners' ViewBatch): the learner's loss of the whole
        batch under the same amp/compile options, then backward. Non-scalar aux entries (e.g. MoCo's keys for its
        queue) are passed on detached, for `after_step`; the trainer logs only the scalars."""
        if self.compiled is not None and not hasattr(self, "_compiled_whole"):
            self._compiled_whole = torch.compile(self._whole_loss)
        fn = getattr(self, "_compiled_whole", None) if self.compiled is not None else None
        amp = torch.autocast("cuda", dtype=torch.bfloat16) if self.autocast else contextlib.nullcontext()
        m = self.model
        try:
            with amp:
                loss, aux = (fn or self._whole_loss)(m.params, m.buffers, batch)
        except Exception as e:
            if fn is None:
                raise
            self.compiled = None  # compilation problems surface at the first call: go on eagerly
            self.info(f"learner.compile: torch.compile failed ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
                      f"continuing without it", {"event": "compile", "compile": False, "error": type(e).__name__})
            with amp:
                loss, aux = self._whole_loss(m.params, m.buffers, batch)
        if loss.requires_grad:
            loss.float().backward()
        aux = {k: (v.detach().float() if v.dim() == 0 else v.detach()) if torch.is_tensor(v) else v
               for k, v in aux.items()}
        return loss.detach().float(), aux

    def _chunks(self, tasks: TaskBatch, loss_fn: Callable) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        total = tasks.num_tasks
        chunk = self.chunk
        if chunk is None and getattr(self.learner, "path", None) == "loop":
            chunk = 1  # the loop path back-propagates each task at once: one task's graph alive, cache-warm
        parts = tasks.chunks(chunk) if chunk and chunk < total else [tasks]
        amp = (torch.autocast("cuda", dtype=torch.bfloat16) if self.autocast else contextlib.nullcontext())
        loss_sum: torch.Tensor | None = None
        metrics: dict[str, torch.Tensor] = {}
        m = self.model
        for part in parts:
            share = part.num_tasks / total
            with amp:
                loss, mets = loss_fn(m.params, m.buffers, part.support_x, part.support_y, part.query_x,
                                     part.query_y, part.ways, part.views)
            if loss.requires_grad:
                (loss.float() * share).backward()
            loss = loss.detach().float() * share
            loss_sum = loss if loss_sum is None else loss_sum + loss
            for k, v in mets.items():
                v = v.detach().float() * share
                metrics[k] = v if k not in metrics else metrics[k] + v
        assert loss_sum is not None
        return loss_sum, metrics
