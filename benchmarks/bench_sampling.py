"""Cost of episodic sampling against a ProtoNet training step (issue: sampling must be < 5% of a step).

For each task shape: tasks/s of `sample_tasks` alone (uint8 gather on the device), and of a full ProtoNet training
step (sampling + preprocessing + Conv4 forward/backward + Adam), on the Omniglot train split (real data when the
data root has it, else random images of the same shape). Writes a markdown table.

    python benchmarks/bench_sampling.py [--device cuda] [--out results/sampling.md]
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from datetime import date
from pathlib import Path

import torch

from metassl.config import resolve
from metassl.data import ClassSplit, load_dataset, sample_tasks
from metassl.data.root import DatasetNotFoundError
from metassl.engine.build import build_model
from metassl.engine.optim import make_optimizer

SHAPES = [  # (ways, shots, queries, tasks per batch)
    (60, 5, 5, 1),   # ProtoNet paper training episodes
    (5, 1, 15, 32),  # MAML Omniglot meta-batch
    (20, 1, 15, 16),
]


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device, min_seconds=2.0, min_iters=5):
    fn()
    sync(device)
    n, t0 = 0, time.perf_counter()
    while n < min_iters or time.perf_counter() - t0 < min_seconds:
        fn()
        n += 1
    sync(device)
    return (time.perf_counter() - t0) / n


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--seconds", type=float, default=2.0, help="minimum timing per measurement")
    ap.add_argument("--out", default="results/sampling.md")
    a = ap.parse_args()
    device = torch.device(a.device)
    try:
        split = load_dataset("omniglot", "train", a.data_root, device=device)
        source = "Omniglot train split (4,112 classes x 20 images, 28x28)"
    except DatasetNotFoundError:
        g = torch.Generator().manual_seed(0)
        split = ClassSplit(torch.randint(0, 256, (4112 * 20, 1, 28, 28), generator=g, dtype=torch.uint8),
                           torch.full((4112,), 20), [str(i) for i in range(4112)], name="random").to(device)
        source = "random images shaped like the Omniglot train split"
    cfg = resolve({"model": {"backbone": "conv4"}, "learner": {"name": "protonet"}})
    model = build_model(cfg, split.image_shape, split.preprocess, device)
    opt = make_optimizer(model.params.values(), cfg.optim)
    gen = torch.Generator(device=device).manual_seed(0)
    rows = []
    for ways, shots, queries, tasks in SHAPES:
        def sample():
            return sample_tasks(split, ways, shots, queries, tasks, gen)

        def step():
            b = sample().map_images(split.preprocess)
            loss = model.learner.loss(model.params, model.buffers, b).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        model.train(True)
        t_sample = timed(sample, device, a.seconds)
        t_step = timed(step, device, a.seconds)
        rows.append((f"{ways}-way {shots}-shot {queries}-query x {tasks}", tasks / t_sample, tasks / t_step,
                     100 * t_sample / t_step))
        print(f"{rows[-1][0]:32s} sample {rows[-1][1]:10.0f} tasks/s   train step {rows[-1][2]:8.1f} tasks/s   "
              f"sampling = {rows[-1][3]:.2f}% of a step", flush=True)
    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else \
        f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    lines = [
        "# Episodic sampling vs a ProtoNet training step", "",
        f"- command: `python {' '.join(sys.argv)}`",
        f"- device: {dev_name}; torch {torch.__version__}; date {date.today().isoformat()}",
        f"- data: {source}; model: Conv4-64 ProtoNet, Adam; times are means over >= {a.seconds:.0f} s per row", "",
        "| task batch | sample_tasks (tasks/s) | ProtoNet train step (tasks/s) | sampling share of a step |",
        "|---|---:|---:|---:|",
    ]
    lines += [f"| {r[0]} | {r[1]:,.0f} | {r[2]:,.1f} | {r[3]:.2f}% |" for r in rows]
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    text = "\n".join(lines) + "\n"
    # keep one section per device: replace this device's previous section, keep the others
    out.write_text(text if not out.exists() else _merge(out.read_text(), text, dev_name))
    print(f"wrote {out}")


def _merge(old: str, new: str, dev_name: str) -> str:
    sections = [s for s in old.split("\n# ") if s.strip()]
    kept = [("# " + s if not s.startswith("# ") else s) for s in sections if dev_name not in s]
    return "\n".join(kept + [new]) if kept else new


if __name__ == "__main__":
    main()
