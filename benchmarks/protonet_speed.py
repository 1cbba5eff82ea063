"""ProtoNet end to end on real Omniglot (issue 22 part 5): training and evaluation episodes/s of metassl, easyfsl 1.5.0
and learn2learn 0.2.0, each with its own data pipeline and model, rounds interleaved in one run; and the fraction of
the measured single-core conv throughput each reaches.

    python benchmarks/peers_protonet.py prepare       # once (the image folder and the fixed episodes)
    python benchmarks/protonet_speed.py --rounds 3    # -> results/protonet_speed.md (+ .json)

Each round runs one process per library (benchmarks/peers_protonet.py `speed`, one torch thread): `--warmup` training
steps, then `--steps` timed 60-way 1-shot 5-query training steps (the median is kept: data loading included, each
library's own: metassl's in-memory episode sampler, easyfsl's TaskSampler + DataLoader over the image folder,
learn2learn's TaskDataset over the same folder), then `--eval-episodes` of the fixed 5-way 1-shot 15-query test
episodes through the library's own evaluation (metassl: `metassl.eval.episodes.evaluate` with the preset's episode
batch, on the test split in memory; easyfsl: process_support_set + forward per episode; learn2learn: its example's
fast_adapt per episode; the peers' episodes come ready from the episodes file, so their loading is not counted).
The libraries alternate within each round (metassl, easyfsl, l2l, then again), so a change of the machine's load
falls on all of them.

Conv throughput: a bare channels-last 3x3 convolution 64 -> 64 on a 14x14 map (Conv4's second layer, the bulk of its
work), forward, batch 360, best of several; the FLOPs of a training step (forward + both backward passes of every
conv, 2 x multiply-adds) and of an evaluation episode (forward) divided by the measured time give each library's
fraction of that peak.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from time_to_accuracy import PYTHONS  # noqa: E402

LIBS = {"metassl": "metassl", "easyfsl 1.5.0": "easyfsl", "learn2learn 0.2.0": "l2l"}


def conv_flops_per_image(size: int = 28, hidden: int = 64, depth: int = 4) -> float:
    """Multiply-adds x 2 of Conv4's convolutions on one image (3x3, padding 1, 2x2 max-pool after each block)."""
    total, c, s = 0.0, 1, size
    for _ in range(depth):
        total += 2 * s * s * hidden * c * 9
        c, s = hidden, s // 2
    return total


def conv_peak(repeats: int = 7) -> float:
    """FLOP/s of a bare channels-last 3x3 conv 64 -> 64 on [360, 64, 14, 14], one thread (best of `repeats`)."""
    import torch

    torch.set_num_threads(1)
    conv = torch.nn.Conv2d(64, 64, 3, padding=1).to(memory_format=torch.channels_last)
    x = torch.randn(360, 64, 14, 14).contiguous(memory_format=torch.channels_last)
    flops = 2 * 360 * 14 * 14 * 64 * 64 * 9
    best = float("inf")
    with torch.inference_mode():
        conv(x)
        for _ in range(repeats):
            t0 = time.perf_counter()
            conv(x)
            best = min(best, time.perf_counter() - t0)
    return flops / best


def worker(lib: str, seed: int, a) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore",
           "METASSL_SYSTEM_MALLOC": os.environ.get("METASSL_SYSTEM_MALLOC", "1")}
    cmd = [str(PYTHONS[lib]), str(HERE / "peers_protonet.py"), "speed", "--lib", lib, "--seed", str(seed),
           "--warmup", str(a.warmup), "--steps", str(a.steps), "--eval-episodes", str(a.eval_episodes),
           "--max-steps", str(a.warmup + a.steps + 5)]
    if lib == "metassl":
        cmd += ["--set", "learner.distance=l2"]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(f"{lib} failed:\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def med_range(xs: list[float], digits: int = 2) -> str:
    return f"{statistics.median(xs):.{digits}f} [{min(xs):.{digits}f}-{max(xs):.{digits}f}]"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--eval-episodes", type=int, default=100)
    ap.add_argument("--out", default=str(ROOT / "results" / "protonet_speed.md"))
    a = ap.parse_args(argv)
    import torch

    loads, rows = [os.getloadavg()[0]], {name: [] for name in LIBS}
    peaks = [conv_peak()]
    for r in range(a.rounds):
        for name, lib in LIBS.items():
            rows[name].append(worker(lib, r, a))
            loads.append(os.getloadavg()[0])
            print(name, r, json.dumps({k: v for k, v in rows[name][-1].items() if k != "train_step_s_all"}),
                  flush=True)
        peaks.append(conv_peak())
    peak = max(peaks)
    step_flops = 3 * conv_flops_per_image() * 60 * (1 + 5)
    episode_flops = conv_flops_per_image() * 5 * (1 + 15)
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    ref_train = [1 / x["train_step_s"] for x in rows["metassl"]]
    ref_eval = [x["eval_episodes_s"] for x in rows["metassl"]]
    lines = [
        "# ProtoNet end to end on Omniglot: metassl vs easyfsl vs learn2learn (issue 22, part 5)", "",
        "Training: 60-way 1-shot 5-query episodes of the Omniglot Vinyals train split (28x28), Conv4-64, Adam; each "
        "library's own data pipeline and model (metassl's in-memory sampler and Trainer step; easyfsl's TaskSampler + "
        "DataLoader over an image folder of the same pixels, PrototypicalNetworks; learn2learn's MetaDataset + "
        "TaskDataset over the same folder, CNN4Backbone and its ProtoNet example's loss). Evaluation: the fixed "
        "5-way 1-shot 15-query test episodes through each library's own evaluation (see "
        "benchmarks/protonet_speed.py). Median [min-max] over rounds; the libraries alternate within each round. "
        "'of peak': FLOP/s reached (conv FLOPs only) over a bare channels-last 3x3 conv's, measured in the same run.",
        "",
        f"Command: `python benchmarks/protonet_speed.py --rounds {a.rounds} --steps {a.steps} --warmup {a.warmup} "
        f"--eval-episodes {a.eval_episodes}`; device: CPU ({platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores shared with other jobs, load average {min(loads):.1f}-{max(loads):.1f} during "
        f"the run), one torch thread per process; torch {torch.__version__}; metassl commit {commit}; "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.", "",
        f"Conv peak (bare NHWC 3x3 conv 64->64, 14x14, batch 360, one thread): {peak / 1e9:.1f} GFLOP/s "
        f"(per round: {', '.join(f'{p / 1e9:.1f}' for p in peaks)}). A training step is {step_flops / 1e9:.1f} "
        f"GFLOP of convolutions, an evaluation episode {episode_flops / 1e9:.2f} GFLOP. The peak is the best of its "
        f"measurements (one before the rounds, one after each); with other jobs on the cores, the fractions below "
        f"are lower bounds, the ratios between libraries the comparable figures.", "",
        "| library | training episodes/s | x metassl | of peak | evaluation episodes/s | x metassl | of peak |",
        "|---|---|---|---|---|---|---|"]
    for name in LIBS:
        tr = [1 / x["train_step_s"] for x in rows[name]]
        ev = [x["eval_episodes_s"] for x in rows[name]]
        tr_ratio = [t / m for t, m in zip(tr, ref_train)]
        ev_ratio = [e / m for e, m in zip(ev, ref_eval)]
        lines.append(f"| {name} | {med_range(tr, 3)} | {med_range(tr_ratio)} | "
                     f"{statistics.median(tr) * step_flops / peak:.0%} | {med_range(ev, 1)} | {med_range(ev_ratio)} | "
                     f"{statistics.median(ev) * episode_flops / peak:.0%} |")
    lines += ["", "'x metassl': each round's figure over metassl's in the same round (below 1: slower than metassl)."]
    out = Path(a.out)
    out.write_text("\n".join(lines) + "\n")
    out.with_suffix(".json").write_text(json.dumps({"rows": rows, "peaks": peaks, "loads": loads,
                                                    "commit": commit}, indent=1) + "\n")
    print(out.read_text())


if __name__ == "__main__":
    main()
