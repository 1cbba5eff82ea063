"""The `metassl` command: train, eval, datasets, presets, predict, export, report, demo.

Each command parses its arguments, calls the library (engine/, api, export, report) and prints; evaluation itself
is `engine/evaluate.py` (`evaluate_run`, `evaluate_frozen`)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

# errors users can fix get one clear line (plus the fix), not a traceback
from ..config import ConfigError
from ..engine.distributed import DistInfo

USER_ERRORS: tuple[type[BaseException], ...] = (ConfigError, FileNotFoundError, FileExistsError, ValueError, KeyError,
                                                 NotImplementedError, FloatingPointError, ImportError)


def _data_root_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-root", default=None,
                   help="folder holding the data sets (default: $METASSL_DATA, else ~/.cache/metassl/data)")


def cmd_train(a: argparse.Namespace) -> int:
    from ..config import load_config
    from ..engine.trainer import default_run_dir, load_run_config, train

    dist = DistInfo.from_env()
    say = print if dist.is_main else (lambda *x, **k: None)
    # torchrun --max-restarts: a restarted launch continues the run from its last checkpoint
    restarted = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0
    resume = a.resume
    if resume:
        run_dir = Path(a.run_dir or a.config)
        cfg = load_run_config(run_dir, a.overrides)
    else:
        if not a.config:
            raise ConfigError("give a CONFIG (a YAML file or a preset; see `metassl presets`)")
        cfg = load_config(a.config, a.overrides)
        if a.run_dir is None and dist.active:
            raise ConfigError("several processes (torchrun) need the same run folder: give --run-dir")
        run_dir = Path(a.run_dir) if a.run_dir else default_run_dir(cfg)
        if run_dir.exists() and any(run_dir.iterdir()):
            if restarted and (run_dir / "checkpoints" / "latest").is_file():
                say(f"restart {os.environ['TORCHELASTIC_RESTART_COUNT']} of a torchrun launch: resuming {run_dir}")
                resume = True
            elif not restarted:
                raise ConfigError(f"run folder {run_dir} exists and is not empty: continue it with "
                                  f"`metassl train --resume {run_dir}` or choose another with --run-dir")
    say(f"run folder: {run_dir}" + (f" ({dist.world_size} processes)" if dist.active else ""))
    res = train(cfg, run_dir, resume=resume, data_root=a.data_root)
    say(f"trained {res.steps} steps in {res.seconds:.1f} s; final loss {res.final_loss}")
    if cfg.train.report and dist.is_main:
        _write_report(run_dir, a.data_root, cfg.train.report_episodes, cfg.train.device)
    if a.eval:
        a2 = argparse.Namespace(run=str(run_dir), dataset=None, split=None, ways=None, shots=None, queries=None,
                                episodes=None, seed=None, json=False, data_root=a.data_root, which="latest",
                                device=None, batch_episodes=None, out=None)
        cmd_eval(a2)
    return 0


def _write_report(run_dir: Path, data_root: str | None, episodes: int, device: str) -> None:
    """The run's HTML report after training; a failure here is reported but never loses the trained run."""
    from ..engine.distributed import resolve_device
    from ..report import write_report

    try:
        r = write_report(run_dir, data_root, episodes, str(resolve_device(device)))
        print(f"report: {r.html}")
    except Exception as e:  # noqa: BLE001 - the checkpoint is already safe; say what went wrong
        print(f"report not written ({type(e).__name__}: {e}); run `metassl report {run_dir}`")


class _EvalBars:
    """`evaluate_run`'s progress callback as one tqdm bar per protocol, on standard error when it is a terminal."""

    def __init__(self):
        self.bar, self.tag = None, None

    def __call__(self, p, done: int) -> None:
        from tqdm import tqdm

        if self.bar is None or self.tag != p.tag:
            self.close()
            self.bar, self.tag = tqdm(total=p.episodes, desc=f"eval {p.tag}", unit="ep", leave=False,
                                      file=sys.stderr), p.tag
        self.bar.update(done - self.bar.n)
        if done >= p.episodes:
            self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        self.bar, self.tag = None, None


def _progress(show: bool) -> _EvalBars | None:
    return _EvalBars() if show and sys.stderr.isatty() else None


def cmd_eval(a: argparse.Namespace) -> int:
    from ..engine.evaluate import FROZEN_PROTOCOLS, evaluate_frozen, evaluate_run

    protocol = getattr(a, "protocol", "fewshot")
    if protocol != "fewshot" and getattr(a, "overrides", None):
        raise ConfigError(f"learner overrides {a.overrides} apply to few-shot evaluation only; the {protocol} "
                          f"protocol reads the frozen encoder")
    if protocol in FROZEN_PROTOCOLS:  # kNN / linear probe on frozen features
        model, state, r = evaluate_frozen(a.run, protocol, a.dataset, a.split, a.train_split, a.data_root, a.which,
                                          a.device, a.k, a.temperature, a.max_train, a.max_test, a.seed,
                                          a.weight_decay)
        if not DistInfo.from_env().is_main:  # under torchrun every process computes the same result
            return 0
        d = {**r.to_dict(), "checkpoint": state["checkpoint"], "learner": model.config.learner.name,
             "step": state["step"]}
        print(json.dumps(d, indent=1) if a.json else r.line())
        if a.out:
            from ..atomic import atomic_write_text

            atomic_write_text(a.out, json.dumps(d, indent=1) + "\n")
        return 0
    main_process = DistInfo.from_env().is_main
    model, state, results = evaluate_run(a.run, a.dataset, a.split, a.ways, a.shots, a.queries, a.episodes, a.seed,
                                         a.data_root, a.which, a.device, a.batch_episodes,
                                         progress=_progress(not a.json and main_process),
                                         overrides=getattr(a, "overrides", None))
    if not main_process:  # under torchrun every process has the same results; one prints them
        return 0
    paper = model.config.eval.paper
    rows = []
    for r in results:
        d = r.to_dict(per_episode=a.per_episode)
        d["paper_accuracy"] = paper.get(r.tag)
        d["checkpoint"] = state["checkpoint"]
        d["learner"] = model.config.learner.name
        d["step"] = state["step"]
        rows.append(d)
        if not a.json:
            ref = f"   (paper: {paper[r.tag]})" if r.tag in paper else ""
            print(r.line() + ref)
    if a.json:
        print(json.dumps(rows[0] if len(rows) == 1 else rows, indent=1))
    if a.out:
        from ..atomic import atomic_write_text

        atomic_write_text(a.out, json.dumps(rows, indent=1) + "\n")
    return 0


def cmd_compare(a: argparse.Namespace) -> int:
    from ..engine.evaluate import compare_runs

    main_process = DistInfo.from_env().is_main
    rows = compare_runs(a.runs, a.dataset, a.split, a.ways, a.shots, a.queries, a.episodes, a.seed, a.data_root,
                        a.which, a.device, a.batch_episodes, progress=_progress(not a.json and main_process))
    if not main_process:
        return 0
    dicts = [r.to_dict() for r in rows]
    if a.json:
        print(json.dumps(dicts, indent=1))
    else:
        print(comparison_table(rows))
    if a.out:
        from ..atomic import atomic_write_text

        atomic_write_text(a.out, json.dumps(dicts, indent=1) + "\n")
    return 0


def comparison_table(rows) -> str:
    """The comparison for people: the shared protocol, then one line per run (accuracy ± CI, and against the first
    run the mean paired difference ± its 95% CI, wins/losses over episodes and both tests' p-values)."""
    p = rows[0].result.protocol
    lines = [f"{p['dataset']}/{p['split']} {p['ways']}-way {p['shots']}-shot, {p['episodes']} episodes "
             f"({p['queries']} queries per class, seed {p['seed']}); every run on the same episodes",
             f"{'run':<40} {'learner':<14} {'accuracy %':>14}   {'vs first (points)':>17} {'wins/losses':>12} "
             f"{'t-test p':>9} {'Wilcoxon p':>10}"]
    for r in rows:
        acc = f"{r.result.accuracy:.2f} ± {r.result.ci95:.2f}"
        name = r.run if len(r.run) <= 40 else "..." + r.run[-37:]
        if r.paired is None:
            lines.append(f"{name:<40} {r.learner:<14} {acc:>14}   {'(reference)':>17}")
        else:
            c = r.paired
            lines.append(f"{name:<40} {r.learner:<14} {acc:>14}   {c.mean_difference:+8.2f} ± {c.ci95:5.2f} "
                         f"{f'{c.wins}/{c.losses}':>12} {c.t_pvalue:9.2g} {c.wilcoxon_pvalue:10.2g}")
    return "\n".join(lines)


def cmd_datasets(a: argparse.Namespace) -> int:
    from ..data.registry import list_datasets, load_dataset
    from ..data.root import DatasetNotFoundError, resolve_data_root

    root = resolve_data_root(a.data_root)
    print(f"data root: {root}")
    for spec in list_datasets():
        if spec.generic:
            print(f"{spec.name:14s} (any folder)  {spec.description}")
            continue
        try:
            where = spec.locate(root)
        except DatasetNotFoundError:
            print(f"{spec.name:14s} not found      {spec.description}")
            continue
        parts = []
        if not a.no_counts:
            for s in spec.splits:
                try:
                    d = load_dataset(spec.name, s, root)
                    parts.append(f"{s}: {d.num_classes} classes / {d.images.shape[0]} images")
                except Exception as e:  # one broken split must not hide the others
                    parts.append(f"{s}: error ({str(e).splitlines()[0]})")
        print(f"{spec.name:14s} found at {where}")
        for p in parts:
            print(f"{'':16s}{p}")
    return 0


def cmd_presets(a: argparse.Namespace) -> int:
    from ..config import describe, get_learner_config_lines, list_presets, load_raw, sections

    if a.keys:
        for name, cls in sections().items():
            print("\n".join(describe(cls, name)))
        print("\n".join(get_learner_config_lines()))
        return 0
    for p in list_presets():
        desc = str(load_raw(p).get("description", "")).strip().split("\n")[0]
        print(f"{p:36s} {desc}")
    return 0


def cmd_demo(a: argparse.Namespace) -> int:
    from ..config import load_config
    from ..engine.evaluate import evaluate_run
    from ..engine.trainer import default_run_dir, train

    t0 = time.perf_counter()
    cfg = load_config("omniglot/protonet_demo", a.overrides)
    run_dir = Path(a.run_dir) if a.run_dir else default_run_dir(cfg)
    print(f"metassl demo: Prototypical Networks (Conv4) on Omniglot, Vinyals split; run folder {run_dir}")
    res = train(cfg, run_dir, data_root=a.data_root)
    print(f"trained {res.steps} episodes ({cfg.tasks.ways}-way {cfg.tasks.shots}-shot) in {res.seconds:.0f} s")
    _, _, results = evaluate_run(str(run_dir), data_root=a.data_root, progress=_progress(True))
    print(f"\nTest accuracy on {cfg.data.test_split} classes never seen in training "
          f"({cfg.eval.episodes} episodes, {cfg.eval.queries} queries per class, mean ± 95% CI):")
    for r in results:
        ref = cfg.eval.paper.get(r.tag)
        ref_s = f"   paper (full training): {ref}" if ref else ""
        print(f"  {r.protocol['ways']}-way {r.protocol['shots']}-shot: {r.accuracy:.2f} ± {r.ci95:.2f}%{ref_s}")
    print(f"\ndone in {time.perf_counter() - t0:.0f} s. Next:\n  metassl eval {run_dir} --shots 1 5 --episodes 600"
          f"    # evaluate again (any protocol)\n  metassl report {run_dir}    # HTML page with figures\n"
          f"  metassl predict {run_dir} --support MY_SUPPORT_DIR --query MY_IMAGES    # your own images")
    return 0


def cmd_predict(a: argparse.Namespace) -> int:
    import csv
    import io

    from ..api import FewShotClassifier, list_image_files
    from ..atomic import atomic_write_text

    if a.out and Path(a.out).exists() and not a.force:
        raise FileExistsError(f"{a.out} exists; pass --force to overwrite it or choose another --out")
    clf = FewShotClassifier.load(a.run, a.device or "cpu", a.which, a.classifier)
    clf.fit_folder(a.support)
    files = [f for q in a.query for f in list_image_files(q)]
    missing = [str(f) for f in files if not f.exists()]
    if not files or len(missing) == len(files):
        raise FileNotFoundError(f"no query images found in {', '.join(a.query)}"
                                + (f" (missing: {', '.join(missing[:3])})" if missing else ""))
    rows = clf.predict_files(files)
    if a.json:
        text = json.dumps({"classes": clf.classes_, "predictions": [r.__dict__ for r in rows]}, indent=1,
                          ensure_ascii=False) + "\n"
    else:
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["path", "predicted", "probability", *[f"p({c})" for c in clf.classes_], "error"])
        for r in rows:
            w.writerow([r.path, r.label or "", "" if r.probability is None else f"{r.probability:.6f}",
                        *[f"{r.probabilities[c]:.6f}" if r.probabilities else "" for c in clf.classes_],
                        r.error or ""])
        text = buf.getvalue()
    if a.out:
        atomic_write_text(a.out, text)
        bad = sum(r.error is not None for r in rows)
        print(f"wrote {len(rows)} rows to {a.out} ({len(rows) - bad} predicted, {bad} unreadable), "
              f"classes: {', '.join(clf.classes_)}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def cmd_export(a: argparse.Namespace) -> int:
    from ..export import export

    out = export(a.run, a.format, a.out, a.which)
    print(f"exported the encoder to {out} (input and preprocessing described in {out}.json)")
    return 0


def cmd_report(a: argparse.Namespace) -> int:
    from ..report import write_report

    r = write_report(a.run, a.data_root, a.episodes, a.device or "cpu", a.out, compare_with=a.compare)
    print(f"report: {r.html} ({len(r.figures)} figures)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="metassl", description="Few-shot learning: meta-learning and "
                                 "self-supervised learning, vectorized over tasks.")
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train from a config file or preset")
    p.add_argument("config", nargs="?", help="YAML file or preset name (e.g. omniglot/protonet_5w1s); "
                   "with --resume, the run folder")
    p.add_argument("overrides", nargs="*", help="section.key=value, e.g. train.steps=500 tasks.ways=20")
    p.add_argument("--run-dir", help="run folder (default: OUTPUT_DIR/NAME-TIMESTAMP)")
    p.add_argument("--resume", action="store_true", help="continue the run folder from its last checkpoint")
    p.add_argument("--eval", action="store_true", help="evaluate on the test split when training ends")
    _data_root_arg(p)
    p.set_defaults(fn=cmd_train)

    p = sub.add_parser("eval", help="few-shot accuracy ± 95%% CI (or kNN / linear-probe accuracy) of a run or "
                       "checkpoint")
    p.add_argument("run", help="run folder or checkpoint folder")
    p.add_argument("overrides", nargs="*", metavar="learner.KEY=VALUE",
                   help="evaluation-time learner settings, e.g. learner.eval_head=encoder (PsCo), "
                   "learner.eval_inner_steps=10 (MAML family)")
    p.add_argument("--dataset")
    p.add_argument("--split")
    p.add_argument("--ways", type=int)
    p.add_argument("--shots", type=int, nargs="+")
    p.add_argument("--queries", type=int)
    p.add_argument("--episodes", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--which", default="latest", choices=("latest", "best"), help="which checkpoint of a run")
    p.add_argument("--device", help="auto, cpu, cuda, ...")
    p.add_argument("--batch-episodes", type=int, help="episodes evaluated together")
    p.add_argument("--json", action="store_true", help="print one JSON object with the metrics and protocol")
    p.add_argument("--out", help="also write the JSON to this file")
    p.add_argument("--per-episode", action="store_true", help="the JSON also lists every episode's accuracy (for "
                   "paired comparisons later: `metassl.eval.compare.paired_comparison`)")
    p.add_argument("--protocol", default="fewshot", choices=("fewshot", "knn", "linear"),
                   help="fewshot: N-way K-shot episodes (default); knn: weighted kNN on frozen features (cosine, "
                   "--k 200, --temperature 0.1) with the train split as memory bank; linear: logistic-regression "
                   "probe on frozen features (full-batch L-BFGS)")
    p.add_argument("--train-split", help="knn/linear: labeled split for the memory bank / probe (default: the run's "
                   "data.train_split); --split is the test split")
    p.add_argument("--k", type=int, default=200, help="knn: neighbours")
    p.add_argument("--temperature", type=float, default=0.1, help="knn: vote weight exp(similarity / T)")
    p.add_argument("--max-train", type=int, help="knn/linear: at most this many training images (fixed subset, "
                   "--seed)")
    p.add_argument("--max-test", type=int, help="knn/linear: at most this many test images")
    p.add_argument("--weight-decay", type=float, default=1e-4, help="linear: L2 penalty of the probe")
    _data_root_arg(p)
    p.set_defaults(fn=cmd_eval)

    p = sub.add_parser("compare", help="evaluate several runs on the same episodes: accuracy ± 95%% CI each, and "
                       "against the first run the paired difference with its CI, paired t-test and Wilcoxon p-values")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run or checkpoint folders; the first is the reference")
    p.add_argument("--dataset")
    p.add_argument("--split")
    p.add_argument("--ways", type=int)
    p.add_argument("--shots", type=int)
    p.add_argument("--queries", type=int)
    p.add_argument("--episodes", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--which", default="latest", choices=("latest", "best"), help="which checkpoint of each run")
    p.add_argument("--device", help="auto, cpu, cuda, ...")
    p.add_argument("--batch-episodes", type=int, help="episodes evaluated together")
    p.add_argument("--json", action="store_true", help="print a JSON list, one object per run")
    p.add_argument("--out", help="also write the JSON to this file")
    _data_root_arg(p)
    p.set_defaults(fn=cmd_compare)

    p = sub.add_parser("datasets", help="list known data sets and where they were found")
    p.add_argument("--no-counts", action="store_true", help="only say where each data set is, do not load splits")
    _data_root_arg(p)
    p.set_defaults(fn=cmd_datasets)

    p = sub.add_parser("presets", help="list config presets (or all config keys with --keys)")
    p.add_argument("--keys", action="store_true")
    p.set_defaults(fn=cmd_presets)

    p = sub.add_parser("predict", help="adapt to a folder of labeled images and label new images")
    p.add_argument("run", help="run folder or checkpoint folder")
    p.add_argument("--support", required=True, help="folder with one sub-folder of labeled images per class")
    p.add_argument("--query", required=True, nargs="+", help="a folder (searched recursively) or image files")
    p.add_argument("--out", help="write the CSV (or JSON) here instead of standard output")
    p.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    p.add_argument("--json", action="store_true", help="JSON instead of CSV")
    p.add_argument("--classifier", default="learner", choices=("learner", "logistic"),
                   help="adapt as the learner does, or logistic regression on frozen features")
    p.add_argument("--which", default="latest", choices=("latest", "best"))
    p.add_argument("--device")
    p.set_defaults(fn=cmd_predict)

    p = sub.add_parser("export", help="export the encoder (with its preprocessing) to ONNX or TorchScript")
    p.add_argument("run")
    p.add_argument("--format", required=True, choices=("onnx", "torchscript"))
    p.add_argument("--out", help="output file (default: RUN/encoder.onnx or RUN/encoder.pt)")
    p.add_argument("--which", default="latest", choices=("latest", "best"))
    p.set_defaults(fn=cmd_export)

    p = sub.add_parser("report", help="write RUN/report/report.html with figures")
    p.add_argument("run")
    p.add_argument("compare", nargs="*", metavar="OTHER_RUN", help="other runs: the page adds their paired "
                   "comparison against RUN on the same episodes (as `metassl compare`)")
    p.add_argument("--episodes", type=int, help="episodes per evaluation (default: the run's eval.episodes)")
    p.add_argument("--out", help="folder for the page and figures (default RUN/report)")
    p.add_argument("--device")
    _data_root_arg(p)
    p.set_defaults(fn=cmd_report)

    p = sub.add_parser("demo", help="train ProtoNet on Omniglot and report 5-way 1/5-shot test accuracy")
    p.add_argument("overrides", nargs="*")
    p.add_argument("--run-dir")
    _data_root_arg(p)
    p.set_defaults(fn=cmd_demo)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _run(args)
    finally:
        if "torch.distributed" in sys.modules:  # a process group (torchrun) is closed before the process ends
            from ..engine.distributed import teardown

            teardown()


def _run(args: argparse.Namespace) -> int:
    try:
        return args.fn(args)
    except KeyboardInterrupt:
        print("interrupted; the last checkpoint is intact (continue with `metassl train --resume RUN_DIR`)",
              file=sys.stderr)
        return 130
    except USER_ERRORS as e:
        if os.environ.get("METASSL_DEBUG"):
            raise
        msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        print(f"metassl {args.command}: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
