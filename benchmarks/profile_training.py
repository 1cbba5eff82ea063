"""Where a ProtoNet training step's time goes on a CPU, against the machine's own convolution throughput (issue 22
part 3).

Peak: the fastest of bare 3x3 convolutions (NHWC, the step's own layer shapes, forward only) in GFLOP/s. Step: the
real training step (device-side sampling, preprocessing, Conv4-64 forward/backward through the learner, Adam), its
FLOPs counted by torch.utils.flop_counter, its time the median of `--steps` steps, for each variant (rounds
interleaved): eager NCHW, eager channels-last (the engine's CPU default), and channels-last under `torch.compile`
(inductor, CPU). The share of the peak = step GFLOP/s / peak GFLOP/s. Then a torch.profiler breakdown of the default
variant by operator (self CPU time).

    python benchmarks/profile_training.py [--threads 1] [--shape 60,1,5] [--out results/training_profile.md]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from datetime import date
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from metassl.config import resolve
from metassl.data import load_dataset, sample_tasks
from metassl.engine.allocator import tune_allocator
from metassl.engine.build import build_model
from metassl.engine.optim import make_optimizer


def conv_peak(batch: int, repeats: int = 5) -> tuple[float, str]:
    best, where = 0.0, ""
    for cin, hw in ((64, 14), (64, 7), (64, 28)):
        x = torch.randn(batch, cin, hw, hw).contiguous(memory_format=torch.channels_last)
        conv = torch.nn.Conv2d(cin, 64, 3, padding=1).to(memory_format=torch.channels_last)
        flops = 2 * batch * 64 * cin * 9 * hw * hw
        with torch.no_grad():
            conv(x)
            for _ in range(repeats):
                t0 = time.perf_counter()
                conv(x)
                g = flops / (time.perf_counter() - t0) / 1e9
                if g > best:
                    best, where = g, f"{batch}x{cin}x{hw}x{hw} -> 64"
    return best, where


def relu_before_pool(module: torch.nn.Module) -> None:
    """Back to the papers' conv -> norm -> ReLU -> pool order (Conv4 computes pool then ReLU: the same function)."""
    for seq in [m for m in module.modules() if isinstance(m, torch.nn.Sequential)]:
        mods = list(seq)
        for i in range(len(mods) - 1):
            if isinstance(mods[i], torch.nn.MaxPool2d) and isinstance(mods[i + 1], torch.nn.ReLU):
                seq[i], seq[i + 1] = mods[i + 1], mods[i]


def make_step(split, ways, shots, queries, channels_last, compiled, papers_order=False):
    cfg = resolve({"model": {"backbone": "conv4"}, "learner": {"name": "protonet", "compile": compiled},
                   "train": {"channels_last": channels_last}})
    model = build_model(cfg, split.image_shape, split.preprocess, torch.device("cpu"))
    if papers_order:
        relu_before_pool(model.encoder)
    model.train(True)
    opt = make_optimizer(model.params.values(), cfg.optim)
    gen = torch.Generator().manual_seed(0)
    loss_fn = model.learner.loss
    if compiled:
        loss_fn = torch.compile(loss_fn)

    def step():
        b = sample_tasks(split, ways, shots, queries, 1, gen).map_images(split.preprocess)
        loss = loss_fn(model.params, model.buffers, b).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--shape", default="60,1,5", help="ways,shots,queries of the training episodes")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--out", default="results/training_profile.md")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    tuned = tune_allocator()
    ways, shots, queries = map(int, a.shape.split(","))
    split = load_dataset("omniglot", "train", None)
    images = ways * (shots + queries)
    variants = {"eager, NCHW": (False, False, False), "eager, channels-last (default)": (True, False, False),
                "eager, channels-last, ReLU before the pool (the papers' order)": (True, False, True)}
    if not a.no_compile:
        variants["torch.compile (inductor), channels-last"] = (True, True, False)
    steps = {}
    for name, (cl, comp, order) in variants.items():
        steps[name] = make_step(split, ways, shots, queries, cl, comp, order)
        t0 = time.perf_counter()
        steps[name]()  # warm-up (and compilation)
        print(f"{name}: first step {time.perf_counter() - t0:.1f} s", flush=True)
    with FlopCounterMode(display=False) as fc:
        steps["eager, channels-last (default)"]()
    flops = fc.get_total_flops()
    times = {k: [] for k in variants}
    peaks = []
    for _ in range(a.rounds):
        peaks.append(conv_peak(images))
        for name, step in steps.items():
            for _ in range(a.steps):
                t0 = time.perf_counter()
                step()
                times[name].append(time.perf_counter() - t0)
        print({k: round(statistics.median(v), 4) for k, v in times.items()}, flush=True)
    peak, where = max(peaks)
    rows = []
    for name in variants:
        med = statistics.median(times[name])
        rows.append((name, med, min(times[name]), max(times[name]), flops / med / 1e9, 100 * flops / med / 1e9 / peak))
    # where the default step's time goes
    step = steps["eager, channels-last (default)"]
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(3):
            step()
    ev = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in ev)
    top = sorted(ev, key=lambda e: e.self_cpu_time_total, reverse=True)[:14]
    lines = [
        f"## {ways}-way {shots}-shot {queries}-query ProtoNet step, CPU, {a.threads} thread(s)", "",
        f"- command: `python {' '.join(sys.argv)}`",
        f"- device: CPU ({platform.processor() or platform.machine()}); torch {torch.__version__}; "
        f"date {date.today().isoformat()}; allocator tuned: {tuned}",
        f"- peak: bare NHWC 3x3 convolution, fastest of the step's layer shapes: {peak:.1f} GFLOP/s ({where}); "
        f"step: {flops / 1e9:.2f} GFLOP (forward + backward, flop_counter), {a.rounds} rounds x {a.steps} steps "
        "interleaved, median [fastest-slowest]", "",
        "| variant | s/step | GFLOP/s | share of the conv peak |", "|---|---:|---:|---:|"]
    lines += [f"| {n} | {m:.3f} [{lo:.3f}–{hi:.3f}] | {g:.1f} | {s:.0f}% |" for n, m, lo, hi, g, s in rows]
    lines += ["", "Self CPU time of the default step by operator (torch.profiler, 3 steps):", "",
              "| operator | share |", "|---|---:|"]
    lines += [f"| `{e.key}` | {100 * e.self_cpu_time_total / total:.1f}% |" for e in top]
    out = Path(a.out)
    head = ("# Training step profile (benchmarks/profile_training.py)\n\nWhere a ProtoNet step's time goes, against "
            "this machine's own convolution throughput measured in the same run.\n")
    old = out.read_text() if out.exists() else head
    title = lines[0][3:]
    kept = [s for s in old.split("\n## ")[1:] if not s.startswith(title)]
    out.write_text(old.split("\n## ")[0].rstrip() + "\n" + "".join("\n## " + s.rstrip() + "\n" for s in kept)
                   + "\n" + "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
