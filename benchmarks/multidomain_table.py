"""Markdown tables for results/multidomain.md from `metassl eval RUN --protocol metadataset --json --out` files.

    python benchmarks/multidomain_table.py RUNS_DIR      # reads RUNS_DIR/eval/<run>.json and RUNS_DIR/<run>/

Table 1: accuracy ± 95% CI per test data set (rows) and run (columns), W = a data set the run trained on (its test
classes: never seen), X = a data set it never saw; average rank over the data sets (1 = best, ties shared).
Table 2: each run's mean accuracy over its within-domain and over its cross-domain test sets.
Table 3: every other run against the first, paired on the same episodes (difference other - first ± 95% CI).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml

from metassl.eval.compare import paired_comparison
from metassl.eval.metadataset import average_ranks

ORDER = ["md_protonet", "md_matchingnet", "md_protonet_5w", "om_protonet", "om_simclr"]


def main(root: Path) -> None:
    rows = {}
    for f in sorted((root / "eval").glob("*.json")):
        d = json.loads(f.read_text())
        d = d[0] if isinstance(d, list) else d
        rows[f.stem] = d
    runs = [r for r in ORDER if r in rows] + sorted(r for r in rows if r not in ORDER)
    meta = {}
    for r in runs:
        cfg = yaml.safe_load((root / r / "config.yaml").read_text())
        data = cfg["data"]
        trained = data.get("datasets") or [data["dataset"]]
        latest = (root / r / "checkpoints" / "latest")
        folder = root / r / "checkpoints" / latest.read_text().strip() if latest.is_file() else None
        step = json.loads((folder / "state.json").read_text())["step"] if folder and (folder / "state.json").is_file() \
            else "?"
        src = cfg["tasks"].get("source", "auto")
        meta[r] = {"trained": trained, "step": step, "learner": cfg["learner"]["name"], "source": src}
    datasets = [res["protocol"]["dataset"] for res in rows[runs[0]]["results"]]
    acc = {r: {res["protocol"]["dataset"]: res for res in rows[r]["results"]} for r in runs}
    ranks = average_ranks([[acc[r][ds]["accuracy"] for r in runs] for ds in datasets])
    print("| test data set (its test split) | " + " | ".join(
        f"{r}<br>{meta[r]['learner']}, {'+'.join(meta[r]['trained'])}, {meta[r]['source']}, step {meta[r]['step']}"
        for r in runs) + " |")
    print("|---|" + "---|" * len(runs))
    for ds in datasets:
        first = acc[runs[0]][ds]["protocol"]
        label = f"{ds} (ways {first.get('mean_ways', 0):.1f}, support {first.get('mean_support', 0):.0f}, " \
                f"query {first.get('mean_query', 0):.0f})"
        cells = []
        for r in runs:
            res = acc[r][ds]
            tag = "W" if ds in meta[r]["trained"] else "X"
            cells.append(f"{res['accuracy']:.1f} ± {res['ci95']:.1f} ({tag})")
        print(f"| {label} | " + " | ".join(cells) + " |")
    print("| average rank | " + " | ".join(f"{x:.2f}" for x in ranks) + " |")
    print()
    print("| run | within-domain test sets | mean accuracy | cross-domain test sets | mean accuracy |")
    print("|---|---|---|---|---|")
    for r in runs:
        w = [ds for ds in datasets if ds in meta[r]["trained"]]
        x = [ds for ds in datasets if ds not in meta[r]["trained"]]

        def mean(lst):
            return sum(acc[r][ds]["accuracy"] for ds in lst) / len(lst) if lst else float("nan")
        print(f"| {r} | {', '.join(w) or '-'} | {mean(w):.1f} | {', '.join(x)} | {mean(x):.1f} |")
    print()
    ref = runs[0]
    print(f"| test data set | " + " | ".join(f"{r} - {ref}" for r in runs[1:]) + " |")
    print("|---|" + "---|" * (len(runs) - 1))
    for ds in datasets:
        cells = []
        for r in runs[1:]:
            pc = paired_comparison(acc[ref][ds]["per_episode_accuracy"], acc[r][ds]["per_episode_accuracy"])
            cells.append(f"{pc.mean_difference:+.1f} ± {pc.ci95:.1f} (p = {pc.t_pvalue:.2g})")
        print(f"| {ds} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "runs/multidomain"))
