"""Transductive and semi-supervised few-shot on Omniglot: every method of `metassl.eval.transductive` on the same
encoders and the same fixed episodes, paired against each encoder's inductive classifier; and the semi-supervised
ProtoNets (Ren et al. 2018) on semi-supervised episodes, paired against the same model without refinement.

    python benchmarks/transductive.py eval --encoder protonet=RUN --encoder simclr=RUN    # transductive rows
    python benchmarks/transductive.py semi --run softkmeans=RUN --reference none=RUN      # semi-supervised rows
    python benchmarks/transductive.py table                                              # results/transductive.md

Each (encoder, protocol) is one JSON file in results/transductive/ holding every method's result with the paired
statistics (what `metassl compare RUN RUN --transductive none METHOD` prints), the device, torch version and date;
a file that exists is skipped (the script can be stopped and restarted). 600 episodes, 15 queries per class
(semi-supervised: 10, see the preset), episode seed 0.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "results" / "transductive"  # --out changes it

# name shown, registered method, options (the defaults are each paper's settings; see the method's module)
METHODS = [
    ("PT-MAP", "ptmap", {}),
    ("TIM-GD", "tim", {}),
    ("TIM-ADM", "tim", {"solver": "adm"}),
    ("BD-CSPN", "bdcspn", {}),
    ("LaplacianShot", "laplacianshot", {}),
    ("soft k-means", "softkmeans", {}),
    ("transductive fine-tuning", "finetune", {}),
]
# methods too slow on this CPU for 600 episodes (25 Adam steps through the encoder per episode, ~5 s): the first N
# episodes, paired with the inductive classifier's first N (episode i is the same whatever the count)
EPISODE_CAP = {"transductive fine-tuning": 100}
PROTOCOLS = {"5w1s": (5, 1), "5w5s": (5, 5), "20w1s": (20, 1)}

# each paper's own figure (miniImageNet 5-way 1-shot / 5-shot, its best backbone; Omniglot where the paper has it),
# from memory of the papers' tables: UNCHECKED against the papers here (no network but package registries)
PAPER = {
    "PT-MAP": "miniImageNet 82.92 / 88.82 (WRN-28-10), unchecked",
    "TIM-GD": "miniImageNet 77.8 / 87.4 (WRN-28-10), unchecked",
    "TIM-ADM": "miniImageNet 77.5 / 87.2 (WRN-28-10), unchecked",
    "BD-CSPN": "miniImageNet 70.31 / 81.89 (WRN-28-10), unchecked",
    "LaplacianShot": "miniImageNet 74.86 / 84.13 (WRN-28-10), unchecked",
    "soft k-means": "Omniglot 1-shot 97.25 with unlabeled images (Ren et al. 2018), unchecked",
    "transductive fine-tuning": "miniImageNet 65.73 / 78.40 (WRN-28-10), unchecked",
}


def environment() -> dict:
    import torch

    return {"device": f"cpu ({platform.processor() or platform.machine()}), 1 thread", "torch": torch.__version__,
            "date": date.today().isoformat(), "python": platform.python_version()}


def cmd_eval(a) -> None:
    import torch

    from metassl.engine.evaluate import evaluate_run
    from metassl.eval.compare import compare_results

    torch.set_num_threads(1)
    OUT.mkdir(parents=True, exist_ok=True)
    for item in a.encoder:
        name, run = item.split("=", 1)
        for tag in a.protocols:
            path = OUT / f"{name}_{tag}.json"
            if path.exists():
                print(f"skip {path.name}")
                continue
            ways, shots = PROTOCOLS[tag]
            batch = 10 if ways > 5 else 50
            rows = []
            for label, method, options in [("inductive", None, {})] + [m for m in METHODS if m[0] in a.methods]:
                t0 = time.perf_counter()
                cap = a.finetune_episodes if label == "transductive fine-tuning" and a.finetune_episodes else None
                episodes = min(a.episodes, cap or EPISODE_CAP.get(label, a.episodes))
                _, state, (r,) = evaluate_run(run, ways=ways, shots=shots, queries=15, episodes=episodes, seed=0,
                                              batch_episodes=batch, transductive=method,
                                              transductive_options=options or None, device="cpu",
                                              unlabeled=0, distractors=0)
                opts = "".join(f" --transductive-option {k}={v}" for k, v in options.items())
                rows.append({"method": label, "seconds": round(time.perf_counter() - t0, 1), **r.to_dict(),
                             "per_episode": r.per_episode_accuracy, "step": int(state["step"]),
                             "command": f"metassl eval {run} --ways {ways} --shots {shots} --queries 15 --episodes "
                                        f"{episodes} --seed 0" + (f" --transductive {method}{opts}" if method
                                                                    else "")})
                print(f"{name} {tag} {label}: {r.accuracy:.2f} ± {r.ci95:.2f} ({rows[-1]['seconds']} s)", flush=True)
            add_pairs(rows)
            methods = " ".join(m for label, m, opts in METHODS if label in a.methods and not opts)
            command = (f"metassl compare {' '.join([run] * (1 + len(methods.split())))} --ways {ways} --shots "
                       f"{shots} --queries 15 --episodes {a.episodes} --seed 0 --transductive none {methods}")
            path.write_text(json.dumps({"encoder": name, "run": run, "protocol": tag, "rows": rows,
                                        "command": command, **environment()}, indent=1) + "\n")


def add_pairs(rows: list[dict]) -> None:
    from metassl.eval.compare import paired_comparison

    base = rows[0]["per_episode"]
    for r in rows:
        n = len(r["per_episode"])  # a capped method: the same first n episodes
        r["paired_vs_inductive"] = None if r is rows[0] else paired_comparison(base[:n], r["per_episode"]).to_dict()


def cmd_semi(a) -> None:
    import torch

    from metassl.engine.evaluate import evaluate_run

    torch.set_num_threads(1)
    OUT.mkdir(parents=True, exist_ok=True)
    for distractors in (5, 0):
        path = OUT / f"semi_5w1s_d{distractors}.json"
        if path.exists():
            print(f"skip {path.name}")
            continue
        rows = []
        for item in a.run:
            label, run = item.split("=", 1)
            t0 = time.perf_counter()
            _, state, (r,) = evaluate_run(run, ways=5, shots=1, queries=10, episodes=a.episodes, seed=0,
                                          unlabeled=5, distractors=distractors, device="cpu")
            rows.append({"method": label, "run": run, "seconds": round(time.perf_counter() - t0, 1),
                         **r.to_dict(), "per_episode": r.per_episode_accuracy, "step": int(state["step"])})
            print(f"semi d={distractors} {label}: {r.accuracy:.2f} ± {r.ci95:.2f}", flush=True)
        add_pairs(rows)
        path.write_text(json.dumps({"rows": rows, "command": "metassl eval RUN --ways 5 --shots 1 --queries 10 "
                                    f"--episodes {a.episodes} --seed 0 --unlabeled 5 --distractors {distractors}",
                                    **environment()}, indent=1) + "\n")


def _pair(c: dict | None) -> str:
    if c is None:
        return "(reference)"
    return (f"{c['mean_difference']:+.2f} ± {c['ci95']:.2f} (t p={c['t_pvalue']:.2g}; won {c['wins']}, lost "
            f"{c['losses']})")


def cmd_table(a) -> None:
    files = sorted(OUT.glob("*.json"))
    enc = [json.loads(f.read_text()) for f in files if not f.name.startswith("semi_")]
    semi = [json.loads(f.read_text()) for f in files if f.name.startswith("semi_")]
    lines = [Path(a.header).read_text().rstrip() + "\n"] if a.header else []
    for name in dict.fromkeys(d["encoder"] for d in enc):
        lines.append(f"\n### Encoder: {name}\n")
        for d in [d for d in enc if d["encoder"] == name]:
            lines.append(f"\n**{d['protocol']}** (query set {d['rows'][0]['protocol']['ways'] * 15} images, balanced "
                         f"15 per class; {d['device']}, torch {d['torch']}, {d['date']}; `{d['command'].replace(d['run'], 'RUN')}` "
                         f"with RUN the {name} run)\n")
            lines.append("| method | episodes | accuracy ± 95% CI | paired difference vs inductive, same episodes | "
                         "eval s | paper's own figure |")
            lines.append("|---|---:|---:|---|---:|---|")
            for r in d["rows"]:
                lines.append(f"| {r['method']} | {r['protocol']['episodes']} | {r['accuracy']:.2f} ± "
                             f"{r['ci95']:.2f} | {_pair(r['paired_vs_inductive'])} | {r['seconds']:.0f} | "
                             f"{PAPER.get(r['method'], '—')} |")
    for d in semi:
        p = d["rows"][0]["protocol"]
        lines.append(f"\n**Semi-supervised episodes: 5-way 1-shot, 10 queries, {p['unlabeled']} unlabeled images "
                     f"per class, {p.get('distractors', 0)} distractor classes** ({d['device']}, torch {d['torch']}, "
                     f"{d['date']}; `{d['command']}`)\n")
        lines.append("| model | accuracy ± 95% CI | paired difference vs the first row | train steps |")
        lines.append("|---|---:|---|---:|")
        for r in d["rows"]:
            lines.append(f"| {r['method']} | {r['accuracy']:.2f} ± {r['ci95']:.2f} | "
                         f"{_pair(r['paired_vs_inductive'])} | {r['step']} |")
    if a.footer:
        lines.append("\n" + Path(a.footer).read_text().rstrip())
    (OUT.parent / "transductive.md").write_text("\n".join(lines) + "\n")
    print(f"wrote results/transductive.md ({len(enc)} encoder tables, {len(semi)} semi-supervised)")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("eval")
    p.add_argument("--encoder", action="append", required=True, metavar="NAME=RUN")
    p.add_argument("--protocols", nargs="+", default=list(PROTOCOLS), choices=list(PROTOCOLS))
    p.add_argument("--methods", nargs="+", default=[m[0] for m in METHODS])
    p.add_argument("--episodes", type=int, default=600)
    p.add_argument("--finetune-episodes", type=int, help="episodes for transductive fine-tuning (default 100)")
    p.set_defaults(fn=cmd_eval)
    p = sub.add_parser("semi")
    p.add_argument("--run", action="append", required=True, metavar="LABEL=RUN", help="the first is the reference")
    p.add_argument("--episodes", type=int, default=600)
    p.set_defaults(fn=cmd_semi)
    p = sub.add_parser("table")
    p.add_argument("--header", help="markdown file put before the tables")
    p.add_argument("--footer", help="markdown file put after the tables")
    p.set_defaults(fn=cmd_table)
    ap.add_argument("--out", help="folder of the JSON files (default results/transductive)")
    a = ap.parse_args(argv)
    if a.out:
        global OUT
        OUT = Path(a.out)
    a.fn(a)
    return 0


if __name__ == "__main__":
    sys.exit(main())
