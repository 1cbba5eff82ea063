"""`metassl eval` with each test image embedded once (`SharedFeatures`, engine/shared_features.py) against every
episode's images embedded anew, on a trained run; rounds interleaved so machine noise hits both alike.

    python benchmarks/bench_shared_features.py RUN [--ways 5] [--shots 1 5] [--episodes 600] [--rounds 2]
        [--threads 1] [--out results/eval_speed.md]

Accuracies and per-episode values must be identical (asserted); the table gives seconds and the ratio.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from datetime import date
from pathlib import Path

import torch

from metassl.engine.evaluate import evaluate_run


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("run")
    ap.add_argument("--ways", type=int, default=5)
    ap.add_argument("--shots", type=int, nargs="+", default=[1, 5])
    ap.add_argument("--episodes", type=int, default=600)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="results/eval_speed.md")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    secs = {True: [], False: []}
    ref = None  # the first evaluation's results; every later one must equal it
    for _ in range(a.rounds):
        for shared in (True, False):
            t = time.perf_counter()
            model, state, res = evaluate_run(a.run, ways=a.ways, shots=a.shots, episodes=a.episodes, device="cpu",
                                             share_features=shared)
            secs[shared].append(time.perf_counter() - t)
            assert state["shared_features"] == shared, "the learner's logits differ on stored features"
            got = [(r.accuracy, r.per_episode_accuracy) for r in res]
            ref = ref or got
            assert got == ref, "shared features changed the results"
    name = model.config.learner.name
    backbone = model.config.model.backbone
    med = {k: statistics.median(v) for k, v in secs.items()}
    lines = [
        f"\n## `metassl eval` with each test image embedded once (`SharedFeatures`)\n",
        f"- command: `python benchmarks/bench_shared_features.py {a.run} --ways {a.ways} --shots "
        f"{' '.join(map(str, a.shots))} --episodes {a.episodes} --rounds {a.rounds} --threads {a.threads}`",
        f"- {platform.machine()} CPU, {a.threads} thread(s), torch {torch.__version__}, {date.today()}; "
        f"{a.rounds} interleaved rounds, median [slowest-fastest]; run: {name}, {backbone}, "
        f"{model.config.data.dataset} test split\n",
        "| setting | seconds | speed-up (same run) | accuracy (same episodes) |",
        "|---|---:|---:|---|",
    ]
    accs = " / ".join(f"{r[0]:.2f}" for r in ref)
    for shared, label in ((False, "every episode's images embedded"), (True, "each test image embedded once")):
        s = secs[shared]
        lines.append(f"| {label} | {med[shared]:.1f} [{max(s):.1f}-{min(s):.1f}] | "
                     f"{med[False] / med[shared]:.2f} | {accs} |")
    text = "\n".join(lines) + "\n"
    print(text)
    with open(Path(a.out), "a") as f:
        f.write(text)


if __name__ == "__main__":
    main()
