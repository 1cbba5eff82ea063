"""Speed of a SimCLR training step (ResNet-18, CIFAR stem, CIFAR-10 32x32): images/s of

  ours      metassl's real training step (`Trainer.train_step`: device-side sampling + augmentation of 2 views,
            normalization, forward/backward, optimizer step, after_step, metrics);
  ceiling   the same model, loss, optimizer and step on views already on the device (no sampling, no augmentation);
  augment   the sampling + augmentation + normalization alone, and its share of our step time;
  lightly   lightly's pipeline as its CIFAR-10 benchmark runs it: torchvision DataLoader (shuffle, drop_last,
            `--workers` worker processes) over the CIFAR-10 images as PIL images, lightly's SimCLRTransform
            (input 32, colour strength 0.5, no blur), the same ResNet-18 (torchvision resnet18 with the CIFAR stem),
            lightly's SimCLRProjectionHead(512, 512, 128) and NTXentLoss, SGD; run as a subprocess with the python of
            benchmarks/.venv-lightly (see setup_lightly.sh), same batch size, same precision, same device.

"images/s" counts source images (each gives 2 views) per second. Ours, the ceiling and the augmentation are timed
in alternating windows of `--steps` steps (after `--warmup` steps each), `--repeats` rounds; the figure is the
median window (CUDA) or the fastest (`--stat min`, the default on a CPU shared with other work, where contention
only ever adds time). lightly is timed the same way in its own process.

    python benchmarks/bench_ssl.py                                  # CPU: batch 64, fp32
    python benchmarks/bench_ssl.py --device cuda --batch-size 512 --precision fp32 bf16 --workers 16
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import numpy as np
import torch

from metassl.config import load_config
from metassl.data import ViewBatch
from metassl.engine.trainer import Trainer

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def window(fn, device, steps: int) -> float:
    """Seconds per call over one window of `steps` calls (synchronized)."""
    sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    sync(device)
    return (time.perf_counter() - t0) / steps


def interleaved(fns: dict, device, steps: int, warmup: int, repeats: int, stat) -> dict[str, float]:
    """Time several step functions in alternating windows (A B C A B C ...), so that a slow spell of a shared
    machine hits all of them alike; `stat` (median, or min on a shared CPU) of each one's windows."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            times[k].append(window(fn, device, steps))
    return {k: stat(v) for k, v in times.items()}


@dataclass
class _Fixed:
    batch: ViewBatch

    def sample(self):
        return self.batch


class _Prepared(ViewBatch):
    def map_images(self, fn):  # already normalized: the ceiling skips even the normalization
        return self


def ours(a, device: torch.device, precision: str) -> dict:
    overrides = [f"tasks.batch_size={a.batch_size}", f"train.steps={10 ** 6}", f"train.device={device}",
                 f"learner.amp={'bf16' if precision == 'bf16' else 'none'}", f"learner.compile={a.compile}",
                 "train.progress=false", "train.tensorboard=false", "train.report=false", "train.knn_every=0",
                 f"train.channels_last={device.type != 'cpu' or a.channels_last_cpu}"]
    cfg = load_config("cifar10/simclr", overrides)
    with tempfile.TemporaryDirectory() as tmp:
        tr = Trainer(cfg, Path(tmp) / "run", data_root=a.data_root, echo=lambda *x: None)
        real = tr.source

        def aug():
            return real.sample().map_images(tr.preprocess)

        fixed = _Fixed(_Prepared(aug().views.clone()))

        def step_ours():
            tr.source = real
            tr.train_step()

        def step_ceiling():
            tr.source = fixed
            tr.train_step()

        t = interleaved({"ours": step_ours, "ceiling": step_ceiling, "aug": aug}, device, a.steps, a.warmup,
                        a.repeats, a.stat)
        tr.logger.close()
    b = a.batch_size
    return {"precision": precision, "ours_img_s": b / t["ours"], "ceiling_img_s": b / t["ceiling"],
            "aug_img_s": b / t["aug"], "step_ms": 1000 * t["ours"], "ceiling_ms": 1000 * t["ceiling"],
            "aug_ms": 1000 * t["aug"], "aug_share": t["aug"] / t["ours"], "of_ceiling": t["ceiling"] / t["ours"]}


def lightly(a, device: torch.device, precision: str, images_npy: Path) -> dict | None:
    py = Path(a.lightly_python)
    if not py.is_file():
        print(f"lightly: {py} not found (bash benchmarks/setup_lightly.sh); skipped", file=sys.stderr)
        return None
    cmd = [str(py), str(HERE / "lightly_worker.py"), "--images", str(images_npy), "--batch-size", str(a.batch_size),
           "--device", str(device), "--precision", precision, "--workers", str(a.workers), "--steps", str(a.steps),
           "--warmup", str(a.warmup), "--repeats", str(a.repeats), "--stat", a.stat_name,
           "--channels-last", str(int(device.type != "cpu" or a.channels_last_cpu))]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=a.lightly_timeout)
    if r.returncode != 0:
        print(f"lightly worker failed ({r.returncode}):\n{r.stderr[-3000:]}", file=sys.stderr)
        return None
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch-size", type=int, default=None, help="default: 512 on CUDA, 64 on CPU")
    ap.add_argument("--precision", nargs="+", default=None, choices=("fp32", "bf16"),
                    help="default: fp32 bf16 on CUDA, fp32 on CPU")
    ap.add_argument("--steps", type=int, default=None, help="timed steps per window (default 20 CUDA, 2 CPU)")
    ap.add_argument("--warmup", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--workers", type=int, default=min(16, os.cpu_count() or 1), help="lightly's DataLoader workers")
    ap.add_argument("--compile", action="store_true", help="torch.compile our loss (learner.compile=true)")
    ap.add_argument("--channels-last-cpu", action="store_true", help="channels_last on CPU too (default: CUDA only)")
    ap.add_argument("--no-lightly", action="store_true")
    ap.add_argument("--lightly-python", default=str(HERE / ".venv-lightly" / "bin" / "python"))
    ap.add_argument("--lightly-timeout", type=int, default=1800)
    ap.add_argument("--lightly-images", type=int, default=None, help="images given to lightly's DataLoader "
                    "(default: all 50,000 on CUDA, 4,096 on CPU)")
    ap.add_argument("--data-root", default=os.environ.get("METASSL_DATA") or (
        str(ROOT.parent / "shared" / "data") if (ROOT.parent / "shared" / "data").is_dir() else None))
    ap.add_argument("--stat", choices=("median", "min"), default=None,
                    help="statistic over the timed windows (default: median on CUDA, min on a shared CPU)")
    ap.add_argument("--json", help="also write the rows as JSON to this file")
    a = ap.parse_args()
    device = torch.device(a.device)
    cuda = device.type == "cuda"
    a.batch_size = a.batch_size or (512 if cuda else 64)
    a.precision = a.precision or (["fp32", "bf16"] if cuda else ["fp32"])
    a.steps = a.steps or (20 if cuda else 2)
    a.warmup = a.warmup if a.warmup is not None else (5 if cuda else 1)
    a.repeats = a.repeats or (3 if cuda else 3)
    a.stat_name = a.stat or ("median" if cuda else "min")
    a.stat = min if a.stat_name == "min" else statistics.median
    env = {"torch": torch.__version__, "device": torch.cuda.get_device_name(device) if cuda else
           (platform.processor() or platform.machine()), "threads": torch.get_num_threads(),
           "cpus": os.cpu_count(), "date": date.today().isoformat(), "batch_size": a.batch_size,
           "compile": a.compile, "stat": a.stat_name, "steps": a.steps, "repeats": a.repeats}
    print(f"# SimCLR ResNet-18 step, CIFAR-10 32x32, batch {a.batch_size}, {env}", flush=True)
    rows = []
    images_npy = None
    tmpdir = tempfile.mkdtemp(prefix="bench_ssl_")
    if not a.no_lightly:
        from metassl.data import load_dataset

        split = load_dataset("cifar10", "train", a.data_root)
        n = a.lightly_images or (split.images.shape[0] if cuda else 4096)
        images_npy = Path(tmpdir) / "cifar10_train_hwc.npy"
        np.save(images_npy, split.images[:n].permute(0, 2, 3, 1).contiguous().numpy())
    for prec in a.precision:
        row = {**ours(a, device, prec)}
        if images_npy is not None:
            lt = lightly(a, device, prec, images_npy)
            if lt:
                row.update({"lightly_img_s": lt["img_s"], "lightly_ms": lt["step_ms"], "lightly_env": lt["env"]})
                row["ours_over_lightly"] = row["ours_img_s"] / lt["img_s"]
        rows.append(row)
        print(json.dumps(row), flush=True)
    print("\n| precision | ours (img/s) | ceiling (img/s) | ours / ceiling | augmentation share of our step | "
          "lightly (img/s) | ours / lightly |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        lt = f"{r['lightly_img_s']:,.0f}" if "lightly_img_s" in r else "-"
        ratio = f"{r['ours_over_lightly']:.2f}x" if "ours_over_lightly" in r else "-"
        print(f"| {r['precision']} | {r['ours_img_s']:,.0f} | {r['ceiling_img_s']:,.0f} | {100 * r['of_ceiling']:.0f}% "
              f"| {100 * r['aug_share']:.1f}% ({r['aug_ms']:.1f} of {r['step_ms']:.1f} ms) | {lt} | {ratio} |")
    if a.json:
        Path(a.json).write_text(json.dumps({"env": env, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
