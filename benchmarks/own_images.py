"""Your own images, as a user would have them (issue 21): folders written as PNG files from MNIST, the Omniglot
evaluation alphabets and CIFAR-10; `metassl fit` on them within a time budget, then few-shot prediction through
`FewShotClassifier` (the `metassl predict` path) on classes never labeled, against ProtoNet trained on the same
labels for the same time and against the Omniglot demo model; each test set also inverted (white background) and,
for grayscale data, as RGB files, to show what the recorded input statistics and polarity correction do.

    python benchmarks/own_images.py build                   # folders under results/own_images/data (not committed)
    python benchmarks/own_images.py run --minutes 4 --demo RUN   # one JSON per data set in results/own_images/
    python benchmarks/own_images.py table                   # results/own_images.md

Per data set: unlabeled/ = images of every class (labels never read), labeled/<class>/ = a few images of some
classes, and test classes disjoint from labeled/ for the episodes (`EPISODES` fixed episodes per protocol, seed 0).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "results" / "own_images"
DATA = OUT / "data"
EPISODES = 100
# data set: (loader name, split for the pool, split for the test classes, labeled classes, images per labeled class,
#            unlabeled images, protocols (ways, shots), queries per class)
SETS = {
    "mnist": ("mnist", "train", "test", 5, 20, 5000, [(5, 1), (5, 5)], 15),
    "omniglot_eval": ("omniglot", "evaluation", "evaluation", None, 5, 6000, [(5, 1), (20, 1)], 5),
    "cifar10": ("cifar10", "train", "test", 5, 20, 5000, [(5, 1), (5, 5)], 15),
}


def _save(a: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(a[0] if a.shape[0] == 1 else a.transpose(1, 2, 0)).save(path)


def _class_images(split, k: int) -> torch.Tensor:
    o, n = int(split.offsets[k]), int(split.counts[k])
    return split.images[o:o + n]


def cmd_build(a) -> None:
    from metassl.data import load_dataset

    root = Path(a.data_root)
    for name, (ds, pool_split, test_split, labeled, per_class, pool, _, _) in SETS.items():
        out = DATA / name
        if (out / "done").exists():
            print(f"skip {name}")
            continue
        g = torch.Generator().manual_seed(0)
        s = load_dataset(ds, pool_split, root)
        if name == "omniglot_eval":  # characters 0-329 for the pool and labels, 330-658 for the test episodes
            pool_classes, test_classes = list(range(330)), list(range(330, s.num_classes))
            labeled_classes = [int(i) for i in torch.randperm(330, generator=g)[:20]]
            t = s
        else:
            pool_classes = list(range(s.num_classes))
            labeled_classes = list(range(labeled))  # the first classes (MNIST 0-4; CIFAR-10 airplane ... deer)
            t = load_dataset(ds, test_split, root)
            names = {s.class_names[k] for k in labeled_classes}
            test_classes = [k for k in range(t.num_classes) if t.class_names[k] not in names]
        # unlabeled: a random subset of the pool classes' images (the labeled images may be among them, as in life)
        idx = torch.cat([torch.arange(int(s.offsets[k]), int(s.offsets[k] + s.counts[k])) for k in pool_classes])
        for j, i in enumerate(idx[torch.randperm(len(idx), generator=g)[:pool]].tolist()):
            _save(s.images[i].numpy(), out / "unlabeled" / f"{j // 1000:02d}" / f"{j:05d}.png")
        for k in labeled_classes:
            imgs = _class_images(s, k)
            for j in torch.randperm(len(imgs), generator=g)[:per_class].tolist():
                _save(imgs[j].numpy(), out / "labeled" / s.class_names[k].replace("/", "_") / f"{j}.png")
        torch.save({"images": [_class_images(t, k) for k in test_classes],
                    "names": [t.class_names[k] for k in test_classes]}, out / "test.pt")
        (out / "done").write_text("ok\n")
        print(f"built {name}: {pool} unlabeled, {len(labeled_classes)} x {per_class} labeled, "
              f"{len(test_classes)} test classes")


def _episodes(test: dict, ways: int, shots: int, queries: int, n: int):
    g = torch.Generator().manual_seed(0)
    for _ in range(n):
        classes = torch.randperm(len(test["images"]), generator=g)[:ways].tolist()
        sx, sy, qx, qy = [], [], [], []
        for c, k in enumerate(classes):
            imgs = test["images"][k]
            p = torch.randperm(len(imgs), generator=g)[:shots + queries]
            sx.append(imgs[p[:shots]]), qx.append(imgs[p[shots:]])
            sy += [c] * shots
            qy += [c] * (len(p) - shots)
        yield torch.cat(sx), sy, torch.cat(qx), torch.tensor(qy)


def _variant(x: torch.Tensor, how: str) -> list[np.ndarray]:
    if how == "inverted":
        x = 255 - x
    arrs = [a.numpy() for a in x]
    if how == "rgb" and x.shape[1] == 1:
        arrs = [np.repeat(a, 3, 0) for a in arrs]
    return [a[0] if a.shape[0] == 1 else a.transpose(1, 2, 0) for a in arrs]


def _accuracy(run: Path, test: dict, ways, shots, queries, how: str, polarity: str) -> dict:
    from metassl.api import FewShotClassifier
    from metassl.eval.metrics import confidence_interval as mean_ci

    clf = FewShotClassifier.load(run, polarity=polarity)
    accs = []
    for sx, sy, qx, qy in _episodes(test, ways, shots, queries, EPISODES):
        clf.fit(_variant(sx, how), sy)
        p = clf.predict_proba(_variant(qx, how))  # columns in clf.classes_ order (the labels as sorted strings)
        pred = [clf.classes_[int(i)] for i in np.asarray(p).argmax(1)]
        accs.append(100.0 * float(np.mean([a == str(int(b)) for a, b in zip(pred, qy)])))
    m, ci = mean_ci(accs)
    return {"accuracy": m, "ci95": ci}


def cmd_run(a) -> None:
    from metassl.workflow import FitResult, _stage, fit_folders

    torch.set_num_threads(1)
    OUT.mkdir(parents=True, exist_ok=True)
    for name, (_, _, _, _, _, _, protocols, queries) in SETS.items():
        path = OUT / f"{name}.json"
        if path.exists() or name not in a.sets:
            continue
        d, runs = DATA / name, OUT / "runs" / name
        old = OUT / f"{name}.fit.json"  # a fit made before (the evaluation is redone; the training is not)
        if (runs / "fit" / "config.yaml").exists() and old.exists():
            rec = json.loads(old.read_text())
            fit = FitResult(Path(rec["run_dir"]), Path(rec["encoder_run"]), rec["steps"], rec["seconds"])
        else:
            fit = fit_folders(d / "unlabeled", runs / "fit", labeled=d / "labeled", minutes=a.minutes, device="cpu")
            old.write_text(json.dumps({"run_dir": str(fit.run_dir), "encoder_run": str(fit.encoder_run),
                                       "steps": fit.steps, "seconds": fit.seconds}) + "\n")
        fit_s = fit.seconds
        scratch = runs / "protonet_same_labels"
        if not scratch.exists():
            n = len([p for p in (d / "labeled").iterdir() if p.is_dir()])
            fewest = min(len(list(p.iterdir())) for p in (d / "labeled").iterdir())
            with __import__("tempfile").TemporaryDirectory() as work:
                _stage("ProtoNet on the same labels, from scratch", "folder/practical_protonet", d / "labeled",
                       scratch, fit_s, ["train.progress=false", "train.report=false", "train.tensorboard=false",
                                        "train.device=cpu", f"tasks.ways={min(20, n)}", "tasks.shots=1",
                                        f"tasks.queries={min(5, fewest - 1)}", f"eval.ways={min(5, n)}"],
                       Path(work), print)
        test = torch.load(d / "test.pt")
        models = {"metassl fit (SimCLR -> ProtoNet)": fit.run_dir, "SimCLR stage alone": fit.encoder_run,
                  "ProtoNet, same labels, same time": scratch}
        if a.demo:
            models["Omniglot demo model (metassl demo)"] = Path(a.demo)
        rows = []
        gray = test["images"][0].shape[1] == 1
        for label, run in models.items():
            for ways, shots in protocols:
                for how in ("original", "inverted") + (("rgb",) if gray else ()):
                    for pol in (("auto", "keep") if how == "inverted" else ("auto",)):
                        r = _accuracy(run, test, ways, shots, queries, how, pol)
                        rows.append({"model": label, "run": str(run), "ways": ways, "shots": shots, "queries": queries,
                                     "test_images": how, "polarity": pol, **r})
                        print(f"{name} {label} {ways}w{shots}s {how} polarity={pol}: {r['accuracy']:.2f} ± "
                              f"{r['ci95']:.2f}", flush=True)
        path.write_text(json.dumps({"dataset": name, "minutes": a.minutes, "fit_seconds": round(fit_s, 1),
                                    "fit_steps": fit.steps, "episodes": EPISODES, "rows": rows,
                                    "command": f"python benchmarks/own_images.py run --minutes {a.minutes}"
                                               + (" --demo RUN" if a.demo else ""),
                                    "device": f"cpu ({platform.machine()}), 1 thread", "torch": torch.__version__,
                                    "date": date.today().isoformat()}, indent=1) + "\n")


def cmd_table(a) -> None:
    lines = [Path(a.header).read_text().rstrip() + "\n"] if a.header else []
    for f in sorted(p for p in OUT.glob("*.json") if not p.name.endswith(".fit.json")):
        d = json.loads(f.read_text())
        lines.append(f"\n### {d['dataset']}: `metassl fit` in {d['minutes']:g} min ({d['fit_seconds']:.0f} s, steps "
                     f"{d['fit_steps']}); {d['episodes']} fixed episodes per protocol; {d['device']}, torch "
                     f"{d['torch']}, {d['date']}; `{d['command']}`\n")
        protos = sorted({(r["ways"], r["shots"]) for r in d["rows"]})
        cols = [(w, s, how, pol) for w, s in protos for how, pol in
                (("original", "auto"), ("inverted", "auto"), ("inverted", "keep"), ("rgb", "auto"))
                if any(r["test_images"] == how and r["polarity"] == pol for r in d["rows"])]
        lines.append("| model | " + " | ".join(f"{w}w{s}s {how}{' (polarity kept)' if pol == 'keep' else ''}"
                                                for w, s, how, pol in cols) + " |")
        lines.append("|---|" + "---:|" * len(cols))
        for model in dict.fromkeys(r["model"] for r in d["rows"]):
            cells = []
            for w, s, how, pol in cols:
                r = [r for r in d["rows"] if r["model"] == model and (r["ways"], r["shots"], r["test_images"],
                                                                         r["polarity"]) == (w, s, how, pol)]
                cells.append(f"{r[0]['accuracy']:.1f} ± {r[0]['ci95']:.1f}" if r else "—")
            lines.append(f"| {model} | " + " | ".join(cells) + " |")
    if a.footer:
        lines.append("\n" + Path(a.footer).read_text().rstrip())
    (OUT.parent / "own_images.md").write_text("\n".join(lines) + "\n")
    print("wrote results/own_images.md")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("build")
    p.add_argument("--data-root", default=str(ROOT.parent / "shared" / "data"))
    p.set_defaults(fn=cmd_build)
    p = sub.add_parser("run")
    p.add_argument("--minutes", type=float, default=4.0)
    p.add_argument("--demo", help="the run folder of `metassl demo`")
    p.add_argument("--sets", nargs="+", default=list(SETS))
    p.set_defaults(fn=cmd_run)
    p = sub.add_parser("table")
    p.add_argument("--header")
    p.add_argument("--footer")
    p.set_defaults(fn=cmd_table)
    a = ap.parse_args(argv)
    a.fn(a)
    return 0


if __name__ == "__main__":
    sys.exit(main())
