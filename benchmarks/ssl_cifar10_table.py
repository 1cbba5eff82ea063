"""Markdown rows for results/ssl_cifar10.md from the runs of benchmarks/ssl_methods_cifar10.sh.

    python benchmarks/ssl_cifar10_table.py RUNS_DIR METHOD...   # reads RUNS_DIR/<m>/ and RUNS_DIR/<m>.{knn,linear,fewshot}.json

One row per method: backbone and width, steps x batch (and the epochs of the 50,000 training images that makes), training
minutes (the last train row's `elapsed_s`), kNN and linear-probe top-1, few-shot 5-way 1/5-shot ± 95% CI.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml

from metassl.engine.logging import read_metrics


def _load(path: Path):
    return json.loads(path.read_text()) if path.is_file() else None


def _top1(d) -> str:
    return f"{d['accuracy'] / 100:.3f}" if d else "not run"


def row(root: Path, m: str) -> str:
    cfg = yaml.safe_load((root / m / "config.yaml").read_text())
    model, tasks = cfg["model"], cfg["tasks"]
    if model["backbone"] == "vit":
        net = f"ViT-{model.get('size', 'tiny')}, patch {model['patch_size']}"
    else:
        net = f"ResNet-18, width {model.get('width', 64)}"
    crops = f", {tasks['local_crops']} local crops" if tasks.get("local_crops") else ""
    tr = [r for r in read_metrics(root / m) if r.get("kind") == "train"]
    # a 0-step run (the random-init baseline) logs no train row
    steps, minutes = (tr[-1]["step"], tr[-1]["elapsed_s"] / 60) if tr else (0, 0.0)
    seen = steps * tasks["batch_size"]
    knn, lin, few = (_load(root / f"{m}.{p}.json") for p in ("knn", "linear", "fewshot"))
    if few:
        few = few if isinstance(few, list) else [few]
        fs = " | ".join(f"{d['accuracy']:.2f} ± {d['ci95']:.2f}" for d in few)
    else:
        fs = "not run | not run"
    return (f"| {m} | {net}{crops} | {steps} x {tasks['batch_size']} ({seen / 50000:.2f} epochs) | {minutes:.1f} | "
            f"{_top1(knn)} | {_top1(lin)} | {fs} |")


def main(root: Path, methods: list[str]) -> None:
    print("| method | network | steps x batch (epochs) | train min | kNN top-1 | linear top-1 | few-shot 5w1s | "
          "few-shot 5w5s |")
    print("|---|---|---|---:|---:|---:|---:|---:|")
    for m in methods:
        print(row(root, m))


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2:])
