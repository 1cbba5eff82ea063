"""Short CPU runs of every few-shot method on Omniglot, each compared with ProtoNet on the same fixed episodes.

For each method: `metassl train <preset> train.steps=N train.threads=1 ...` into runs/fewshot_methods/<name>, then
`metassl eval <run> --ways W --shots K --episodes 600 --seed 0 --queries 15 --json --per-episode` for 5-way and
20-way 1-shot and 5-way 5-shot (the same model); the table pairs each run's per-episode accuracies with ProtoNet's on the same episodes
(`metassl.eval.compare.paired_comparison`, what `metassl compare PROTONET_RUN RUN ...` prints, without evaluating
ProtoNet again for every method). Raw results go to results/fewshot_methods/<name>_<protocol>.json with the command, the training minutes, the device
and the torch version; `--table` writes results/fewshot_methods.md from them. A finished step is skipped when run
again (the script can be stopped and restarted).

    python benchmarks/fewshot_methods.py --only protonet matchingnet     # train + compare these
    python benchmarks/fewshot_methods.py --table                          # write the markdown table
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUNS = ROOT / "runs" / "fewshot_methods"
OUT = ROOT / "results" / "fewshot_methods"
DATA = os.environ.get("METASSL_DATA", str(ROOT.parent / "shared" / "data"))
COMMON = ["train.threads=1", "train.progress=false", "train.tensorboard=false", "train.report=false",
          "train.checkpoint_every=100000"]

# name, preset, training steps (short CPU schedule), extra overrides, protocols (ways, the run that evaluates them)
METHODS: list[dict] = [
    dict(name="protonet", preset="omniglot/protonet_5w1s", steps=1000, ways=(5, 20)),
    dict(name="matchingnet", preset="omniglot/matchingnet_5w1s", steps=1000, ways=(5, 20)),
    # 20-way: 6,000 (class, query) pairs of 128 x 7 x 7 maps per episode; 50 episodes at once need > 20 GB
    dict(name="relationnet", preset="omniglot/relationnet_5w1s", steps=1000, ways=(5, 20),
         eval_args=["--batch-episodes", "5"]),
    dict(name="r2d2", preset="omniglot/r2d2_5w1s", steps=1000, ways=(5, 20)),
    dict(name="metaoptnet", preset="omniglot/metaoptnet_5w1s", steps=1000, ways=(5, 20)),
    dict(name="baseline", preset="omniglot/baseline_5w1s", steps=4000, ways=(5, 20)),
    dict(name="baseline_pp", preset="omniglot/baseline_pp_5w1s", steps=4000, ways=(5, 20)),
    # SimpleShot on the Baseline run's encoder: 0 steps, only the base-class mean for CL2N is computed
    dict(name="simpleshot", preset="omniglot/simpleshot_5w1s", steps=0, ways=(5, 20), init_from="baseline"),
    dict(name="meta_baseline", preset="omniglot/meta_baseline_5w1s", steps=500, ways=(5, 20),
         init_from="baseline"),
    dict(name="feat", preset="omniglot/feat_5w1s", steps=1000, ways=(5, 20)),
    dict(name="protomaml", preset="omniglot/protomaml_5w1s", steps=300, ways=(5, 20)),
    dict(name="boil", preset="omniglot/boil_5w1s", steps=300, ways=(5,)),
    dict(name="mamlpp", preset="omniglot/mamlpp_5w1s", steps=200, ways=(5,)),
]


# where each paper figure in the presets comes from (shown under the table)
NOTES = {
    "protonet": "paper 98.8 / 96.0 / 99.7 (5-way 1-shot, 20-way 1-shot, 5-way 5-shot; Snell et al. 2017, Table 1). The reference for every paired "
                "column: preset omniglot/protonet_5w1s (60-way training episodes), 1,000 of its 20,000 steps.",
    "matchingnet": "paper 98.1 (5-way 1-shot) as quoted in Finn et al. 2017, Table 1, not read in the paper's own table; "
                   "93.8 (20-way 1-shot) checked in the paper's abstract. Trained without full context embeddings "
                   "(`learner.fce: false`); the paper's optimizer and schedule are unchecked (the preset uses Adam 1e-3).",
    "relationnet": "paper 99.6 / 97.6 from Papers with Code's entry for the paper and a reimplementation's table, not read "
                   "in the paper's own table; settings checked against the authors' code (19 training queries per "
                   "class at 5-way 1-shot). The 20-way row evaluates the 5-way-trained model. **The 5-shot row (40.8%) is not a fair 5-shot result**: the 1-shot-trained relation module is given class maps that are sums of 5 support maps (the paper's K-shot rule), 5 times larger than any it saw in training; the paper trains a separate 5-shot model (preset omniglot/relationnet_5w5s is not written yet). Averaging the support maps instead keeps the scale: the same model gives **97.61 ± 0.21** on the same episodes with `metassl eval runs/fewshot_methods/relationnet learner.class_map=mean --dataset omniglot --split test --ways 5 --shots 5 --queries 15 --episodes 600 --seed 0` (2026-12-02).",
    "r2d2": "paper 98.6 / 94.7 **unchecked** (the paper's text was not available here). The paper's wider backbone "
            "(96-192-384-512 filters) is replaced by Conv4-64 (stated in the preset).",
    "metaoptnet": "the paper reports no Omniglot figures (miniImageNet, tieredImageNet, CIFAR-FS, FC100 only); recipe "
                  "checked against the authors' code, SVM solved to a KKT tolerance of 1e-6.",
    "baseline": "Chen et al. 2019 report Omniglot only in a GitHub issue of their code (about 94% 1-shot), not checked "
                "in the paper: no figure in the table. Test-time head: the authors' SGD recipe (100 epochs, batch 4).",
    "baseline_pp": "as Baseline; cosine classifier with the authors' scale (10 for more than 200 classes).",
    "simpleshot": "SimpleShot evaluated on the **Baseline run's encoder** (`init_from` the Baseline run, 0 training "
                  "steps: only the base-class mean for CL2N is computed): the paper trains its own classifier (90 "
                  "epochs, SGD), which its preset does; it reports no Omniglot figures.",
    "meta_baseline": "meta stage from the Baseline run above (`init_from`); no Omniglot figures in the paper.",
    "feat": "trained from scratch (the paper pre-trains a classifier: use `init_from`); no Omniglot figures in the paper.",
    "mamlpp": "paper 99.47 / 97.65 from Papers with Code's listing of the paper, Table 1 not read. The head is fixed at "
              "the training ways, so only the 5-way model was trained.",
    "boil": "the paper has no Omniglot benchmark; head fixed at the training ways: 5-way only.",
    "protomaml": "no Omniglot N-way figure in Meta-Dataset; the head comes from the prototypes, so the 5-way model "
                 "also evaluates 20-way.",
}


def sh(cmd: list[str], log: Path) -> float:
    t0 = time.perf_counter()
    with open(log, "a") as f:
        f.write("$ " + shlex.join(cmd) + "\n")
        f.flush()
        r = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT,
                           env={**os.environ, "OMP_NUM_THREADS": "1", "METASSL_DATA": DATA,
                                "PYTHONPATH": str(ROOT / "src")})  # this checkout's code, whatever is installed
    if r.returncode:
        raise RuntimeError(f"failed ({r.returncode}): {shlex.join(cmd)}; see {log}")
    return time.perf_counter() - t0


def shown(cmd: list[str]) -> str:
    """The command as the table shows it: `metassl ...`, paths relative to the repository root."""
    return "metassl " + shlex.join(cmd[3:]).replace(str(ROOT) + "/", "")


def metassl() -> list[str]:
    return [sys.executable, "-m", "metassl"]


def trained(run: Path, steps: int) -> bool:
    latest = run / "checkpoints" / "latest"
    if not latest.is_file():
        return False
    state = json.loads((run / "checkpoints" / latest.read_text().strip() / "state.json").read_text())
    return int(state["step"]) >= steps


def run_method(m: dict, log: Path) -> None:
    run = RUNS / m["name"]
    meta_file = OUT / f"{m['name']}_train.json"
    overrides = [f"train.steps={m['steps']}", *COMMON, *m.get("overrides", [])]
    if m.get("init_from"):
        overrides.append(f"init_from={RUNS / m['init_from']}")
    cmd = metassl() + ["train", m["preset"], *overrides, "--run-dir", str(run), "--data-root", DATA]
    if not trained(run, m["steps"]):
        if run.exists():
            import shutil

            shutil.rmtree(run)
        secs = sh(cmd, log)
        meta = {"command": shown(cmd), "train_minutes": round(secs / 60, 2),
                "steps": m["steps"], "preset": m["preset"], "date": str(date.today()), "device": device(),
                "torch": torch_version()}
        meta_file.write_text(json.dumps(meta, indent=1) + "\n")
    # every model is also evaluated 5-way 5-shot (cheap: the same model, the support set grows)
    for ways, shots in [(w, 1) for w in m["ways"]] + [(5, 5)]:
        out = OUT / f"{m['name']}_{ways}w{shots}s.json"
        if out.is_file():
            continue
        ev = metassl() + ["eval", str(run), "--dataset", "omniglot", "--split", "test", "--ways", str(ways),
                          "--shots", str(shots), "--queries", "15", "--episodes", "600", "--seed", "0", "--json",
                          "--per-episode", "--out", str(out), "--data-root", DATA,
                          # 20-way: 300 queries per episode; 50 episodes at once take up to 9 GB (results do not
                          # depend on the batching, tests/test_contract.py)
                          *m.get("eval_args", ["--batch-episodes", "10"] if ways > 5 else [])]
        secs = sh(ev, log)
        rows = json.loads(out.read_text())
        out.write_text(json.dumps({"command": shown(ev), "eval_minutes": round(secs / 60, 2),
                                   "result": rows[0]}, indent=1) + "\n")


def device() -> str:
    return f"CPU, {os.cpu_count()} cores ({platform.processor() or platform.machine()}), 1 torch thread per run"


def torch_version() -> str:
    import torch

    return torch.__version__


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", nargs="*", help="method names (default: all, in order)")
    ap.add_argument("--table", action="store_true", help="write results/fewshot_methods.md from the JSON files")
    a = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    RUNS.mkdir(parents=True, exist_ok=True)
    if a.table:
        sys.path.insert(0, str(Path(__file__).parent))
        from fewshot_methods_table import write_table  # benchmarks/ sibling

        write_table(METHODS, OUT, ROOT / "results" / "fewshot_methods.md", NOTES)
        return
    names = a.only or [m["name"] for m in METHODS]
    log = OUT / "log.txt"
    for m in METHODS:
        if m["name"] in names:
            try:
                run_method(m, log)
                print(f"{m['name']}: done", flush=True)
            except RuntimeError as e:
                print(f"{m['name']}: {e}", flush=True)


if __name__ == "__main__":
    main()
