"""`metassl fit`: from folders of your own images to a run that `metassl predict` and `FewShotClassifier` use,
within a time budget.

Stage 1 trains `folder/simclr` on the unlabeled images (any images under the folder; labels never read). With
labeled images (`DIR/<class>/<image>`), stage 2 trains `folder/practical_protonet` on them from stage 1's encoder:
the practical scenario of results/unsupervised_omniglot.md, where pre-training on the unlabeled images and
meta-learning on a few labeled classes beat either alone. Each stage's number of steps comes from a short timing
probe on this machine, so its whole schedule (warm-up, cosine or step decay) fits its share of the budget instead of
being cut off by it; the warm-up is 5% of the steps.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .config import ConfigError, load_config

PROBE_STEPS = 6  # the first step carries one-off costs (allocation, oneDNN kernels): timed from the second on
STAGE1_SHARE = 0.7  # of the budget, when there is a stage 2
MIN_STEPS = 20


@dataclass
class FitResult:
    run_dir: Path  # the run to predict with (stage 2's when there is one)
    encoder_run: Path  # stage 1's run
    steps: dict[str, int]
    seconds: float


def _overrides(device: str, extra: list[str]) -> list[str]:
    return ["train.progress=false", "train.report=false", "train.tensorboard=false", f"train.device={device}",
            *extra]


def _for_stage(preset: str, overrides: list[str]) -> list[str]:
    """The overrides that are keys of this stage's config (e.g. tasks.batch_size is SimCLR's, not ProtoNet's)."""
    keep = []
    for item in overrides:
        try:
            load_config(preset, [item])
        except ConfigError as e:
            if "unknown config key" in str(e):
                continue
            raise
        keep.append(item)
    return keep


def _seconds_per_step(preset: str, data_root: Path, overrides: list[str], work: Path) -> float:
    """Seconds per training step of `preset` on this machine and data, from a few steps in a scratch folder."""
    from .engine.trainer import train

    probe = work / "probe"
    cfg = load_config(preset, overrides + [f"train.steps={PROBE_STEPS}", "train.log_every=1",
                                           f"train.checkpoint_every={PROBE_STEPS}", "optim.warmup_steps=0"])
    try:
        train(cfg, probe, data_root=str(data_root), echo=lambda *a, **k: None, latest_link=False)
        rows = [json.loads(line) for line in (probe / "metrics.jsonl").read_text().splitlines()]
    finally:
        shutil.rmtree(probe, ignore_errors=True)
    t = [r["elapsed_s"] for r in rows if r.get("kind") == "train" and "elapsed_s" in r]
    if len(t) < 3:
        raise RuntimeError(f"timing probe of {preset} logged {len(t)} steps; expected {PROBE_STEPS}")
    return max((t[-1] - t[0]) / (len(t) - 1), 1e-3)


def _stage(name: str, preset: str, data_root: Path, run_dir: Path, seconds: float, overrides: list[str],
           work: Path, echo: Callable[..., Any]) -> int:
    """Train `preset` into run_dir with as many steps as fit in `seconds` (measured); returns the steps."""
    from .engine.trainer import train

    overrides = _for_stage(preset, overrides)
    per_step = _seconds_per_step(preset, data_root, overrides, work)
    steps = max(MIN_STEPS, int(0.9 * seconds / per_step))  # 10% for loading, checkpoints and the probe
    echo(f"fit, {name}: {per_step:.2f} s per step measured here -> {steps} steps in {seconds / 60:.1f} min "
         f"({preset}, {run_dir})")
    cfg = load_config(preset, overrides + [f"train.steps={steps}", f"optim.warmup_steps={steps // 20}",
                                           f"train.checkpoint_every={max(1, steps // 4)}",
                                           f"train.log_every={max(1, min(50, steps // 10))}"])
    train(cfg, run_dir, data_root=str(data_root), echo=echo, latest_link=False)
    return steps


def _labeled_classes(labeled: Path) -> dict[str, int]:
    from .data.images import list_images
    from .data.loaders.folder import class_folders

    if not labeled.is_dir():
        raise ConfigError(f"--labeled {labeled}: not a folder; give DIR/<class>/<image> with one sub-folder per class")
    counts = {p.name: len(list_images(p)) for p in class_folders(labeled)}
    return {k: v for k, v in counts.items() if v}


def fit_folders(unlabeled: str | Path, out: str | Path, labeled: str | Path | None = None, minutes: float = 10.0,
                device: str = "auto", overrides: list[str] | None = None, echo: Callable[..., Any] = print
                ) -> FitResult:
    """Train on your folders within `minutes` (see the module docstring). `out` becomes the run to predict with;
    with `labeled`, stage 1's encoder run is `out` + ".simclr" beside it. `overrides`: key=value for both stages
    (e.g. model.hidden=32)."""
    t0 = time.monotonic()
    unlabeled, out = Path(unlabeled).expanduser(), Path(out).expanduser()
    if not math.isfinite(minutes) or minutes <= 0:
        raise ConfigError(f"--minutes must be a positive number, got {minutes}")
    if not unlabeled.is_dir():
        raise ConfigError(f"--unlabeled {unlabeled}: not a folder; give a folder of images (searched recursively)")
    for item in overrides or []:  # a key neither stage has is a typo, not a key of the other stage
        if not any(_for_stage(p, [item]) for p in ("folder/simclr", "folder/practical_protonet")):
            load_config("folder/simclr", [item])  # raises the ConfigError naming the key and the close ones
    extra = _overrides(device, list(overrides or []))
    classes: dict[str, int] = {}
    if labeled is not None:
        labeled = Path(labeled).expanduser()
        classes = _labeled_classes(labeled)
        if len(classes) < 2:
            raise ConfigError(f"--labeled {labeled}: {len(classes)} class folder(s) with images; stage 2 needs at "
                              f"least 2 classes (DIR/<class>/<image>), or leave --labeled out")
    encoder_run = out.with_name(out.name + ".simclr") if classes else out
    for folder in {encoder_run, out}:
        if folder.exists() and any(folder.iterdir()):
            raise ConfigError(f"{folder} exists and is not empty: choose another --out, or remove it")
    budget = 60.0 * minutes
    out.parent.mkdir(parents=True, exist_ok=True)
    steps: dict[str, int] = {}
    with tempfile.TemporaryDirectory(prefix=".fit-", dir=out.parent) as work:
        share = budget * (STAGE1_SHARE if classes else 1.0)
        steps["simclr"] = _stage("stage 1 (SimCLR on the unlabeled images)", "folder/simclr", unlabeled,
                                 encoder_run, share - (time.monotonic() - t0), extra + ["data.options.unlabeled=true"],
                                 Path(work), echo)
        if classes:
            fewest = min(classes.values())
            if fewest < 2:
                small = sorted(k for k, v in classes.items() if v < 2)
                raise ConfigError(f"--labeled {labeled}: class folder(s) {', '.join(small[:5])} hold 1 image; ProtoNet "
                                  f"training needs 2 per class (1 support + 1 query). Add images or leave --labeled "
                                  f"out; {encoder_run} (stage 1) is complete and predicts on its own")
            ways, queries = min(20, len(classes)), min(5, fewest - 1)
            steps["protonet"] = _stage(
                f"stage 2 (ProtoNet on {len(classes)} labeled classes, {ways}-way 1-shot {queries}-query episodes)",
                "folder/practical_protonet", labeled, out, budget - (time.monotonic() - t0),
                extra + [f"init_from={encoder_run}", f"tasks.ways={ways}", "tasks.shots=1", f"tasks.queries={queries}",
                         f"eval.ways={min(5, len(classes))}"], Path(work), echo)
    seconds = time.monotonic() - t0
    echo(f"fit: done in {seconds / 60:.1f} min of {minutes:g}; predict with: metassl predict {out} --support "
         f"SUPPORT_DIR --query QUERY_DIR")
    return FitResult(out, encoder_run, steps, seconds)
