"""Time to accuracy (issue 23): training steps and seconds until ProtoNet reaches 95% / 97% 5-way 1-shot on 600 fixed
Omniglot test episodes, for metassl, easyfsl 1.5.0 and learn2learn 0.2.0, and a metassl ablation.

    python benchmarks/peers_protonet.py prepare          # once: the episodes file and the image folder the peers read
    python benchmarks/time_to_accuracy.py peers  --seeds 0 1 2   # round robin: metassl, its paper setting, easyfsl, l2l
    python benchmarks/time_to_accuracy.py ablate --seeds 0 1 2   # metassl: each change alone from the paper setting
    python benchmarks/time_to_accuracy.py table          # results/time_to_accuracy.md from the recorded runs

Every run is one process of benchmarks/peers_protonet.py (`tta`; its docstring states the protocol), one torch thread,
one at a time; each finished run is appended to results/time_to_accuracy/runs.jsonl and skipped when the command is
run again (so it resumes). Steps to an accuracy do not depend on the machine's load; seconds do, so the `peers` runs
go round robin (one seed of every entry, then the next seed) and the table gives each library's seconds as a ratio
to metassl's run of the same seed, besides the absolute figures and the load average during the runs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
OUT = ROOT / "results" / "time_to_accuracy"
RUNS = OUT / "runs.jsonl"
TABLE = ROOT / "results" / "time_to_accuracy.md"
PYTHONS = {"metassl": ROOT / ".venv" / "bin" / "python", "easyfsl": HERE / ".venv-easyfsl" / "bin" / "python",
           "l2l": HERE / ".venv-l2l" / "bin" / "python"}

# name -> (library, settings); the metassl entries name every setting they differ in explicitly, so they do not move
# when the presets' defaults change
PAPER = ["learner.distance=euclidean"]
PEERS = {
    "metassl": ("metassl", ["learner.distance=l2"]),
    "metassl, paper setting": ("metassl", PAPER),
    "easyfsl 1.5.0": ("easyfsl", []),
    "learn2learn 0.2.0": ("l2l", []),
}
ABLATION = {  # each change alone, from the paper setting ("metassl, paper setting" above is the baseline)
    "plain Euclidean distance (easyfsl)": ["learner.distance=l2"],  # = PEERS["metassl"]: its runs are reused
    "support, query in two encoder calls (easyfsl)": [*PAPER, "learner.separate_support_query=true"],
    "ink not inverted (easyfsl)": [*PAPER, "x.invert=0"],
    "learn2learn's initialization": [*PAPER, "x.init=l2l"],
    "demo schedule: Adam 2e-3, cosine over 600 steps": [*PAPER, "optim.lr=0.002", "optim.schedule=cosine",
                                                        "train.steps=600"],
}


def recorded() -> list[dict]:
    if not RUNS.is_file():
        return []
    return [json.loads(line) for line in RUNS.read_text().splitlines() if line.strip()]


def run_one(name: str, lib: str, settings: list[str], seed: int, a) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore",
           "METASSL_SYSTEM_MALLOC": os.environ.get("METASSL_SYSTEM_MALLOC", "1")}
    cmd = [str(PYTHONS[lib]), str(HERE / "peers_protonet.py"), "tta", "--lib", lib, "--seed", str(seed),
           "--max-steps", str(a.max_steps), "--stop", str(a.stop), "--eval-every", str(a.eval_every)]
    if settings:
        cmd += ["--set", *settings]
    load0 = os.getloadavg()[0]
    t0 = time.time()
    p = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(f"{name} seed {seed} failed:\n{p.stderr[-3000:]}")
    out = json.loads(p.stdout.strip().splitlines()[-1])
    out.update(name=name, wall_s=round(time.time() - t0, 1), load_start=round(load0, 2),
               load_end=round(os.getloadavg()[0], 2), date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
               max_steps=a.max_steps, stop=a.stop, eval_every=a.eval_every)
    OUT.mkdir(parents=True, exist_ok=True)
    with RUNS.open("a") as f:
        f.write(json.dumps(out) + "\n")
    print(f"{name} seed {seed}: {crossing(out, 95.0)} / {crossing(out, 97.0)} (wall {out['wall_s']} s)", flush=True)
    return out


def crossing(run: dict, target: float) -> tuple[int, float] | None:
    """(step, training seconds) of the first evaluation at or above `target` %, or None."""
    for p in run["curve"]:
        if p.get("accuracy", 0.0) >= target:
            return p["step"], p["seconds"]
    return None


def run_entries(entries: dict, seeds: list[int], a) -> None:
    done = {(r["name"], r["seed"]) for r in recorded()}
    for seed in seeds:  # round robin: every entry for one seed, then the next seed
        for name, (lib, settings) in entries.items():
            if (name, seed) in done:
                continue
            run_one(name, lib, settings, seed, a)


# -- the table ---------------------------------------------------------------------------------------------------

def fmt_spread(xs: list[float], digits: int = 0) -> str:
    if not xs:
        return "-"
    m = statistics.mean(xs)
    if len(xs) == 1:
        return f"{m:.{digits}f}"
    return f"{m:.{digits}f} [{min(xs):.{digits}f}-{max(xs):.{digits}f}]"


def cell(runs: list[dict], target: float, what: int) -> str:
    vals, missed = [], []
    for r in runs:
        c = crossing(r, target)
        if c is None:
            last = r["curve"][-1]["step"] if r["curve"] else 0
            stopped = max((p.get("accuracy", 0) for p in r["curve"]), default=0) >= r["stop"]
            missed.append("not run" if stopped else f">{last}")
        else:
            vals.append(c[what])
    if not vals:  # no seed got there: where the runs stopped
        return ", ".join(sorted(set(missed)))
    text = fmt_spread(vals)
    if missed:
        text += f" ({len(vals)} of {len(runs)} seeds; others {', '.join(missed)})"
    return text


def step_seconds(runs: list[dict]) -> str:
    """Training seconds per step over each whole run (mean [min-max] over runs)."""
    return fmt_spread([r["curve"][-1]["seconds"] / r["curve"][-1]["step"] for r in runs if r["curve"]], 2)


def accuracy_at(runs: list[dict], step: int) -> str:
    """Mean [min-max] of the 600-episode accuracy at `step` over the runs that evaluated all 600 there."""
    xs = [p["accuracy"] for r in runs for p in r["curve"] if p["step"] == step and "accuracy" in p]
    return fmt_spread(xs, 1) + (f" ({len(xs)} of {len(runs)})" if 0 < len(xs) < len(runs) else "") if xs else "-"


def per_seed(runs: list[dict], target: float) -> str:
    parts = []
    for r in sorted(runs, key=lambda r: r["seed"]):
        c = crossing(r, target)
        parts.append(f"{r['seed']}: " + (f"{c[0]} / {c[1]:.0f} s" if c else "-"))
    return "; ".join(parts)


def ratio_cell(runs: list[dict], ref: list[dict], target: float) -> str:
    by_seed = {r["seed"]: crossing(r, target) for r in ref}
    xs = []
    for r in runs:
        c, m = crossing(r, target), by_seed.get(r["seed"])
        if c and m:
            xs.append(c[1] / m[1])
    return fmt_spread(xs, 2) if xs else "-"


def table(a) -> None:
    runs = recorded()
    by_name: dict[str, list[dict]] = {}
    for r in runs:
        by_name.setdefault(r["name"], []).append(r)
    lines = [(ROOT / "benchmarks" / "time_to_accuracy_header.md").read_text().rstrip(), ""]
    lines += ["## Peers: the same protocol, each library's own pipeline and model", "",
              "Mean [min-max] over the seeds; steps are 60-way 1-shot training episodes; seconds are training seconds "
              "(clock stopped while evaluating) on one thread of a shared 2-core CPU (load average in the last "
              "column); 'x metassl' is each seed's seconds divided by metassl's for the same seed, from runs made "
              "round robin.", "",
              "| library | steps to 95% | seconds to 95% | x metassl (seconds to 95%) | s per step | steps to 97% | "
              "per seed: step / s to 95% | seeds | load |", "|---|---|---|---|---|---|---|---|---|"]
    ref = by_name.get("metassl", [])
    for name in PEERS:
        rs = by_name.get(name, [])
        if not rs:
            lines.append(f"| {name} | not run | | | | | | | |")
            continue
        loads = [r["load_start"] for r in rs] + [r["load_end"] for r in rs]
        lines.append(f"| {name} | {cell(rs, 95, 0)} | {cell(rs, 95, 1)} | {ratio_cell(rs, ref, 95)} | "
                     f"{step_seconds(rs)} | {cell(rs, 97, 0)} | {per_seed(rs, 95)} | "
                     f"{','.join(str(r['seed']) for r in sorted(rs, key=lambda r: r['seed']))} | "
                     f"{min(loads):.1f}-{max(loads):.1f} |")
    lines += ["", "## Ablation: each change alone from metassl's paper setting", "",
              "Steps do not depend on the load. Baseline: squared Euclidean distance, support and query in one encoder "
              "call, ink inverted (1 = ink), torch's default initialization and BatchNorm (momentum 0.1, eps 1e-5), "
              "no input normalization, Adam 1e-3 constant.", "",
              "| change | steps to 95% | accuracy at step 100 (%) | steps to 97% | seconds to 95% | "
              "per seed: step / s to 95% | seeds |", "|---|---|---|---|---|---|---|"]
    base = by_name.get("metassl, paper setting", [])
    # the plain-distance change alone is metassl's new default: its runs are the peers table's "metassl" runs
    rows = [("baseline (metassl, paper setting)", base)] + [
        (n, by_name.get(n) or (by_name.get("metassl", []) if n.startswith("plain Euclidean") else []))
        for n in ABLATION]
    for name, rs in rows:
        if not rs:
            lines.append(f"| {name} | not run | | | | | |")
            continue
        lines.append(f"| {name} | {cell(rs, 95, 0)} | {accuracy_at(rs, 100)} | {cell(rs, 97, 0)} | {cell(rs, 95, 1)} | "
                     f"{per_seed(rs, 95)} | "
                     f"{','.join(str(r['seed']) for r in sorted(rs, key=lambda r: r['seed']))} |")
    footer = ROOT / "benchmarks" / "time_to_accuracy_footer.md"
    if footer.is_file():
        lines += ["", footer.read_text().rstrip()]
    sha = sorted({r["episodes_sha256"] for r in runs})
    lines += ["", f"Episodes evaluated (sha256 of the uint8 pixels of the 600 episodes, every run): {', '.join(sha)}. "
              f"Runs: {len(runs)}, {min((r['date'] for r in runs), default='-')} to "
              f"{max((r['date'] for r in runs), default='-')}; torch {runs[0]['torch'] if runs else '-'}; raw curves "
              f"in results/time_to_accuracy/runs.jsonl."]
    TABLE.write_text("\n".join(lines) + "\n")
    print(TABLE.read_text())


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("what", choices=("peers", "ablate", "table"))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--only", nargs="*", default=None, help="entry names to run (default: all)")
    ap.add_argument("--max-steps", type=int, default=240)
    ap.add_argument("--stop", type=float, default=97.0, help="stop a run at its first evaluation at or above this")
    ap.add_argument("--eval-every", type=int, default=20)
    a = ap.parse_args(argv)
    if a.what == "table":
        return table(a)
    entries = PEERS if a.what == "peers" else {n: ("metassl", s) for n, s in ABLATION.items()}
    if a.only:
        entries = {n: v for n, v in entries.items() if n in a.only}
    run_entries(entries, a.seeds, a)


if __name__ == "__main__":
    sys.exit(main())
