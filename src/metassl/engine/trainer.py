"""The training loop: the one place that owns state (tensors, optimizer, random generators, files).

One step: draw a batch of tasks on the device -> preprocess on the device -> learner.loss (a pure function of
params, buffers and tasks) -> backward -> optimizer step -> learner.update (new buffer values, stored here) -> log;
every so often validate and checkpoint. Losses are checked for NaN/inf every step on the CPU and when they are
logged on accelerators; parameters and buffers before every checkpoint on every device, so a checkpoint never holds
NaN weights and the last good one is never overwritten by a diverged step.

A run folder has one writer: the trainer holds its lock (engine/runlock.py) from start to end (rank 0 under
torchrun), and first cleans what an interrupted write left behind (atomic.clean_leftovers). A run is checkpointed
every `train.checkpoint_every` steps and every `train.checkpoint_minutes`; resuming restores the tensors, the
optimizer, every random generator, the vmap/loop choice and the steps of the unfinished logging window, so a
resumed run and its metrics.jsonl equal an uninterrupted one. `--resume` of a run stopped before its first
checkpoint starts it again from step 0. SIGTERM (what schedulers send) stops a run like SIGINT; a checkpoint being
written is finished first.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import os
import platform
import shutil
import signal
import random
import sys
import threading
import time
import warnings
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import ConfigError, RunConfig, dump_yaml, resolve_stored, task_source_name
from ..data.augment import resolve_augment
from ..data.episodic import check_task_shape
from ..data.registry import load_dataset
from ..data.task_sources import AuxiliaryViews, make_task_source
from ..data.regression import is_regression
from ..eval.episodes import Protocol, evaluate
from ..eval.regression import RegressionProtocol, evaluate_regression
from ..eval.features import embed_images
from ..eval.knn import KNNMonitor
from ..learners import LossOutput, get_learner
from ..atomic import LEFTOVER, atomic_write_text, clean_leftovers
from .build import Model, build_model, init_encoder_from
from .frozen import embed_with_run
from .generative import load_generator
from .checkpoint import (OTHER, CheckpointError, CheckpointWriteError, check_finite, find_checkpoint, flatten_optimizer,
                         load_checkpoint, max_abs, non_finite, read_run_learner, save_checkpoint, state_value,
                         unflatten_optimizer)
from . import distributed, runlock
from .allocator import MemoryGuard, tune_allocator
from .distributed import DistInfo, resolve_device
from .logging import RunLogger, plot_learning_curves, read_metrics
from .meta import StepRunner
from .optim import lr_factor, make_optimizer, optimizer_params, set_lr
from .provenance import recorded_data_root, with_data_root


@dataclass
class TrainResult:
    run_dir: Path
    steps: int
    seconds: float
    final_loss: float | None
    best_val: float | None
    history: list[dict[str, Any]] = field(default_factory=list)


def check_regression_run(cfg: RunConfig) -> None:
    """A regression data set (real targets) trains a learner that regresses, on the `regression` task source."""
    from ..learners.base import check_task_type

    check_task_type(get_learner(cfg.learner.name), "regression", cfg.data.dataset)
    source = task_source_name(cfg.tasks.source, cfg.learner.name)
    if source != "regression":
        raise ConfigError(f"data.dataset={cfg.data.dataset} gives regression tasks (real targets), but tasks.source="
                          f"{cfg.tasks.source} ({source}) draws classification episodes: set tasks.source=regression")
    for key, value, ok in (("data.train_fraction", cfg.data.train_fraction, cfg.data.train_fraction == 1.0),
                           ("train.knn_every", cfg.train.knn_every, not cfg.train.knn_every),
                           ("aux.rotation", cfg.aux.rotation, not cfg.aux.rotation),
                           ("aux.contrastive", cfg.aux.contrastive, not cfg.aux.contrastive)):
        if not ok:
            raise ConfigError(f"{key}={value} needs class labels; a regression data set ({cfg.data.dataset}) has "
                              f"none: leave {key} at its default")


def default_run_dir(cfg: RunConfig) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path(cfg.output_dir) / f"{cfg.name.replace('/', '_')}-{stamp}"


def first_non_finite(losses: list[torch.Tensor | float]) -> int | None:
    """Index of the first NaN/inf among per-step losses (one device sync for the whole list), or None."""
    if not losses:
        return None
    v = torch.stack([torch.as_tensor(x).float().reshape(()) for x in losses])
    bad = (~torch.isfinite(v)).nonzero()
    return int(bad[0]) if bad.numel() else None


def class_fraction(split, fraction: float, seed: int):
    """A random subset of the split's classes (at least 2), the same for a given seed."""
    n = max(2, round(fraction * split.num_classes))
    g = torch.Generator().manual_seed(seed + 104729)
    keep = torch.randperm(split.num_classes, generator=g)[:n].sort().values
    return split.subset(keep.to(split.device), name=split.name)


def injected_fault(dist: DistInfo) -> int | None:
    """For the tests of torchrun restarts only: METASSL_FAULT="RANK:STEP" kills that process (SIGKILL, as a crashed
    machine) before that step in the first attempt of a launch; the step this process dies at, or None."""
    spec = os.environ.get("METASSL_FAULT")
    if not spec or int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0:
        return None
    rank, at = (int(v) for v in spec.split(":"))
    return at if dist.rank == rank else None


# errors of a write that the user fixes (full disk, quota, read-only or foreign folder): one line, not a traceback
WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG}


def write_error(e: OSError, run_dir: Path) -> CheckpointWriteError:
    where = e.filename or run_dir
    return CheckpointWriteError(f"{where}: cannot write ({e.strerror or e}); free disk space or make {run_dir} "
                                f"writable, then continue with `metassl train --resume {run_dir}`")


def prepare_run_dir(run_dir: str | Path, restarted: bool = False, is_main: bool = True, echo=print) -> bool:
    """For `metassl train CONFIG --run-dir DIR` (not --resume): whether DIR is to be resumed (a torchrun restart of
    a run that wrote its config), else nothing, or a ConfigError / RunLockedError for a folder that is in use or
    holds something else. Only the main process checks: the others follow it (they read the same folder)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir() or not (is_main or restarted):
        return False
    if is_main:
        runlock.check_free(run_dir)  # a live run: say so, rather than "exists"
    # what a killed write leaves (cleaned at start) and a stale lock do not make a folder "used"
    entries = [p for p in run_dir.iterdir() if p.name != runlock.LOCK_NAME and not LEFTOVER.fullmatch(p.name)]
    if not entries:
        return False
    if (run_dir / "config.yaml").is_file():
        if restarted:
            echo(f"restart {os.environ.get('TORCHELASTIC_RESTART_COUNT', '')} of a torchrun launch: resuming {run_dir}")
            return True
        raise ConfigError(f"run folder {run_dir} exists and is not empty: continue it with "
                          f"`metassl train --resume {run_dir}` or choose another with --run-dir")
    if restarted:  # the first attempt died before writing its config: start again
        return False
    raise ConfigError(f"run folder {run_dir} exists, is not empty and is not a run folder (no config.yaml): "
                      f"choose another with --run-dir, or empty it")


def resume_checkpoint(run_dir: Path) -> Path | None:
    """The checkpoint a --resume continues: the newest of `latest` and `best` (best is a full checkpoint too, and
    newer when the run stopped between a validation and the next checkpoint), or None when there is none yet."""
    try:
        folder = find_checkpoint(run_dir)
    except CheckpointError:
        folder = None
    ckdir = run_dir / "checkpoints"
    best = ckdir / "best"
    if folder is None and not (best / "state.json").is_file() and ckdir.is_dir() and any(
            p.is_dir() and (p.name == "best" or p.name.startswith("step_")) for p in ckdir.iterdir()):
        # damaged checkpoints are not silently replaced by a new start (which would prune them)
        raise CheckpointError(f"{ckdir}: holds checkpoint folders but none is complete (no state.json): move them "
                              f"away to start the run again from step 0, or restore them")
    if (best / "training.safetensors").is_file():
        try:
            if folder is None or _step_of(best) > _step_of(folder):
                folder = best
        except (CheckpointError, OSError, ValueError):
            pass  # an unreadable best is not a reason to fail: latest (or the error it gives) stands
    return folder


def _step_of(folder: Path) -> int:
    return int(json.loads((folder / "state.json").read_text())["step"])


class _StopSignals:
    """SIGTERM (sent by schedulers and torchrun) and SIGINT stop training with KeyboardInterrupt, raised in the main
    thread; while a checkpoint is written (`deferred`) a signal waits for the write to end, so no write is torn."""

    def __init__(self):
        self.pending: str | None = None
        self.depth = 0
        self.previous: dict[int, Any] = {}

    def install(self) -> "_StopSignals":
        if threading.current_thread() is not threading.main_thread():
            return self  # signal handlers can only be set from the main thread
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                old = signal.getsignal(sig)
                if old is signal.SIG_IGN:
                    continue  # e.g. SIGINT of a background job: keep ignoring it
                signal.signal(sig, self._handle)
                self.previous[sig] = old
            except (ValueError, OSError):
                pass
        return self

    def restore(self) -> None:
        for sig, old in self.previous.items():
            signal.signal(sig, old if old is not None else signal.SIG_DFL)
        self.previous = {}

    def _handle(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        if self.depth:
            self.pending = name
            return
        raise KeyboardInterrupt(name)

    @contextlib.contextmanager
    def deferred(self):
        self.depth += 1
        try:
            yield
        finally:
            self.depth -= 1
        if not self.depth and self.pending:  # only reached when the write succeeded
            name, self.pending = self.pending, None
            raise KeyboardInterrupt(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def environment() -> dict[str, Any]:
    return {"torch": torch.__version__, "python": platform.python_version(), "platform": platform.platform(),
            "cuda": torch.version.cuda if torch.cuda.is_available() else None,
            "device_name": torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor() or
            platform.machine(), "threads": torch.get_num_threads()}


class Trainer:
    def __init__(self, cfg: RunConfig, run_dir: Path, resume: bool = False, data_root: str | None = None,
                 dist: DistInfo | None = None, echo=print, origin: dict[str, Any] | None = None,
                 latest_link: bool = False):
        """`origin`: what started the run (engine/provenance.make_origin), kept in every checkpoint with the data
        root; `latest_link`: point `<run_dir's parent>/latest` at this run once its config is written."""
        self.dist = dist or DistInfo.from_env()
        self.origin, self.latest_link = dict(origin or {}), latest_link
        self.cfg, self.run_dir, self.echo = cfg, Path(run_dir), echo if self.dist.is_main else (lambda *a, **k: None)
        echo = self.echo
        # reuse freed activation memory instead of fresh mmap pages per step, growth bounded (engine/allocator.py)
        self.memory = MemoryGuard(tune_allocator())
        if cfg.train.threads:
            torch.set_num_threads(cfg.train.threads)
        if cfg.train.deterministic:
            torch.use_deterministic_algorithms(True)
        self.device = resolve_device(cfg.train.device, self.dist)
        distributed.setup(self.dist, self.device, cfg.train.dist_timeout)
        self.lock: runlock.RunLock | None = None
        self.signals: _StopSignals | None = None
        if self.dist.is_main:  # one writer per run folder (the other processes of a torchrun launch never write)
            try:
                self.lock = runlock.acquire(self.run_dir, echo)
            except runlock.RunLockedError:
                raise
            except OSError as e:  # e.g. a read-only folder, or someone else's
                raise write_error(e, self.run_dir) from e
        try:
            self._setup(cfg, resume, data_root)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Release the run folder (the lock). `run()` does it when it ends; call it for a Trainer never run."""
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def _setup(self, cfg: RunConfig, resume: bool, data_root: str | None) -> None:
        echo = self.echo
        if self.dist.is_main:
            done = [*clean_leftovers(self.run_dir), *(f"checkpoints/{x}" for x in
                                                       clean_leftovers(self.run_dir / "checkpoints"))]
            if done:
                echo(f"{self.run_dir}: cleaned up after an interrupted write: {', '.join(done[:5])}"
                     f"{f' and {len(done) - 5} more' if len(done) > 5 else ''}")
        distributed.barrier(self.dist)  # every process sees the cleaned folder before choosing what to resume
        resume_from = resume_checkpoint(self.run_dir) if resume else None
        if resume and resume_from is None:
            echo(f"{self.run_dir} holds no checkpoint yet (the run stopped before its first one): starting it again "
                 f"from step 0; its metrics.jsonl is replaced")
        resume = resume_from is not None
        # the same seed on every process: the same initialization, and the same global batches drawn by each
        seed_everything(cfg.seed)
        if resume:  # the origin recorded at the start; a resume without --data-root reads where the run read
            old = _recorded_origin(resume_from)
            self.origin = {**old, **self.origin}
            data_root = data_root or (recorded_data_root(old) if cfg.data.dataset == old.get("dataset",
                                                                                          cfg.data.dataset) else None)
        root = data_root or cfg.data.root
        self.origin = with_data_root({**self.origin, "dataset": cfg.data.dataset}, root)
        self.data_root = root
        d = cfg.data
        if d.datasets:  # several data sets in one split, each converted to one shape (data/multidomain.py)
            from ..data.multidomain import load_domains

            self.train_split = load_domains(list(d.datasets), d.train_split, root, d.image_size, d.channels,
                                            list(d.domain_weights), self.device, d.options)
        else:
            self.train_split = load_dataset(d.dataset, d.train_split, root, d.image_size, self.device, d.options)
        self.task_type = "regression" if is_regression(self.train_split) else "classification"
        if self.task_type == "regression":  # real targets: the MAML family, on the regression task source
            check_regression_run(cfg)
        else:
            from ..learners.base import check_task_type

            check_task_type(get_learner(cfg.learner.name), "classification", d.dataset)
        if d.train_fraction < 1.0:
            self.train_split = class_fraction(self.train_split, d.train_fraction, cfg.seed)
            echo(f"data.train_fraction={d.train_fraction}: training on {self.train_split.num_classes} classes "
                 f"({self.train_split.images.shape[0]} images)")
        if d.datasets and d.val_split and cfg.train.val_every:
            from ..data.multidomain import load_domains

            self.val_split = load_domains(list(d.datasets), d.val_split, root, d.image_size, d.channels,
                                          list(d.domain_weights), self.device, d.options)
        else:
            self.val_split = (load_dataset(d.dataset, d.val_split, root, d.image_size, self.device, d.options)
                              if d.val_split and cfg.train.val_every else None)
        try:
            source = task_source_name(cfg.tasks.source, cfg.learner.name)
            if source == "labeled":  # unlabeled sources (views) need no N-way K-shot tasks from the training split
                check_task_shape(self.train_split, cfg.tasks.ways, cfg.tasks.shots, cfg.tasks.queries)
            if self.val_split is not None and self.task_type == "regression":
                self.val_split.check(cfg.eval.shots[0], cfg.eval.queries)
            elif self.val_split is not None:
                check_task_shape(self.val_split, cfg.eval.ways, cfg.eval.shots[0], cfg.eval.queries,
                                 cfg.eval.unlabeled, cfg.eval.distractors)
        except ValueError as e:
            raise ConfigError(f"tasks/eval settings do not fit the data: {e}") from e
        from ..data.input_stats import with_input_stats

        self.preprocess = with_input_stats(self.train_split)  # the statistics go into every checkpoint
        # e.g. the `classes` source's number of base classes, stored in config.yaml so the run rebuilds its head
        self.cfg = cfg = dataclasses.replace(cfg, tasks=cfg.tasks.for_split(self.train_split))
        self.model: Model = build_model(cfg, self.train_split.image_shape, self.preprocess, self.device,
                                        global_batchnorm=self.dist.active and cfg.train.sync_batchnorm)
        self._check_shares()
        distributed.broadcast_tensors(self.dist, self.model.state_tensors())
        self.optimizer = make_optimizer(optimizer_params(self.model.learner, self.model.params), cfg.optim)
        self.generator = torch.Generator(device=self.device).manual_seed(cfg.seed * 1000003)
        spec = get_learner(cfg.learner.name)
        self.source = make_task_source(cfg.tasks, self.train_split, self.generator, spec.default_source,
                                       config=cfg, device=self.device, embed=lambda run, split: embed_with_run(
                                           run, split, self.device),
                                       load_generator=lambda run: load_generator(run, self.device))
        if cfg.aux.contrastive > 0:  # the contrastive auxiliary term needs two augmented views of every image
            self.source = AuxiliaryViews(self.source, resolve_augment(cfg.augment, d.dataset), self.generator)
        self.knn = None  # online kNN monitor (train.knn_every): memory bank from the train split, test-split queries
        if cfg.train.knn_every:
            test = load_dataset(d.dataset, d.test_split, root, d.image_size, self.device, d.options)
            try:
                self.knn = KNNMonitor(self.model, self.train_split, test, self.preprocess, d.dataset)
            except ValueError as e:
                raise ConfigError(f"train.knn_every: {e}") from e
        self.step, self.best_val = 0, None
        self.window: list[dict[str, Any]] = []  # the steps since the last metrics.jsonl row (saved with a checkpoint)
        self.elapsed0 = 0.0  # training seconds before this process (a resumed run)
        self.last_good: tuple[int, Path, float] | None = None  # (step, folder, largest |weight|) of the last checkpoint
        self.runner_state: dict[str, Any] = {}  # a resumed run's vmap/loop choice (StepRunner.load_state_dict)
        self.param_names = list(self.model.params)
        self.init_report = None
        self.runner: StepRunner | None = None  # chunks, vmap/loop choice, amp, compile: see engine/meta.py
        self.warned: set[str] = set()
        spec_fits = get_learner(cfg.learner.name)
        if spec_fits.needs_init_from and not cfg.init_from:
            raise ConfigError(
                f"learner {cfg.learner.name} starts from a trained run: set init_from=RUN, a run of "
                f"{' / '.join(spec_fits.init_from_learners) or 'any learner'} (e.g. train omniglot/baseline_5w1s first)")
        if cfg.init_from and not resume:
            source_learner = read_run_learner(cfg.init_from)
            if spec_fits.init_from_learners and source_learner not in spec_fits.init_from_learners:
                raise ConfigError(
                    f"learner {cfg.learner.name} needs init_from to be a run of "
                    f"{' / '.join(spec_fits.init_from_learners)} (a classifier trained on the base classes); "
                    f"{cfg.init_from} is a {source_learner} run. Train one first, e.g. `metassl train "
                    f"omniglot/{spec_fits.init_from_learners[0]}_5w1s`, and pass its run folder")
            self.init_report = init_encoder_from(self.model, cfg.init_from)
            r = self.init_report
            self.echo(f"encoder initialized from {r['init_from']} ({r['source_learner']}, step {r['source_step']}): "
                      f"{r['copied']} tensors; not transferred: {len(r['not_transferred'])} "
                      f"({', '.join(r['not_transferred'][:4])}{'...' if len(r['not_transferred']) > 4 else ''})")
        if resume:
            self._resume(resume_from)
        elif self.dist.is_main:
            try:
                self.run_dir.mkdir(parents=True, exist_ok=True)
                atomic_write_text(self.run_dir / "config.yaml", dump_yaml(cfg))
                if self.latest_link:
                    link_latest(self.run_dir)
                # a new start in a folder of an earlier attempt (stopped before its first checkpoint): a new log
                (self.run_dir / "metrics.jsonl").unlink(missing_ok=True)
                shutil.rmtree(self.run_dir / "tensorboard", ignore_errors=True)
            except OSError as e:
                raise write_error(e, self.run_dir) from e
        if resume and self.dist.is_main:
            self._drop_engine_notes_after(self.step)
        distributed.barrier(self.dist)
        try:
            self.logger = RunLogger(self.run_dir, self.dist, cfg.train.tensorboard, self.step if resume else None)
        except OSError as e:
            raise write_error(e, self.run_dir) from e
        if self.init_report:
            self.logger.log(0, {k: v for k, v in self.init_report.items() if k != "not_transferred"}, kind="info")

    def _drop_engine_notes_after(self, step: int) -> None:
        """The engine's notes (vmap/loop choice, compile) logged at the resumed step were written while computing the
        next step, after the checkpoint: the resumed run writes them again, so the old ones go (RunLogger drops the
        later steps' rows)."""
        path = self.run_dir / "metrics.jsonl"
        rows = read_metrics(self.run_dir)
        kept = [r for r in rows if not (r.get("kind") == "info" and "event" in r and r.get("step") == step)]
        if len(kept) != len(rows):
            atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in kept))

    def _check_shares(self) -> None:
        """Several processes split each global batch; every process needs a share (and the same shape of work)."""
        if not self.dist.active:
            return
        c, world = self.cfg, self.dist.world_size
        if hasattr(c.tasks, "batch_size"):  # batches of images (views): split by image
            n, what, key = c.tasks.batch_size, "images", "tasks.batch_size"
        else:
            n, what, key = c.tasks.tasks_per_batch, "tasks", "tasks.tasks_per_batch"
        if self.model.learner.sequential_tasks:
            raise ConfigError(f"learner.inner_state=carry runs the tasks of a meta-batch one after the other through "
                              f"one inner Adam state (as the Reptile reference code), which {world} processes cannot "
                              f"share; train on one process, or set learner.inner_state=reset (a fresh Adam state "
                              f"per task) or learner.inner_optimizer=sgd")
        if n < world:
            raise ConfigError(f"{key}={n}: each of the {world} processes needs at least one of the batch's {what}; "
                              f"set {key} >= {world} (the global batch is split over the processes) or launch "
                              f"fewer processes")

    # -- checkpoints -------------------------------------------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        return {"config": self.cfg.to_dict(), "image_shape": list(self.model.image_shape),
                "preprocess": self.preprocess.to_dict(), "learner": self.cfg.learner.name,
                "dataset": self.cfg.data.dataset, "origin": self.origin, "task_type": self.task_type, "best_val": self.best_val, "param_names": self.param_names,
                # several data sets: their weights, class counts and how each was converted to the common shape
                **({"domains": self.train_split.domains.to_dict()} if getattr(self.train_split, "domains", None)
                   is not None else {}),
                "environment": environment(), "saved_at": datetime.now().isoformat(timespec="seconds"),
                # what a resumed run needs to continue exactly: the path choice and the unlogged steps
                "engine": self.runner.state_dict() if self.runner is not None else self.runner_state,
                "log_window": [{k: float(v) for k, v in w.items()} for w in self.window],
                "elapsed_s": round(self.elapsed0 + self._elapsed(), 3)}

    def _elapsed(self) -> float:
        t0 = getattr(self, "_t0", None)
        return time.perf_counter() - t0 if t0 is not None else 0.0

    def _training_tensors(self) -> tuple[dict[str, torch.Tensor], dict]:
        tensors, rest = flatten_optimizer(self.optimizer.state_dict())
        tensors["rng.sampler"] = self.generator.get_state()
        tensors["rng.torch"] = torch.get_rng_state()
        if self.device.type == "cuda":
            tensors["rng.cuda"] = torch.cuda.get_rng_state(self.device)
        return tensors, rest

    def save(self, name: str | None = None) -> Path | None:
        """Write a checkpoint (rank 0), unless the model or the unchecked losses are not finite: then the last good
        checkpoint stays the latest and the error says to resume from it."""
        # checked on every process (they hold the same tensors and losses), so that all of them stop together
        self._check_finite(self.window)  # accelerators: losses not yet checked (the CPU checks every step)
        state_tensors = self.model.state_tensors()
        bad = non_finite(state_tensors)
        if bad:
            raise FloatingPointError(
                f"step {self.step}: {len(bad)} model tensors hold NaN or inf ({', '.join(bad[:3])}"
                f"{'...' if len(bad) > 3 else ''}) although the loss was finite (check optim.grad_clip, "
                f"optim.momentum and the learning rates); this step was not saved. {self._recovery()}")
        if not self.dist.is_main:
            return None  # every process holds the same tensors (summed gradients, same updates): rank 0 writes
        largest = max_abs(self.model.params)
        tensors, optim_rest = self._training_tensors()
        state = {**self._state(), "optimizer": optim_rest, "max_abs_param": largest}
        with self.signals.deferred() if self.signals is not None else contextlib.nullcontext():
            folder = save_checkpoint(self.run_dir, self.step, state_tensors, state, tensors,
                                     keep=self.cfg.train.keep_checkpoints, name=name)
            if name is None:  # before a deferred signal stops the run: its message names this checkpoint
                self.last_good = (self.step, folder, largest)
                self._last_save = time.monotonic()
        return folder

    def _recovery(self) -> str:
        """Which checkpoint to resume from after a blow-up, and how."""
        lr = self.cfg.optim.lr
        if self.last_good is None:
            return f"No checkpoint was written yet: train again with a lower optim.lr (e.g. optim.lr={lr / 10:g})."
        step, folder, largest = self.last_good
        msg = (f"The last good checkpoint is step {step} ({folder}): resume from it with a lower learning rate, "
               f"`metassl train --resume {self.run_dir} optim.lr={lr / 10:g}`.")
        if largest > 1e6:
            msg += (f" Its weights already reach |w| = {largest:.3g} (the run was diverging): if the resumed run "
                    f"fails again, delete {folder} to resume from the checkpoint before it.")
        return msg

    def _resume(self, folder: Path) -> None:
        tensors, state, training = load_checkpoint(folder)
        tf = folder / "training.safetensors"
        if not tf.is_file():
            raise CheckpointError(f"{tf}: missing; resuming needs the optimizer and random-generator states it holds: "
                                  f"{OTHER} (init_from={folder} starts a new run from its weights)")
        check_finite(tensors, folder / "model.safetensors")
        self.model.load_tensors(tensors, str(folder / "model.safetensors"))
        for key in ("rng.sampler", "rng.torch"):
            if key not in training:
                raise CheckpointError(f"{tf}: has no {key!r} tensor, so it is not a metassl training state (damaged or "
                                      f"replaced by another file); {OTHER}")
        optim_rest = state_value(state, "optimizer", dict, folder)
        try:
            saved = unflatten_optimizer(training, optim_rest)
            params = list(self.model.params.values())
            for i, st in saved["state"].items():
                for k, v in st.items():
                    if torch.is_tensor(v) and v.ndim and tuple(v.shape) != tuple(params[i].shape):
                        raise ValueError(f"optimizer state {k!r} of parameter {i} has shape {tuple(v.shape)}, "
                                         f"the parameter {tuple(params[i].shape)}")
            self.optimizer.load_state_dict(saved)
            self.generator.set_state(training["rng.sampler"])
            torch.set_rng_state(training["rng.torch"])
            if "rng.cuda" in training and self.device.type == "cuda":
                torch.cuda.set_rng_state(training["rng.cuda"], self.device)
        except (KeyError, IndexError, TypeError, ValueError, RuntimeError, AttributeError) as e:
            raise CheckpointError(f"{tf}: does not fit this run's optimizer or random generators ({e}); {OTHER}") from e
        self.step, self.best_val = int(state["step"]), state.get("best_val")
        self.runner_state = state.get("engine") or {}
        window = state.get("log_window") or []
        self.window = [{k: v if k == "lr" else torch.tensor(v, dtype=torch.float32, device=self.device)
                        for k, v in w.items()} for w in window if isinstance(w, dict)]
        self.elapsed0 = float(state.get("elapsed_s") or 0.0)
        self.last_good = (self.step, folder, float(state.get("max_abs_param") or 0.0))
        self.echo(f"resuming {self.run_dir} from step {self.step} ({folder.name})")

    # -- steps -------------------------------------------------------------------------------------------------
    def train_step(self) -> dict[str, float]:
        cfg = self.cfg
        set_lr(self.optimizer, cfg.optim.lr, lr_factor(self.step, cfg.optim, cfg.train.steps))
        batch = self.source.sample()  # the global batch: the same on every process
        total = batch.num_tasks
        if self.dist.active:
            batch = batch.select(*self.dist.share(total))
        batch = batch.map_images(self.preprocess)
        self.model.train(True)
        if self.runner is None:
            resumed = bool(self.runner_state) or self.step > 0
            self.runner = StepRunner(self.model, self.device, lambda msg, values: (
                self.echo(msg), None if resumed and values.get("event") == "amp" else  # noted once, at step 0
                self.logger.log(self.step, values, kind="info")))
            path = self.runner.load_state_dict(self.runner_state)
            if path:
                self.echo(f"learner.path=auto: using {path}, as chosen before the resume")
        self.optimizer.zero_grad(set_to_none=True)
        out = self.runner(batch, total, self.dist.world_size)  # forward and backward of this process's share
        if self.dist.active:  # sum the shares: the gradient, loss and metrics of the global batch
            distributed.all_reduce_gradients(self.dist, list(self.model.params.values()))
            reduced = distributed.all_reduce_sum(self.dist, {"loss": out.loss, **out.metrics})
            out = LossOutput(reduced.pop("loss"), reduced, out.state)
        # On the CPU the check is free; on an accelerator it would stall the queue every step, so there the losses
        # are checked when they are logged and the parameters before every checkpoint (`_check_finite`).
        if self.device.type == "cpu" and not torch.isfinite(out.loss):
            self._non_finite(self.step, float(out.loss))
        if cfg.optim.grad_clip:
            torch.nn.utils.clip_grad_norm_(list(self.model.params.values()), cfg.optim.grad_clip)
        self.optimizer.step()
        with torch.no_grad():  # EMA targets, queues: new buffer values from the learner, stored here
            new = self.model.learner.update(self.model.params, self.model.buffers, out.state, self.step,
                                            cfg.train.steps)
            for k, v in new.items():
                if k not in self.model.buffers:
                    raise KeyError(f"learner {cfg.learner.name}: update returned {k!r}, which is not one of its buffers")
                self.model.buffers[k].copy_(v)
        self.step += 1
        # 0-d tensors stay on the device until they are logged
        return {k: v.detach() for k, v in out.metrics.items()} | {"loss": out.loss.detach(),
                                                                  "lr": self.optimizer.param_groups[0]["lr"]}

    def _summarize_training_split(self) -> None:
        """Learners that summarize the trained encoder's features of the training split (SimpleShot's base mean):
        every process computes the same summary, in evaluation mode, before the final checkpoint."""
        learner = self.model.learner
        if not learner.summarizes_training_split:
            return
        self.model.train(False)
        with torch.no_grad():
            feats = embed_images(self.model, self.train_split.images, self.preprocess)
            new = learner.summarize(self.model.params, self.model.buffers, feats, self.train_split.labels())
            for k, v in new.items():
                if k not in self.model.buffers:
                    raise KeyError(f"learner {self.cfg.learner.name}: summarize returned {k!r}, which is not one of "
                                   f"its buffers")
                self.model.buffers[k].copy_(v)
        self.model.train(True)

    def _diagnose(self, avg: dict[str, float]) -> None:
        """Warnings the learner derives from the logged metrics (e.g. collapsed embeddings), each shown once."""
        msg = self.model.learner.diagnose(avg, self.step)
        if msg and msg.split(":")[0] not in self.warned:
            self.warned.add(msg.split(":")[0])
            warnings.warn(msg, RuntimeWarning, stacklevel=2)

    def _non_finite(self, step: int, value: float) -> None:
        inner = " (or learner.inner_lr)" if hasattr(self.cfg.learner, "inner_steps") else ""
        raise FloatingPointError(f"step {step}: the loss is {value}; lower optim.lr{inner} or set optim.grad_clip. "
                                 f"{self._recovery()}")

    def _check_finite(self, window: list[dict[str, Any]]) -> None:
        """Accelerators: the first non-finite loss of the window (one device sync); `save` checks the tensors."""
        if self.device.type == "cpu" or not window:
            return
        i = first_non_finite([w["loss"] for w in window])
        if i is not None:
            self._non_finite(self.step - len(window) + i, float(window[i]["loss"]))

    def validate(self) -> dict[str, float]:
        cfg = self.cfg
        if self.task_type == "regression":  # MSE on fixed validation tasks; `score` (higher is better) = -MSE
            rp = RegressionProtocol(cfg.data.dataset, cfg.data.val_split, cfg.eval.shots[0], cfg.eval.queries,
                                    cfg.train.val_episodes, cfg.eval.seed)
            self.model.train(False)
            r = evaluate_regression(self.model.predict, self.val_split, rp, cfg.eval.batch_episodes,
                                    part=self.dist.share(rp.episodes) if self.dist.active else None,
                                    gather=(lambda x: distributed.gather_objects(self.dist, x)) if self.dist.active
                                    else None)
            self.model.train(True)
            mse = r.metrics["mse"]
            return {"mse": mse["mean"], "ci95": mse["ci95"], "protocol": rp.tag, "r2": r.metrics["r2"]["mean"],
                    "score": -mse["mean"]}
        p = Protocol(cfg.data.dataset, cfg.data.val_split, cfg.eval.ways, cfg.eval.shots[0], cfg.eval.queries,
                     cfg.train.val_episodes, cfg.eval.seed, cfg.eval.unlabeled, cfg.eval.distractors)
        self.model.train(False)
        r = evaluate(self.model.predict, self.val_split, p, self.preprocess, cfg.eval.batch_episodes,
                     part=self.dist.share(p.episodes) if self.dist.active else None,
                     gather=(lambda x: distributed.gather_objects(self.dist, x)) if self.dist.active else None)
        self.model.train(True)
        return {"accuracy": r.accuracy, "ci95": r.ci95, "protocol": p.tag, "f1": r.metrics["f1"]["mean"]}

    def _checkpoint_due(self) -> bool:
        """`train.checkpoint_minutes` since the last checkpoint (or the start): a kill costs minutes, not hours."""
        minutes = self.cfg.train.checkpoint_minutes
        return bool(minutes) and time.monotonic() - self._last_save >= 60.0 * minutes

    def run(self) -> TrainResult:
        """Train to `train.steps`. SIGTERM and SIGINT stop it with a KeyboardInterrupt saying which checkpoint to
        continue from; a write that fails (full disk, read-only folder) is a one-line CheckpointWriteError."""
        self.signals = _StopSignals().install()
        if self.lock is not None:
            self.lock.active = True
        try:
            return self._run()
        except KeyboardInterrupt as e:
            how = f"interrupted by {e.args[0]}" if e.args and str(e.args[0]).startswith("SIG") else "interrupted"
            where = (f"checkpoint step {self.last_good[0]} is intact: continue with `metassl train --resume "
                     f"{self.run_dir}`" if self.last_good else
                     f"no checkpoint was written yet: `metassl train --resume {self.run_dir}` starts it again")
            raise KeyboardInterrupt(f"{how} at step {self.step}; {where}") from None
        except OSError as e:
            if e.errno in WRITE_ERRNOS:
                raise write_error(e, self.run_dir) from e
            raise
        finally:
            self.signals.restore()
            self.signals = None
            self.close()

    def _run(self) -> TrainResult:
        cfg = self.cfg
        total = cfg.train.steps
        t0, last, history = time.perf_counter(), None, []
        self._t0, self._last_save = t0, time.monotonic()
        bar = None
        note = warmup_note(cfg, self.step)
        if note and self.dist.is_main:
            print(f"warning: {note}", file=sys.stderr)
        if self.dist.is_main and cfg.train.progress and self.step < total:
            from tqdm import tqdm

            bar = tqdm(total=total, initial=self.step, desc="train", unit="step", dynamic_ncols=True,
                       mininterval=0.5 if sys.stderr.isatty() else 15.0, file=sys.stderr)
        try:
            fault = injected_fault(self.dist)
            while self.step < total:
                if self.step == fault:
                    os.kill(os.getpid(), signal.SIGKILL)
                m = self.train_step()
                self.memory.check()
                self.window.append(m)
                if bar is not None:
                    bar.update(1)
                if self.step % cfg.train.log_every == 0 or self.step == total:
                    window = self.window
                    self._check_finite(window)
                    avg = {k: float(sum(w[k] for w in window)) / len(window) for k in m  # accuracy: absent for SSL
                           if k != "lr" and all(k in w for w in window)}
                    avg["lr"] = m["lr"]
                    avg["elapsed_s"] = round(self.elapsed0 + time.perf_counter() - t0, 2)
                    self.logger.log(self.step, avg)
                    self._diagnose(avg)
                    history.append({"step": self.step, **avg})
                    last = avg["loss"]
                    if bar is not None:
                        post = {"loss": f"{avg['loss']:.3f}"}
                        if "accuracy" in avg:
                            post["acc"] = f"{100 * avg['accuracy']:.1f}%"
                        bar.set_postfix(**post)
                    self.window = []
                if self.knn is not None and (self.step % cfg.train.knn_every == 0 or self.step == total):
                    k = self.knn()
                    self.logger.log(self.step, k, kind="knn")
                    if bar is not None:
                        bar.write(f"step {self.step}: kNN top-1 {100 * k['knn_top1']:.2f}% (k={k['k']}, "
                                  f"{k['train_size']} memory / {k['test_size']} test images)")
                if self.val_split is not None and cfg.train.val_every and (
                        self.step % cfg.train.val_every == 0 or self.step == total):
                    v = self.validate()
                    self.logger.log(self.step, v, kind="val")
                    if bar is not None and "mse" in v:
                        bar.write(f"step {self.step}: validation {v['protocol']} MSE {v['mse']:.4f} ± "
                                  f"{v['ci95']:.4f}")
                    elif bar is not None:
                        bar.write(f"step {self.step}: validation {v['protocol']} {v['accuracy']:.2f} ± "
                                  f"{v['ci95']:.2f}%")
                    score = v.get("score", v.get("accuracy"))  # higher is better (regression: -MSE)
                    if self.best_val is None or score > self.best_val:
                        self.best_val = score
                        self.save(name="best")
                if self.step == total:
                    self._summarize_training_split()
                if self.step % cfg.train.checkpoint_every == 0 or self.step == total or self._checkpoint_due():
                    self.save()
        finally:
            if bar is not None:
                bar.close()
            self.logger.close()
        if not (self.run_dir / "checkpoints" / "latest").exists():  # e.g. train.steps=0: the initialization
            self._summarize_training_split()
            self.save()
        if self.dist.is_main:
            try:
                plot_learning_curves(self.run_dir)
            except Exception as e:  # noqa: BLE001 - a figure is not worth losing the run's end over
                warnings.warn(f"learning curves not drawn: {type(e).__name__}: {e}", RuntimeWarning, stacklevel=2)
        distributed.barrier(self.dist)  # the other processes read the run only once rank 0 has written it
        return TrainResult(self.run_dir, self.step, time.perf_counter() - t0, last, self.best_val, history)


def train(cfg: RunConfig, run_dir: str | Path | None = None, resume: bool = False, data_root: str | None = None,
          echo=print, origin: dict[str, Any] | None = None, latest_link: bool | None = None) -> TrainResult:
    """Train `cfg` into `run_dir` (a new timestamped folder under cfg.output_dir by default; then, unless
    `latest_link=False`, cfg.output_dir/latest points at it). `origin`: see engine/provenance.py."""
    link = run_dir is None if latest_link is None else latest_link
    return Trainer(cfg, Path(run_dir) if run_dir else default_run_dir(cfg), resume, data_root, echo=echo,
                   origin=origin, latest_link=link).run()


def _recorded_origin(folder: Path) -> dict[str, Any]:
    """The `origin` in a checkpoint's state.json ({} when absent or unreadable: the resume reports real damage)."""
    try:
        origin = json.loads((folder / "state.json").read_text(encoding="utf-8")).get("origin")
    except (OSError, ValueError, AttributeError):
        return {}
    return origin if isinstance(origin, dict) else {}


def link_latest(run_dir: Path) -> Path | None:
    """Point `<parent>/latest` at `run_dir` (a relative symlink, replaced atomically), so `runs/latest` is always
    the newest run made under the default folder; None where symlinks cannot be made or `latest` is a real
    folder (left alone)."""
    link = run_dir.parent / "latest"
    if link.exists() and not link.is_symlink():
        return None
    tmp = run_dir.parent / f".latest.{os.getpid()}.tmp"
    try:
        tmp.unlink(missing_ok=True)
        os.symlink(run_dir.name, tmp, target_is_directory=True)
        os.replace(tmp, link)
    except OSError:
        tmp.unlink(missing_ok=True)
        return None
    return link


def warmup_note(cfg: RunConfig, step: int = 0) -> str | None:
    """One line when most of the run is linear warm-up (optim.warmup_steps > half of train.steps), with the learning
    rate the run will reach; None otherwise. A warning, not a silent rescaling of the warm-up: the config is what
    the run records and what its results are quoted with, so the user decides (a shorter warm-up or more steps)."""
    warm, total = cfg.optim.warmup_steps, cfg.train.steps
    if not warm or total <= 0 or step >= min(warm, total) or warm <= total / 2:
        return None
    peak = max(lr_factor(s, cfg.optim, total) for s in {min(warm, total) - 1, total - 1}) * cfg.optim.lr
    fix = f"lower optim.warmup_steps (e.g. optim.warmup_steps={max(1, total // 10)}) or raise train.steps"
    if warm >= total:
        return (f"optim.warmup_steps={warm} >= train.steps={total}: the whole run is warm-up and its learning rate "
                f"reaches only {peak:.3g} of optim.lr={cfg.optim.lr:g}; {fix}")
    return (f"optim.warmup_steps={warm} is {100 * warm / total:.0f}% of train.steps={total}: the learning rate "
            f"reaches optim.lr={cfg.optim.lr:g} only at step {warm}; {fix}")


def load_run_config(run_dir: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """The config a run was started with (its config.yaml), with `overrides` applied (e.g. train.steps=...)."""
    import yaml

    from ..config import apply_overrides

    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise ConfigError(f"{run_dir} is not a run folder (no config.yaml)")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise ConfigError(f"{path}: cannot be read as YAML ({str(e).splitlines()[0][:200]}); restore it from "
                          f"the config in any checkpoint's state.json, or start a new run") from e
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: holds a {type(raw).__name__}, not a config mapping; restore it from the config "
                          f"in any checkpoint's state.json, or start a new run")
    return resolve_stored(apply_overrides(raw, overrides or []))
