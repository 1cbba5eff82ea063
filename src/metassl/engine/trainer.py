"""The training loop: the one place that owns state (tensors, optimizer, random generators, files).

One step: draw a batch of tasks on the device -> preprocess on the device -> learner.loss (a pure function of
params, buffers and tasks) -> backward -> optimizer step -> learner.update (new buffer values, stored here) -> log;
every so often validate and checkpoint. Losses are checked for NaN/inf every step on the CPU and when they are
logged on accelerators; parameters before each checkpoint on accelerators.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import signal
import random
import sys
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
from ..eval.episodes import Protocol, evaluate
from ..eval.features import embed_images
from ..eval.knn import KNNMonitor
from ..learners import LossOutput, get_learner
from ..atomic import atomic_write_text
from .build import Model, build_model, init_encoder_from
from .frozen import embed_with_run
from .checkpoint import find_checkpoint, read_run_learner, flatten_optimizer, load_checkpoint, save_checkpoint, unflatten_optimizer
from . import distributed
from .allocator import tune_allocator
from .distributed import DistInfo, resolve_device
from .logging import RunLogger, plot_learning_curves
from .meta import StepRunner
from .optim import lr_factor, make_optimizer, set_lr


@dataclass
class TrainResult:
    run_dir: Path
    steps: int
    seconds: float
    final_loss: float | None
    best_val: float | None
    history: list[dict[str, Any]] = field(default_factory=list)


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
                 dist: DistInfo | None = None, echo=print):
        self.dist = dist or DistInfo.from_env()
        self.cfg, self.run_dir, self.echo = cfg, Path(run_dir), echo if self.dist.is_main else (lambda *a, **k: None)
        echo = self.echo
        tune_allocator()  # reuse freed activation memory instead of fresh mmap pages per step (engine/allocator.py)
        if cfg.train.threads:
            torch.set_num_threads(cfg.train.threads)
        if cfg.train.deterministic:
            torch.use_deterministic_algorithms(True)
        self.device = resolve_device(cfg.train.device, self.dist)
        distributed.setup(self.dist, self.device, cfg.train.dist_timeout)
        # the same seed on every process: the same initialization, and the same global batches drawn by each
        seed_everything(cfg.seed)
        root = data_root or cfg.data.root
        self.data_root = root
        d = cfg.data
        self.train_split = load_dataset(d.dataset, d.train_split, root, d.image_size, self.device)
        if d.train_fraction < 1.0:
            self.train_split = class_fraction(self.train_split, d.train_fraction, cfg.seed)
            echo(f"data.train_fraction={d.train_fraction}: training on {self.train_split.num_classes} classes "
                 f"({self.train_split.images.shape[0]} images)")
        self.val_split = (load_dataset(d.dataset, d.val_split, root, d.image_size, self.device)
                          if d.val_split and cfg.train.val_every else None)
        try:
            source = task_source_name(cfg.tasks.source, cfg.learner.name)
            if source == "labeled":  # unlabeled sources (views) need no N-way K-shot tasks from the training split
                check_task_shape(self.train_split, cfg.tasks.ways, cfg.tasks.shots, cfg.tasks.queries)
            if self.val_split is not None:
                check_task_shape(self.val_split, cfg.eval.ways, cfg.eval.shots[0], cfg.eval.queries)
        except ValueError as e:
            raise ConfigError(f"tasks/eval settings do not fit the data: {e}") from e
        self.preprocess = self.train_split.preprocess
        # e.g. the `classes` source's number of base classes, stored in config.yaml so the run rebuilds its head
        self.cfg = cfg = dataclasses.replace(cfg, tasks=cfg.tasks.for_split(self.train_split))
        self.model: Model = build_model(cfg, self.train_split.image_shape, self.preprocess, self.device,
                                        global_batchnorm=self.dist.active and cfg.train.sync_batchnorm)
        self._check_shares()
        distributed.broadcast_tensors(self.dist, self.model.state_tensors())
        self.optimizer = make_optimizer(self.model.params.values(), cfg.optim)
        self.generator = torch.Generator(device=self.device).manual_seed(cfg.seed * 1000003)
        spec = get_learner(cfg.learner.name)
        self.source = make_task_source(cfg.tasks, self.train_split, self.generator, spec.default_source,
                                       config=cfg, device=self.device, embed=lambda run, split: embed_with_run(
                                           run, split, self.device))
        if cfg.aux.contrastive > 0:  # the contrastive auxiliary term needs two augmented views of every image
            self.source = AuxiliaryViews(self.source, resolve_augment(cfg.augment, d.dataset), self.generator)
        self.knn = None  # online kNN monitor (train.knn_every): memory bank from the train split, test-split queries
        if cfg.train.knn_every:
            test = load_dataset(d.dataset, d.test_split, root, d.image_size, self.device)
            try:
                self.knn = KNNMonitor(self.model, self.train_split, test, self.preprocess, d.dataset)
            except ValueError as e:
                raise ConfigError(f"train.knn_every: {e}") from e
        self.step, self.best_val = 0, None
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
            self._resume()
        elif self.dist.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.run_dir / "config.yaml", dump_yaml(cfg))
        distributed.barrier(self.dist)
        self.logger = RunLogger(self.run_dir, self.dist, cfg.train.tensorboard, self.step if resume else None)
        if self.init_report:
            self.logger.log(0, {k: v for k, v in self.init_report.items() if k != "not_transferred"}, kind="info")

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
                "dataset": self.cfg.data.dataset, "best_val": self.best_val, "param_names": self.param_names,
                "environment": environment(), "saved_at": datetime.now().isoformat(timespec="seconds")}

    def _training_tensors(self) -> tuple[dict[str, torch.Tensor], dict]:
        tensors, rest = flatten_optimizer(self.optimizer.state_dict())
        tensors["rng.sampler"] = self.generator.get_state()
        tensors["rng.torch"] = torch.get_rng_state()
        if self.device.type == "cuda":
            tensors["rng.cuda"] = torch.cuda.get_rng_state(self.device)
        return tensors, rest

    def save(self, name: str | None = None) -> Path | None:
        if not self.dist.is_main:
            return None  # every process holds the same tensors (summed gradients, same updates): rank 0 writes
        if self.device.type != "cpu":
            finite = torch.stack([torch.isfinite(p).all() for p in self.model.params.values()]).all()
            if not bool(finite):
                self._non_finite(self.step, float("nan"))
        tensors, optim_rest = self._training_tensors()
        state = {**self._state(), "optimizer": optim_rest}
        return save_checkpoint(self.run_dir, self.step, self.model.state_tensors(), state, tensors,
                               keep=self.cfg.train.keep_checkpoints, name=name)

    def _resume(self) -> None:
        folder = find_checkpoint(self.run_dir)
        tensors, state, training = load_checkpoint(folder)
        self.model.load_tensors(tensors, str(folder))
        self.optimizer.load_state_dict(unflatten_optimizer(training, state["optimizer"]))
        self.generator.set_state(training["rng.sampler"])
        torch.set_rng_state(training["rng.torch"])
        if "rng.cuda" in training and self.device.type == "cuda":
            torch.cuda.set_rng_state(training["rng.cuda"], self.device)
        self.step, self.best_val = int(state["step"]), state.get("best_val")
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
            self.runner = StepRunner(self.model, self.device, lambda msg, values: (
                self.echo(msg), self.logger.log(self.step, values, kind="info")))
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
                                 f"The last checkpoint is intact: resume with --resume.")

    def _check_finite(self, window: list[dict[str, Any]]) -> None:
        """Accelerators: the first non-finite loss of the window (one device sync), and before a checkpoint the
        parameters, so that a checkpoint never holds NaN weights."""
        if self.device.type == "cpu" or not window:
            return
        i = first_non_finite([w["loss"] for w in window])
        if i is not None:
            self._non_finite(self.step - len(window) + i, float(window[i]["loss"]))

    def validate(self) -> dict[str, float]:
        cfg = self.cfg
        p = Protocol(cfg.data.dataset, cfg.data.val_split, cfg.eval.ways, cfg.eval.shots[0], cfg.eval.queries,
                     cfg.train.val_episodes, cfg.eval.seed)
        self.model.train(False)
        r = evaluate(self.model.predict, self.val_split, p, self.preprocess, cfg.eval.batch_episodes,
                     part=self.dist.share(p.episodes) if self.dist.active else None,
                     gather=(lambda x: distributed.gather_objects(self.dist, x)) if self.dist.active else None)
        self.model.train(True)
        return {"accuracy": r.accuracy, "ci95": r.ci95, "protocol": p.tag, "f1": r.metrics["f1"]["mean"]}

    def run(self) -> TrainResult:
        cfg = self.cfg
        total = cfg.train.steps
        t0, last, history = time.perf_counter(), None, []
        bar = None
        if self.dist.is_main and cfg.train.progress and self.step < total:
            from tqdm import tqdm

            bar = tqdm(total=total, initial=self.step, desc="train", unit="step", dynamic_ncols=True,
                       mininterval=0.5 if sys.stderr.isatty() else 15.0, file=sys.stderr)
        window: list[dict[str, float]] = []
        try:
            fault = injected_fault(self.dist)
            while self.step < total:
                if self.step == fault:
                    os.kill(os.getpid(), signal.SIGKILL)
                m = self.train_step()
                window.append(m)
                if bar is not None:
                    bar.update(1)
                if self.step % cfg.train.log_every == 0 or self.step == total:
                    self._check_finite(window)
                    avg = {k: float(sum(w[k] for w in window)) / len(window) for k in m  # accuracy: absent for SSL
                           if k != "lr" and all(k in w for w in window)}
                    avg["lr"] = m["lr"]
                    avg["elapsed_s"] = round(time.perf_counter() - t0, 2)
                    self.logger.log(self.step, avg)
                    self._diagnose(avg)
                    history.append({"step": self.step, **avg})
                    last = avg["loss"]
                    if bar is not None:
                        post = {"loss": f"{avg['loss']:.3f}"}
                        if "accuracy" in avg:
                            post["acc"] = f"{100 * avg['accuracy']:.1f}%"
                        bar.set_postfix(**post)
                    window = []
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
                    if bar is not None:
                        bar.write(f"step {self.step}: validation {v['protocol']} {v['accuracy']:.2f} ± "
                                  f"{v['ci95']:.2f}%")
                    if self.best_val is None or v["accuracy"] > self.best_val:
                        self.best_val = v["accuracy"]
                        self.save(name="best")
                if self.step == total:
                    self._summarize_training_split()
                if self.step % cfg.train.checkpoint_every == 0 or self.step == total:
                    self.save()
        finally:
            if bar is not None:
                bar.close()
            self.logger.close()
        if not (self.run_dir / "checkpoints" / "latest").exists():  # e.g. train.steps=0: the initialization
            self._summarize_training_split()
            self.save()
        if self.dist.is_main:
            plot_learning_curves(self.run_dir)
        distributed.barrier(self.dist)  # the other processes read the run only once rank 0 has written it
        return TrainResult(self.run_dir, self.step, time.perf_counter() - t0, last, self.best_val, history)


def train(cfg: RunConfig, run_dir: str | Path | None = None, resume: bool = False, data_root: str | None = None,
          echo=print) -> TrainResult:
    """Train `cfg` into `run_dir` (a new timestamped folder under cfg.output_dir by default)."""
    return Trainer(cfg, Path(run_dir) if run_dir else default_run_dir(cfg), resume, data_root, echo=echo).run()


def load_run_config(run_dir: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """The config a run was started with (its config.yaml), with `overrides` applied (e.g. train.steps=...)."""
    import yaml

    from ..config import apply_overrides

    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise ConfigError(f"{run_dir} is not a run folder (no config.yaml)")
    return resolve_stored(apply_overrides(yaml.safe_load(path.read_text()), overrides or []))
