"""results/fewshot_methods.md from the JSON files benchmarks/fewshot_methods.py writes (see that file)."""

from __future__ import annotations

import json
from pathlib import Path

from metassl.config import ConfigError, load_config
from metassl.eval.compare import paired_comparison

NAMES = {"protonet": "ProtoNet", "matchingnet": "Matching Networks", "relationnet": "Relation Networks",
         "r2d2": "R2-D2", "metaoptnet": "MetaOptNet (SVM)", "baseline": "Baseline", "baseline_pp": "Baseline++",
         "simpleshot": "SimpleShot (CL2N)", "meta_baseline": "Meta-Baseline", "feat": "FEAT", "mamlpp": "MAML++",
         "boil": "BOIL", "protomaml": "ProtoMAML"}


def _paired(ref: dict | None, ours: dict) -> str:
    if ref is None:
        return "ProtoNet not evaluated"
    c = paired_comparison(ref["per_episode_accuracy"], ours["per_episode_accuracy"])
    return (f"{c.mean_difference:+.2f} ± {c.ci95:.2f} (t p={c.t_pvalue:.2g}, W p={c.wilcoxon_pvalue:.2g}; "
            f"won {c.wins}, lost {c.losses})")


def write_table(methods: list[dict], out: Path, path: Path, notes: dict[str, str] | None = None) -> None:
    lines = []
    meta_any = None
    for m in methods:
        name = m["name"]
        cfg = load_config(m["preset"])
        meta_file = out / f"{name}_train.json"
        meta = json.loads(meta_file.read_text()) if meta_file.is_file() else None
        meta_any = meta_any or meta
        for ways, shots in ((5, 1), (20, 1), (5, 5)):
            f = out / f"{name}_{ways}w{shots}s.json"
            tag = f"{ways}w{shots}s"
            paper = cfg.eval.paper.get(tag)
            if paper is None and tag != "5w1s":  # the paper's figure sits in the method's own preset
                try:
                    paper = load_config(m["preset"].replace("_5w1s", f"_{tag}")).eval.paper.get(tag)
                except (ConfigError, FileNotFoundError):  # no such preset
                    paper = None
            paper_s = "—" if paper is None else f"{paper}"
            full = cfg.train.steps
            if not f.is_file() or meta is None:
                why = ("not run: the head is fixed at the training ways and a 20-way model did not fit this "
                       "session's CPU time" if ways not in m["ways"] else "not run this session")
                lines.append(f"| {NAMES.get(name, name)} | {ways}-way {shots}-shot | {paper_s} | {why} | | | | |")
                continue
            ours = json.loads(f.read_text())["result"]
            ref_file = out / f"protonet_{tag}.json"
            ref = json.loads(ref_file.read_text())["result"] if ref_file.is_file() else None
            pct = 100 * meta["steps"] / full
            paired = "(reference)" if name == "protonet" else _paired(ref, ours)
            lines.append(f"| {NAMES.get(name, name)} | {ways}-way {shots}-shot | {paper_s} | {ours['accuracy']:.2f} ± "
                         f"{ours['ci95']:.2f} | {meta['steps']:,} of {full:,} ({pct:.2g}%) | {meta['train_minutes']} | "
                         f"{paired} | not yet run (needs GPU) |")
    header = [
        "# Few-shot methods on Omniglot: short CPU runs, paired against ProtoNet",
        "",
        "Every row is a **short CPU run** (a small fraction of the paper's schedule, stated per row): it shows that the",
        "method trains and evaluates through the CLI from its preset and how far a few CPU minutes get, not whether the",
        "full schedule reaches the paper's number. Protocol for every row: the Vinyals split with rotations, 600 test",
        "episodes with 15 queries per class, episode seed 0 — the **same episodes for every method**, so the last",
        "column is a paired comparison against the ProtoNet run (`metassl.eval.compare.paired_comparison` on the saved",
        "per-episode accuracies: what `metassl compare PROTONET_RUN RUN` prints): the mean per-episode difference in",
        "points with its 95% CI (Student's t), the paired t-test's and the Wilcoxon signed-rank test's p-values, and",
        "the episodes won/lost. Accuracy is mean ± 95% CI (1.96 · std / √600).",
        "",
        "**Read the paired column as \"after this short run\", not as a ranking of the methods.** The budgets differ:",
        "each preset keeps its paper's batch shape, so per step ProtoNet sees one 60-way episode (360 images) and R2-D2",
        "one of 600, MetaOptNet 8 tasks of 5-way 5-shot, Meta-Baseline 4 tasks, the MAML family 4 to 32 small 5-way",
        "tasks, Matching Networks, Relation Networks and FEAT one 5-way episode, and Baseline/Baseline++ 16 images;",
        "and each method got a different fraction of its paper's schedule (column 5). The methods whose heads are",
        "fixed at the training ways (BOIL, MAML++) have no 20-way row; every other model is evaluated 20-way as it is.",
        "",
        "| method | protocol | paper | ours: short CPU run | steps of the preset's | train (min) | vs ProtoNet, same episodes | full-length run |",
        "|---|---|---:|---:|---|---:|---|---|",
    ]
    footer = ["", "Commands (from the repository root; `METASSL_DATA=../shared/data`):", ""]
    for m in methods:
        meta_file = out / f"{m['name']}_train.json"
        if meta_file.is_file():
            meta = json.loads(meta_file.read_text())
            footer.append(f"- {NAMES.get(m['name'], m['name'])}: `{meta['command']}`")
            for tag in ("5w1s", "20w1s", "5w5s"):
                f = out / f"{m['name']}_{tag}.json"
                if f.is_file():
                    footer.append(f"  then `{json.loads(f.read_text())['command']}`")
    if meta_any:
        footer += ["", f"Device: {meta_any['device']}; torch {meta_any['torch']}; date {meta_any['date']}. Minutes are "
                   "wall-clock on a shared 2-core machine with other work running (two runs at a time, one thread "
                   "each): compare them only roughly.", "",
                   "All raw numbers (each run's accuracy, CI, F1, ROC-AUC and the paired statistics) are in "
                   "`results/fewshot_methods/*.json`; `python benchmarks/fewshot_methods.py --table` rewrites this "
                   "page from them."]
    footer += ["", "## miniImageNet and CIFAR-FS", "",
               "Not yet run: **data not available here** (no miniImageNet or CIFAR-FS files on this machine; both "
               "loaders exist, see `metassl datasets`). Commands, once the data is under `$METASSL_DATA` (each "
               "method's Omniglot preset with the data set swapped; the papers' miniImageNet backbones, e.g. "
               "ResNet-12 for MetaOptNet, FEAT and Meta-Baseline, are `model.backbone=resnet12`):", "",
               "```bash",
               "for m in protonet matchingnet relationnet r2d2 metaoptnet baseline baseline_pp simpleshot feat "
               "protomaml boil mamlpp; do",
               "  metassl train omniglot/${m}_5w1s data.dataset=miniimagenet data.train_split=train "
               "data.val_split=null data.test_split=test --run-dir runs/mini/$m",
               "  metassl eval runs/mini/$m --ways 5 --shots 1 5 --episodes 600 --seed 0 --json --per-episode "
               "--out results/fewshot_methods/mini_${m}.json",
               "done",
               "metassl train omniglot/meta_baseline_5w1s data.dataset=miniimagenet data.train_split=train "
               "data.val_split=null data.test_split=test init_from=runs/mini/baseline --run-dir runs/mini/meta_baseline",
               "metassl compare runs/mini/protonet $(ls -d runs/mini/* | grep -v /protonet$) --dataset miniimagenet --split test --ways 5 --shots 1 "
               "--episodes 600",
               "# CIFAR-FS: the same with data.dataset=cifar_fs",
               "```"]
    if notes:
        footer += ["", "## Notes", ""] + [f"- **{NAMES.get(k, k)}**: {v}" for k, v in notes.items()]
    path.write_text("\n".join(header + lines + footer) + "\n")
