"""Evaluation speed: 600 fixed Omniglot test episodes at fixed episodes-per-call sizes and at the measured size
(`eval.batch_episodes: 0`, eval/batching.py), rounds interleaved so machine noise hits every setting alike.

    python benchmarks/bench_eval.py [--device cpu] [--threads 1] [--rounds 3] [--out results/eval_speed.md]

Accuracy is printed for every setting: the same episodes must give the same figure whatever the batching.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
from datetime import date
from pathlib import Path

import torch

from metassl.config import resolve
from metassl.data import load_dataset
from metassl.engine.allocator import tune_allocator
from metassl.engine.build import build_model
from metassl.eval.batching import EpisodeBatcher
from metassl.eval.episodes import Protocol, evaluate

LEARNERS = {"protonet": {"name": "protonet"}, "maml": {"name": "maml", "inner_steps": 3}}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--episodes", type=int, default=600)
    ap.add_argument("--sizes", default="50,10,1,0", help="episodes per call; 0: measured (the default)")
    ap.add_argument("--learners", default="protonet")
    ap.add_argument("--out", default="results/eval_speed.md")
    a = ap.parse_args()
    if a.device == "cpu":
        torch.set_num_threads(a.threads)
    tuned = tune_allocator()
    device = torch.device(a.device)
    split = load_dataset("omniglot", "test", None, device=device)
    sizes = [int(s) for s in a.sizes.split(",")]
    rows = []
    for lname in a.learners.split(","):
        cfg = resolve({"model": {"backbone": "conv4"}, "learner": LEARNERS[lname],
                       "train": {"channels_last": device.type == "cpu"}})
        model = build_model(cfg, split.image_shape, split.preprocess, device)
        model.train(False)
        for shots in (1, 5):
            p = Protocol("omniglot", "test", 5, shots, 15, a.episodes, 0)
            times = {s: [] for s in sizes}
            acc, chosen = {}, {}
            for _ in range(a.rounds):
                for s in sizes:  # interleaved: every setting sees the same stretch of machine load
                    batcher = EpisodeBatcher(s)
                    r = evaluate(model.predict, split, p, split.preprocess, batch_episodes=batcher)
                    times[s].append(r.seconds)
                    acc[s] = r.accuracy
                    chosen.setdefault(s, []).append(batcher.size)
            base = statistics.median(times[sizes[0]])
            for s in sizes:
                med = statistics.median(times[s])
                rows.append((lname, f"5w{shots}s", "measured" if s == 0 else str(s),
                             ",".join(map(str, chosen[s])) if s == 0 else "", a.episodes / med,
                             a.episodes / max(times[s]), a.episodes / min(times[s]), base / med, acc[s]))
                print(f"{lname} 5w{shots}s size {rows[-1][2]:>8s} {rows[-1][4]:7.1f} ep/s "
                      f"[{rows[-1][5]:.1f}-{rows[-1][6]:.1f}]  x{rows[-1][7]:.2f} vs {sizes[0]}  "
                      f"acc {acc[s]:.2f}  chosen {rows[-1][3]}", flush=True)
    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else \
        f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} thread(s))"
    lines = [
        f"## {dev_name}", "",
        f"- command: `python {' '.join(sys.argv)}`",
        f"- torch {torch.__version__}; date {date.today().isoformat()}; allocator tuned: {tuned}; "
        f"{a.rounds} interleaved rounds, median [slowest-fastest]",
        f"- model: Conv4-64 at initialization (speed does not depend on the weights), Omniglot test split, "
        f"{a.episodes} fixed episodes, 15 queries per class", "",
        f"| learner | protocol | episodes per call | measured size chosen (per round) | episodes/s | "
        f"× {sizes[0]} per call | accuracy (same episodes) |",
        "|---|---|---|---|---:|---:|---:|",
    ]
    lines += [f"| {r[0]} | {r[1]} | {r[2]} | {r[3]} | {r[4]:.1f} [{r[5]:.1f}–{r[6]:.1f}] | {r[7]:.2f} | "
              f"{r[8]:.2f} |" for r in rows]
    out = Path(a.out)
    header = ("# Evaluation speed: episodes per model call\n\nHow many fixed test episodes go through the model "
              "together (`eval.batch_episodes`; 0, the default, measures it on the device: "
              "src/metassl/eval/batching.py). Written by benchmarks/bench_eval.py.\n")
    old = out.read_text() if out.exists() else header
    sections = [s for s in old.split("\n## ")[1:] if not s.startswith(dev_name)]
    out.write_text(old.split("\n## ")[0].rstrip() + "\n" + "".join("\n## " + s.rstrip() + "\n" for s in sections)
                   + "\n" + "\n".join(lines) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
