"""CPU memory allocators side by side on real training runs (issue 22 part 1): glibc as it comes, metassl's default
(`mallopt` at start-up, src/metassl/engine/allocator.py), jemalloc and tcmalloc preloaded (LD_PRELOAD; Debian's
libjemalloc2 / libtcmalloc-minimal4, found with `--lib-dir` or ldconfig; rows are skipped when absent).

Each (workload, allocator) is a fresh `metassl train` process, rounds interleaved so machine load falls on every
allocator alike. Reported: seconds per step after the warm-up (from the run's metrics.jsonl, median over rounds
[range]), the speed ratio against glibc as it comes, the process's peak resident memory, and whether the logged
losses are identical, bit for bit, to glibc's (the allocator must never change numerics).

    python benchmarks/bench_allocator.py [--rounds 3] [--lib-dir /tmp/alloc/root/usr/lib/x86_64-linux-gnu]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORKLOADS = {  # name: (preset, overrides, warm-up steps)
    "protonet 60w1s5q (demo)": ("omniglot/protonet_demo", ["train.steps=40"], 10),
    "dino multi-crop 128 images": ("omniglot/dino", ["train.steps=16", "tasks.batch_size=128"], 6),
}
LIBS = {"jemalloc": "libjemalloc.so.2", "tcmalloc": "libtcmalloc_minimal.so.4"}

WRAPPER = """
import resource, subprocess, sys
rc = subprocess.run(sys.argv[1:]).returncode
print("MAXRSS_KB", resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
sys.exit(rc)
"""


def find_lib(name: str, lib_dir: str | None) -> str | None:
    if lib_dir and (Path(lib_dir) / name).exists():
        return str(Path(lib_dir) / name)
    out = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True).stdout
    for line in out.splitlines():
        if line.strip().startswith(name):
            return line.split("=>")[-1].strip()
    return None


def run_once(preset, overrides, env_extra, threads, tmp):
    run_dir = Path(tempfile.mkdtemp(dir=tmp))
    shutil.rmtree(run_dir)
    cmd = [sys.executable, "-c", WRAPPER, sys.executable, "-m", "metassl", "train", preset, *overrides,
           f"train.threads={threads}", "train.log_every=1", "train.val_every=0", "train.checkpoint_every=100000",
           "train.progress=false", "--run-dir", str(run_dir)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), **env_extra}
    env.pop("METASSL_SYSTEM_MALLOC", None)
    env.update(env_extra)
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{p.stderr[-2000:]}")
    rss = int(next(line.split()[1] for line in p.stdout.splitlines() if line.startswith("MAXRSS_KB"))) / 1024
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if r.get("kind") == "train"]
    shutil.rmtree(run_dir, ignore_errors=True)
    return rows, rss


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--lib-dir", default=None, help="folder holding libjemalloc.so.2 / libtcmalloc_minimal.so.4")
    ap.add_argument("--workloads", default=",".join(WORKLOADS))
    ap.add_argument("--out", default=str(ROOT / "results" / "allocator.md"))
    a = ap.parse_args()
    allocators = {"glibc as it comes": {"METASSL_SYSTEM_MALLOC": "1"}, "metassl default (mallopt)": {}}
    for name, lib in LIBS.items():
        path = find_lib(lib, a.lib_dir)
        if path:
            allocators[f"{name} (LD_PRELOAD)"] = {"LD_PRELOAD": path, "METASSL_SYSTEM_MALLOC": "1"}
        else:
            print(f"{name}: {lib} not found, row skipped")
    tmp = tempfile.mkdtemp(prefix="bench_alloc_")
    table = []
    for wname in a.workloads.split(","):
        preset, overrides, warm = WORKLOADS[wname]
        per = {k: {"s": [], "rss": [], "loss": None} for k in allocators}
        for r in range(a.rounds):
            for name, env in allocators.items():
                rows, rss = run_once(preset, overrides, env, a.threads, tmp)
                t = [x for x in rows if x["step"] >= warm]
                sps = (t[-1]["elapsed_s"] - t[0]["elapsed_s"]) / (t[-1]["step"] - t[0]["step"])
                per[name]["s"].append(sps)
                per[name]["rss"].append(rss)
                per[name]["loss"] = [x["loss"] for x in rows]
                print(f"{wname} | {name} | round {r}: {sps:.3f} s/step, peak {rss:.0f} MB, "
                      f"last loss {rows[-1]['loss']:.6f}", flush=True)
        base = statistics.median(per["glibc as it comes"]["s"])
        ref = per["glibc as it comes"]["loss"]
        for name, d in per.items():
            med = statistics.median(d["s"])
            table.append((wname, name, med, min(d["s"]), max(d["s"]), base / med, max(d["rss"]),
                          "yes" if d["loss"] == ref else "NO"))
    shutil.rmtree(tmp, ignore_errors=True)
    import torch
    lines = ["# CPU memory allocators on training runs", "",
             f"- command: `python {' '.join(sys.argv)}`",
             f"- device: CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores), "
             f"{a.threads} torch thread(s) per run; torch {torch.__version__}; date {date.today().isoformat()}",
             f"- {a.rounds} interleaved rounds, a fresh process per run; seconds per step after the warm-up, median "
             "[fastest-slowest]; peak RSS: the largest over the rounds", "",
             "| workload | allocator | s/step | × glibc as it comes | peak RSS (MB) | losses identical to glibc's |",
             "|---|---|---:|---:|---:|---|"]
    lines += [f"| {w} | {n} | {m:.3f} [{lo:.3f}–{hi:.3f}] | {x:.2f} | {rss:,.0f} | {same} |"
              for w, n, m, lo, hi, x, rss, same in table]
    out = Path(a.out)
    keep = out.read_text().split("\n<!-- notes -->")[1] if out.exists() and "<!-- notes -->" in out.read_text() else ""
    out.write_text("\n".join(lines) + "\n" + ("\n<!-- notes -->" + keep if keep else ""))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
