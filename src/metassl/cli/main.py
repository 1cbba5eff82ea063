"""The `metassl` command: train, eval, datasets, presets, predict, export, report, demo.

Each command parses its arguments, calls the library (engine/, api, export, report) and prints; evaluation itself
is `engine/evaluate.py` (`evaluate_run`, `evaluate_frozen`)."""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

# errors users can fix get one clear line (plus the fix), not a traceback
from ..config import MAX_SEED, ConfigError, check_device_name
from ..engine.distributed import DistInfo

USER_ERRORS: tuple[type[BaseException], ...] = (ConfigError, FileNotFoundError, FileExistsError, ValueError, KeyError,
                                                 NotImplementedError, FloatingPointError, ImportError)

# The range of every numeric flag (inclusive bounds; None: unbounded; True as third item: the lower bound is
# excluded). Checked after parsing, before any command runs: the engine reads unset flags as `flag or config`, so a
# 0 would otherwise fall back to the config without a word.
FLAG_RANGES: dict[str, tuple[float | None, float | None, bool]] = {
    "ways": (2, 100000, False), "shots": (1, 100000, False), "queries": (1, 100000, False),
    "episodes": (1, None, False), "seed": (0, MAX_SEED, False), "batch_episodes": (0, None, False),
    "k": (1, None, False), "temperature": (0.0, None, True), "max_train": (1, None, False),
    "max_test": (1, None, False), "weight_decay": (0.0, None, False), "unlabeled": (0, 100000, False),
    "distractors": (0, 100000, False), "minutes": (0.0, None, True)}
# flags and arguments naming a thing: an empty string would silently mean "not given" (or the current folder)
TEXT_FLAGS = ("config", "run", "runs", "compare", "dataset", "split", "train_split", "data_root", "run_dir", "out",
              "support", "query", "device", "unlabeled_dir", "labeled_dir")


def _flag_name(dest: str) -> str:
    if dest in ("unlabeled_dir", "labeled_dir"):  # predict's and fit's --unlabeled DIR, fit's --labeled DIR
        return "--" + dest.removesuffix("_dir")
    return dest.upper() if dest in ("config", "run", "runs", "compare") else "--" + dest.replace("_", "-")


def check_flags(a: argparse.Namespace) -> None:
    """Refuse flag values that cannot mean what was asked (`--ways 1`, `--k 0`, `--temperature nan`, `--out ""`),
    naming the flag; a ConfigError, so the command prints one line and exits 2."""
    for dest, (lo, hi, open_lo) in FLAG_RANGES.items():
        value = getattr(a, dest, None)
        for v in value if isinstance(value, list) else [value]:
            if v is None:
                continue
            bad = not math.isfinite(v) or (lo is not None and (v <= lo if open_lo else v < lo)) or \
                (hi is not None and v > hi)
            if bad:
                where = f"{'(' if open_lo else '['}{'-inf' if lo is None else lo}, " \
                        f"{'inf)' if hi is None else f'{hi}]'}"
                raise ConfigError(f"{_flag_name(dest)} must be in {where}, got {v}; give a value in that range "
                                  f"or leave the flag out for its default")
    for dest in TEXT_FLAGS:
        value = getattr(a, dest, None)
        if any(isinstance(v, str) and not v.strip() for v in (value if isinstance(value, list) else [value])):
            name = _flag_name(dest)
            raise ConfigError(f"{name} is empty; give a value" + ("" if name.isupper() else " or leave the flag out"))
    if getattr(a, "device", None) is not None:
        check_device_available(a.device, "--device")


def check_device_available(name: str, key: str) -> None:
    """`name` is a device name this machine has (auto always is)."""
    import torch

    check_device_name(name, key)
    kind, _, index = name.partition(":")
    if kind == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ConfigError(f"{key} {name}: CUDA is not available here; use {key} cpu (or auto)")
        if index and int(index) >= count:
            raise ConfigError(f"{key} {name}: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}")
    if kind == "mps" and not (getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()):
        raise ConfigError(f"{key} mps: the Apple GPU (MPS) is not available here; use {key} cpu (or auto)")


def _finite(obj: Any) -> Any:
    """`obj` with NaN and infinite floats as None: JSON has no NaN (json.dumps would write the invalid `NaN`)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def to_json(obj: Any, **kw: Any) -> str:
    """Valid JSON always: non-finite numbers become null."""
    return json.dumps(_finite(obj), indent=1, allow_nan=False, **kw)


def _data_root_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-root", default=None,
                   help="folder holding the data sets (default: $METASSL_DATA, else ~/.cache/metassl/data)")


def cmd_train(a: argparse.Namespace) -> int:
    from ..config import load_config
    from ..engine.provenance import make_origin
    from ..engine.trainer import default_run_dir, load_run_config, prepare_run_dir, train

    dist = DistInfo.from_env()
    say = print if dist.is_main else (lambda *x, **k: None)
    # torchrun --max-restarts: a restarted launch continues the run from its last checkpoint
    restarted = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0
    resume = a.resume
    origin = None  # a resume keeps the origin recorded at the start
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
        # a folder in use (locked), not a run, or a run to --resume is an error; a torchrun restart resumes it
        resume = prepare_run_dir(run_dir, restarted, dist.is_main, echo=say)
        origin = make_origin(a.config, a.overrides)
    # runs/latest: the newest run made in the default folder (not --run-dir, not a resume)
    latest = not (a.run_dir or a.resume)
    say(f"run folder: {run_dir}" + (f" ({dist.world_size} processes)" if dist.active else "")
        + (f" (also {run_dir.parent / 'latest'})" if latest else ""))
    res = train(cfg, run_dir, resume=resume, data_root=a.data_root, origin=origin, latest_link=latest)
    say(f"trained {res.steps} steps in {res.seconds:.1f} s; final loss {res.final_loss}; run folder {run_dir}")
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

    t0 = time.perf_counter()
    print(f"writing the report ({episodes} episodes per evaluation)...", file=sys.stderr)
    try:
        r = write_report(run_dir, data_root, episodes, str(resolve_device(device)), progress=_phase_printer())
        print(f"report: {r.html} (written in {time.perf_counter() - t0:.1f} s)")
    except Exception as e:  # noqa: BLE001 - the checkpoint is already safe; say what went wrong
        print(f"report not written ({type(e).__name__}: {e}); run `metassl report {run_dir}`")


def _phase_printer():
    """The report's progress: one line per phase on standard error (`report: PHASE (N s so far)`)."""
    t0 = time.perf_counter()
    return lambda phase: print(f"report: {phase} ({time.perf_counter() - t0:.1f} s so far)", file=sys.stderr,
                               flush=True)


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


def _transductive_args(p: argparse.ArgumentParser, what: str, nargs: str | None = None) -> None:
    p.add_argument("--transductive", metavar="NAME", nargs=nargs, help=f"{what}: tim, ptmap, bdcspn, "
                   "laplacianshot, softkmeans, finetune (metassl.eval.transductive) or a plugin's; ptmap and tim "
                   "assume balanced query classes (options unbalanced=true / marginal_weight=0)")
    p.add_argument("--transductive-option", action="append", metavar="KEY=VALUE",
                   help="an option of the transductive method, e.g. n_iter=30 or unbalanced=true (repeat the flag "
                   "for several; the options are the fields of the method's config class)")


def _progress(show: bool) -> _EvalBars | None:
    return _EvalBars() if show and sys.stderr.isatty() else None


def cmd_eval(a: argparse.Namespace) -> int:
    from ..engine.evaluate import FROZEN_PROTOCOLS, evaluate_frozen, evaluate_run

    protocol = getattr(a, "protocol", "fewshot")
    if protocol != "fewshot" and getattr(a, "overrides", None):
        raise ConfigError(f"learner overrides {a.overrides} apply to few-shot evaluation only; the {protocol} "
                          f"protocol reads the frozen encoder")
    if protocol != "fewshot" and getattr(a, "transductive", None):
        raise ConfigError(f"--transductive {a.transductive} applies to few-shot evaluation only, not to the "
                          f"{protocol} protocol; drop --protocol or --transductive")
    if protocol == "metadataset":  # variable-way variable-shot episodes per data set, average rank over runs
        return _eval_metadataset(a)
    if getattr(a, "datasets", None) or getattr(a, "runs", None):
        raise ConfigError("--datasets and --runs belong to --protocol metadataset; for one data set use --dataset")
    if protocol in FROZEN_PROTOCOLS:  # kNN / linear probe on frozen features
        model, state, r = evaluate_frozen(a.run, protocol, a.dataset, a.split, a.train_split, a.data_root, a.which,
                                          a.device, a.k, a.temperature, a.max_train, a.max_test, a.seed,
                                          a.weight_decay)
        if not DistInfo.from_env().is_main:  # under torchrun every process computes the same result
            return 0
        d = {**r.to_dict(), "checkpoint": state["checkpoint"], "learner": model.config.learner.name,
             "step": state["step"]}
        print(to_json(d) if a.json else r.line())
        if a.out:
            from ..atomic import atomic_write_text

            atomic_write_text(a.out, to_json(d) + "\n")
        return 0
    main_process = DistInfo.from_env().is_main
    model, state, results = evaluate_run(a.run, a.dataset, a.split, a.ways, a.shots, a.queries, a.episodes, a.seed,
                                         a.data_root, a.which, a.device, a.batch_episodes,
                                         progress=_progress(not a.json and main_process),
                                         overrides=getattr(a, "overrides", None),
                                         transductive=getattr(a, "transductive", None),
                                         transductive_options=_transductive_options(a),
                                         unlabeled=getattr(a, "unlabeled", None),
                                         distractors=getattr(a, "distractors", None),
                                         polarity=getattr(a, "polarity", None) or "auto")
    if not main_process:  # under torchrun every process has the same results; one prints them
        return 0
    for note in state.get("input_notes", []):
        print(note, file=sys.stderr)
    from ..engine.provenance import paper_note, paper_reference

    rows = []
    for r in results:
        d = r.to_dict(per_episode=getattr(a, "per_episode", False))
        # the preset's number, only for the preset's data set and test split (regression: its MSE)
        ref_value = paper_reference(model.config, model.origin, r.protocol, r.tag)
        d["paper_mse" if r.name == "regression" else "paper_accuracy"] = ref_value
        d["checkpoint"] = state["checkpoint"]
        d["learner"] = model.config.learner.name
        d["step"] = state["step"]
        rows.append(d)
        if not a.json:
            kind = "paper, inductive" if r.protocol.get("transductive") else "paper"  # the preset's number
            unit = " MSE" if r.name == "regression" else ""
            note = paper_note(model.config, model.origin, r.protocol, r.tag)  # no number: what the paper gives
            ref = f"   ({kind}: {ref_value}{unit})" if ref_value is not None else f"   (paper: {note})" if note else ""
            print(r.line() + ref)
    if a.json:
        print(to_json(rows[0] if len(rows) == 1 else rows))
    if a.out:
        from ..atomic import atomic_write_text

        atomic_write_text(a.out, to_json(rows) + "\n")
    return 0


def _eval_metadataset(a: argparse.Namespace) -> int:
    from ..engine.evaluate import evaluate_metadataset_runs

    for flag in ("ways", "shots", "queries", "unlabeled", "distractors", "transductive", "dataset"):
        if getattr(a, flag, None):
            raise ConfigError(f"--{flag} does not apply to --protocol metadataset (its episodes draw their ways and "
                              f"shots; data sets: --datasets a,b,c)")
    datasets = [d.strip() for d in a.datasets.split(",") if d.strip()] if a.datasets else None
    runs = [a.run, *(a.runs or [])]
    names, table, avg = evaluate_metadataset_runs(runs, datasets, a.split, a.episodes, a.seed, a.data_root,
                                                  a.which, a.device)
    rows = [{"run": str(r), "learner": n, "average_rank": rank,
             "results": [res.to_dict(per_episode=getattr(a, "per_episode", False)) for res in results]}
            for r, n, results, rank in zip(runs, names, table, avg)]
    if a.json:
        print(to_json(rows[0] if len(rows) == 1 else rows))
    else:
        for r, results in zip(runs, table):
            print(f"{r}:")
            for res in results:
                print(f"  {res.line()}")
        width = max(len(res.protocol["dataset"]) for res in table[0])
        heads = [f"{n} ({Path(str(r).rstrip('/')).name[:12]})" for n, r in zip(names, runs)]
        cw = max(16, *(len(h) for h in heads))
        print("\n" + f"{'data set':<{width}}  " + "  ".join(f"{h:>{cw}}" for h in heads))
        for d, res in enumerate(table[0]):
            cells = "  ".join(f"{f'{table[r][d].accuracy:.2f} ± {table[r][d].ci95:.2f}':>{cw}}"
                              for r in range(len(runs)))
            print(f"{res.protocol['dataset']:<{width}}  {cells}")
        print(f"{'average rank':<{width}}  " + "  ".join(f"{x:>{cw}.2f}" for x in avg))
    if a.out:
        from ..atomic import atomic_write_text

        atomic_write_text(a.out, to_json(rows) + "\n")
    return 0


def _transductive_options(a: argparse.Namespace) -> dict | None:
    """`--transductive-option KEY=VALUE ...` as a dict; refused without `--transductive`."""
    items = getattr(a, "transductive_option", None)
    if not items:
        return None
    if not getattr(a, "transductive", None):
        raise ConfigError(f"--transductive-option {' '.join(items)} needs --transductive NAME (see "
                          f"`metassl eval --help` for the methods)")
    from ..eval.transductive import parse_options

    return parse_options(items)


def cmd_compare(a: argparse.Namespace) -> int:
    from ..engine.evaluate import compare_runs

    main_process = DistInfo.from_env().is_main
    rows = compare_runs(a.runs, a.dataset, a.split, a.ways, a.shots, a.queries, a.episodes, a.seed, a.data_root,
                        a.which, a.device, a.batch_episodes, progress=_progress(not a.json and main_process),
                        transductive=getattr(a, "transductive", None),
                        transductive_options=_transductive_options(a), unlabeled=a.unlabeled,
                        distractors=a.distractors)
    if not main_process:
        return 0
    dicts = [r.to_dict() for r in rows]
    if a.json:
        print(to_json(dicts))
    else:
        print(comparison_table(rows))
    if a.out:
        from ..atomic import atomic_write_text

        atomic_write_text(a.out, to_json(dicts) + "\n")
    return 0


def comparison_table(rows) -> str:
    """The comparison for people: the shared protocol, then one line per run (accuracy ± CI, and against the first
    run the mean paired difference ± its 95% CI, wins/losses over episodes and both tests' p-values)."""
    p = rows[0].result.protocol
    lines = [f"{p['dataset']}/{p['split']} {p['ways']}-way {p['shots']}-shot, {p['episodes']} episodes "
             f"({p['queries']} queries per class, seed {p['seed']}); every run on the same episodes",
             *([f"transductive rows (learner+METHOD) classify each episode's {p['ways'] * p['queries']} queries "
                f"together (balanced: {p['queries']} per class); the others one by one"]
               if any(r.result.protocol.get("transductive") for r in rows) else []),
             f"{'run':<40} {'learner':<14} {'accuracy %':>14}   {'vs first (points)':>17} {'wins/losses':>12} "
             f"{'t-test p':>9} {'Wilcoxon p':>10}"]
    for r in rows:
        acc = f"{r.result.accuracy:.2f} ± {r.result.ci95:.2f}"
        method = r.result.protocol.get("transductive")
        learner = f"{r.learner}+{method}" if method else r.learner
        name = r.run if len(r.run) <= 40 else "..." + r.run[-37:]
        if r.paired is None:
            lines.append(f"{name:<40} {learner:<14} {acc:>14}   {'(reference)':>17}")
        else:
            c = r.paired
            lines.append(f"{name:<40} {learner:<14} {acc:>14}   {c.mean_difference:+8.2f} ± {c.ci95:5.2f} "
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


def cmd_fit(a: argparse.Namespace) -> int:
    from ..workflow import fit_folders

    fit_folders(a.unlabeled_dir, a.out, labeled=a.labeled_dir, minutes=a.minutes, device=a.device, overrides=a.overrides)
    return 0


def cmd_demo(a: argparse.Namespace) -> int:
    from ..config import load_config
    from ..engine.evaluate import evaluate_run
    from ..engine.provenance import make_origin, paper_reference
    from ..engine.trainer import default_run_dir, prepare_run_dir, train

    t0 = time.perf_counter()
    cfg = load_config("omniglot/protonet_demo", a.overrides)
    run_dir = Path(a.run_dir) if a.run_dir else default_run_dir(cfg)
    prepare_run_dir(run_dir)  # a finished or running run in --run-dir is refused, never trained over
    print(f"metassl demo: Prototypical Networks (Conv4) on Omniglot, Vinyals split; run folder {run_dir}")
    res = train(cfg, run_dir, data_root=a.data_root, origin=make_origin("omniglot/protonet_demo", a.overrides),
                latest_link=not a.run_dir)
    print(f"trained {res.steps} episodes ({cfg.tasks.ways}-way {cfg.tasks.shots}-shot) in {res.seconds:.0f} s")
    model, _, results = evaluate_run(str(run_dir), data_root=a.data_root, progress=_progress(True))
    print(f"\nTest accuracy on {cfg.data.test_split} classes never seen in training "
          f"({cfg.eval.episodes} episodes, {cfg.eval.queries} queries per class, mean ± 95% CI):")
    for r in results:
        ref = paper_reference(model.config, model.origin, r.protocol, r.tag)
        ref_s = f"   paper (full training): {ref}" if ref else ""
        print(f"  {r.protocol['ways']}-way {r.protocol['shots']}-shot: {r.accuracy:.2f} ± {r.ci95:.2f}%{ref_s}")
    print(f"\ndone in {time.perf_counter() - t0:.0f} s. Next:\n  metassl eval {run_dir} --shots 1 5 --episodes 600"
          f"    # evaluate again (any protocol)\n  metassl report {run_dir}    # HTML page with figures\n"
          f"  metassl predict {run_dir} --support MY_SUPPORT_DIR --query MY_IMAGES    # your own images")
    return 0


_SURROGATE = re.compile("[\ud800-\udfff]")


def _undecodable(text: str) -> bool:
    """True when `text` holds bytes of a file name that are not UTF-8 (Python keeps them as lone surrogates)."""
    return _SURROGATE.search(text) is not None


def cmd_predict(a: argparse.Namespace) -> int:
    import csv
    import io

    from ..api import TABLE_SUFFIXES, FewShotClassifier, list_image_files, text_run_encoding
    from ..atomic import atomic_write_path

    if a.out and Path(a.out).exists() and not a.force:
        raise FileExistsError(f"{a.out} exists; pass --force to overwrite it or choose another --out")
    if Path(a.support).suffix.lower() in TABLE_SUFFIXES:  # rows of a table file (issue 18): a separate branch
        return _predict_table(a)
    if text_run_encoding(a.run, a.which):  # a run trained on texts (issue 18): .txt files, a separate branch
        return _predict_text(a)
    if a.unlabeled_dir and not a.transductive:
        raise ConfigError(f"--unlabeled {a.unlabeled_dir} is read by transductive methods only: add --transductive "
                          f"NAME (e.g. softkmeans or ptmap)")
    if a.transductive and a.classifier != "learner":
        raise ConfigError(f"--transductive {a.transductive} replaces the classifier: drop --classifier "
                          f"{a.classifier}")
    import warnings

    with warnings.catch_warnings():  # an old checkpoint's note is printed once below, not as a Python warning
        warnings.simplefilter("ignore")
        clf = FewShotClassifier.load(a.run, a.device or "cpu", a.which, a.classifier, transductive=a.transductive,
                                     transductive_options=_transductive_options(a), polarity=a.polarity)
    if clf.input_note:
        print(f"note: {a.run} {clf.input_note}", file=sys.stderr)
    clf.fit_folder(a.support)
    files = [f for q in a.query for f in list_image_files(q)]
    missing = [str(f) for f in files if not f.exists()]
    if not files or len(missing) == len(files):
        raise FileNotFoundError(f"no query images found in {', '.join(a.query)}"
                                + (f" (missing: {', '.join(missing[:3])})" if missing else ""))
    if a.unlabeled_dir:
        if not Path(a.unlabeled_dir).is_dir():
            raise FileNotFoundError(f"--unlabeled {a.unlabeled_dir}: no such folder")
        clf.add_unlabeled(a.unlabeled_dir)
        print(f"unlabeled pool: {clf.unlabeled_count} images from {a.unlabeled_dir}"
              + (f" ({clf.unlabeled_skipped} unreadable, skipped)" if clf.unlabeled_skipped else "")
              + " (used by the method, not written to the output)", file=sys.stderr)
    rows = clf.predict_files(files)
    _input_lines(clf, rows)
    if a.transductive:
        spec = clf._method
        print(f"transductive {a.transductive}: the {sum(r.error is None for r in rows)} query images"
              + (f" and {clf.unlabeled_count} unlabeled images" if clf.unlabeled_count else "")
              + " were classified together" + (
                  "; it assumes balanced query classes (for a set that is not, add " + " ".join(
                      f"--transductive-option {k}={str(v).lower()}" for k, v in spec.unbalanced_options) + ")"
                  if spec.assumes_balanced and not any(k in clf._options for k, _ in spec.unbalanced_options)
                  else ""), file=sys.stderr)
        for note in clf.notes:
            print(f"note: {note}", file=sys.stderr)
    if a.json:
        text = to_json({"classes": clf.classes_, "predictions": [r.__dict__ for r in rows]}, ensure_ascii=False) + "\n"
        # a non-UTF-8 file name: its bytes as \udcXX escapes (valid JSON; Python's json.loads gives the name back)
        text = _SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)
    else:
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["path", "predicted", "probability", *[f"p({c})" for c in clf.classes_], "error",
                    "input_warning"])
        for r in rows:
            w.writerow([r.path, r.label or "", "" if r.probability is None else f"{r.probability:.6f}",
                        *[f"{r.probabilities[c]:.6f}" if r.probabilities else "" for c in clf.classes_],
                        r.error or "", r.input_warning or ""])
        text = buf.getvalue()
    # the CSV keeps a non-UTF-8 file name as its own bytes (surrogateescape), so each row names the file exactly
    data = text.encode("utf-8", "surrogateescape")
    odd = sum(_undecodable(r.path) for r in rows) + sum(_undecodable(c) for c in clf.classes_)
    if a.out:
        with atomic_write_path(a.out) as tmp:
            tmp.write_bytes(data)
        bad = sum(r.error is not None for r in rows)
        print(f"wrote {len(rows)} rows to {a.out} ({len(rows) - bad} predicted, {bad} unreadable), "
              f"classes: {', '.join(clf.classes_)}", file=sys.stderr)  # standard error escapes odd bytes itself
    else:
        out = getattr(sys.stdout, "buffer", None)
        if out is not None:
            sys.stdout.flush()
            out.write(data)
            out.flush()
        else:  # a text-only stream (an embedding application): escapes instead of raw bytes
            sys.stdout.write(text.encode("utf-8", "backslashreplace").decode())
    if odd:
        how = "JSON holds them as \\udcXX escapes" if a.json else "CSV holds their original bytes"
        print(f"note: {odd} file or class name(s) are not valid UTF-8; the {how}", file=sys.stderr)
    return 0


def _input_lines(clf, rows) -> None:
    """predict's lines on its inputs (standard error): images inverted to the training polarity, and one warning
    when support or query images are far outside the training images."""
    inv = {k: v for k, v in clf.inverted.items() if v[0]}
    if inv:
        bg = clf.inputs.stats["background"]
        print("polarity: inverted " + ", ".join(f"{n} of {t} {k}" for k, (n, t) in inv.items()) + " images whose "
              f"background is {'dark' if bg > 127.5 else 'light'} (the training images': "
              f"{'light' if bg > 127.5 else 'dark'}); --polarity keep uses them as given", file=sys.stderr)
    q = [r for r in rows if r.input_warning]
    s = [w for w in clf.support_warnings if w]
    if q or s:
        first = (q[0].input_warning if q else s[0])
        print(f"warning: {len(q)} of {sum(r.error is None for r in rows)} query and {len(s)} of "
              f"{len(clf.support_warnings)} support images are far outside the training images' statistics "
              f"(e.g. {first}); predictions on them are unreliable (the CSV's input_warning column says which)",
              file=sys.stderr)


def _predict_table(a: argparse.Namespace) -> int:
    """`metassl predict RUN --support S.csv --query Q.csv`: a table run adapted to the support rows; one output row
    per query row (its index, the predicted class and probabilities, or the predicted target values)."""
    import csv
    import io

    from ..api import predict_table

    if len(a.query) != 1:
        raise ConfigError(f"--query: give one table file of rows to predict, got {len(a.query)}: {a.query}")
    res = predict_table(a.run, a.support, a.query[0], a.device or "cpu", a.which)
    if a.json:
        text = to_json({"task_type": res.task_type, "columns": res.columns, "predictions": res.predicted,
                        "probabilities": None if res.probabilities is None else res.probabilities.tolist()}) + "\n"
    else:
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(res.header())
        w.writerows(res.rows())
        text = buf.getvalue()
    return _write_predictions(a, text, f"wrote {len(res.predicted)} predictions to {a.out}")


def _predict_text(a: argparse.Namespace) -> int:
    """`metassl predict RUN --support DIR --query FILES_OR_DIRS` for a text run: one row per query text."""
    import csv
    import io

    from ..api import predict_texts

    classes, rows = predict_texts(a.run, a.support, a.query, a.device or "cpu", a.which)
    if a.json:
        text = to_json({"classes": classes, "predictions": [r.__dict__ for r in rows]}, ensure_ascii=False) + "\n"
    else:
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["path", "predicted", "probability", *[f"p({c})" for c in classes]])
        for r in rows:
            w.writerow([r.path, r.label, f"{r.probability:.6f}", *[f"{r.probabilities[c]:.6f}" for c in classes]])
        text = buf.getvalue()
    return _write_predictions(a, text, f"wrote {len(rows)} predictions to {a.out}, classes: {', '.join(classes)}")


def _write_predictions(a: argparse.Namespace, text: str, message: str) -> int:
    """`text` to --out (atomically, `message` on stderr) or to standard output."""
    from ..atomic import atomic_write_path

    if a.out:
        with atomic_write_path(a.out) as tmp:
            tmp.write_text(text, encoding="utf-8")
        print(message, file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def cmd_export(a: argparse.Namespace) -> int:
    from ..export import export

    out = export(a.run, a.format, a.out, a.which)
    print(f"exported the encoder to {out} (input and preprocessing described in {out}.json)")
    return 0


def cmd_sample(a: argparse.Namespace) -> int:
    from ..engine.generative import interpolation_strip, load_generator, sample_grid, save_grid

    gen = load_generator(a.run, a.device or "cpu", key="RUN")
    cols = a.cols or max(1, round(a.n ** 0.5))
    out = save_grid(sample_grid(gen, a.n, a.seed), cols, a.out, a.scale)
    print(f"wrote {a.n} samples of {a.run} (latents from N(0, I), seed {a.seed}) to {out}")
    if a.interpolate:
        path = save_grid(interpolation_strip(gen, seed=a.seed + 1), 10, a.interpolate, a.scale)
        print(f"wrote 4 latent interpolations of 10 steps to {path}")
    return 0


def cmd_selftrain(a: argparse.Namespace) -> int:
    from ..engine.selftrain import selftrain

    if a.resume:
        run_dir = a.resume
    else:
        if not a.config or not a.start_from or not a.run_dir:
            raise ConfigError("metassl selftrain CONFIG --from RUN --rounds R --run-dir DIR (or --resume DIR)")
        run_dir = a.run_dir
    rows = selftrain(run_dir, a.config, a.start_from, a.rounds or 0, a.overrides, bool(a.resume), a.data_root,
                     a.ways, tuple(a.shots), a.episodes)
    for r in rows:
        acc = ", ".join(f"{k} {v['accuracy']:.2f} ± {v['ci95']:.2f}%" for k, v in r["test"].items())
        pur = "—" if r.get("purity") is None else f"{100 * r['purity']:.2f}%"
        print(f"round {r['round']}: purity {pur}; {acc}")
    print(f"rounds: {run_dir}/rounds.jsonl, figure {run_dir}/rounds.png")
    return 0


def cmd_report(a: argparse.Namespace) -> int:
    from ..report import write_report

    t0 = time.perf_counter()
    r = write_report(a.run, a.data_root, a.episodes, a.device or "cpu", a.out, compare_with=a.compare,
                     transductive=a.transductive, progress=_phase_printer())
    print(f"report: {r.html} ({len(r.figures)} figures, written in {time.perf_counter() - t0:.1f} s)")
    return 0


class _Parser(argparse.ArgumentParser):
    """argparse with its errors on one line (`metassl eval: error: ...; see ...`), as every other error here."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}; see `{self.prog} --help`\n")


def _episode_args(p: argparse.ArgumentParser, shots_nargs: str | None) -> None:
    """The protocol flags of `eval` and `compare` (unset: from the run's config) and where the model runs."""
    p.add_argument("--dataset")
    p.add_argument("--split")
    p.add_argument("--ways", type=int)
    p.add_argument("--shots", type=int, nargs=shots_nargs)
    p.add_argument("--queries", type=int)
    p.add_argument("--episodes", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--which", default="latest", choices=("latest", "best"), help="which checkpoint of each run")
    p.add_argument("--device", help="auto, cpu, cuda, ...")
    p.add_argument("--batch-episodes", type=int, help="episodes per model call (0: measured on the device)")
    p.add_argument("--unlabeled", type=int, metavar="M", help="semi-supervised episodes: M unlabeled images of each "
                   "class (and of each distractor class) with every episode, read by semi_protonet and by "
                   "--transductive methods as their extra pool (default: the run's eval.unlabeled, 0)")
    p.add_argument("--distractors", type=int, metavar="D", help="semi-supervised episodes: D classes outside the "
                   "episode add their unlabeled images (default: the run's eval.distractors, 0)")


def build_parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="metassl", description="Few-shot learning: meta-learning and "
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
    _episode_args(p, shots_nargs="+")
    p.add_argument("--json", action="store_true", help="print one JSON object with the metrics and protocol")
    p.add_argument("--out", help="also write the JSON to this file")
    p.add_argument("--per-episode", action="store_true", help="the JSON also lists every episode's accuracy (for "
                   "paired comparisons later: `metassl.eval.compare.paired_comparison`)")
    p.add_argument("--protocol", default="fewshot", choices=("fewshot", "knn", "linear", "metadataset"),
                   help="fewshot: N-way K-shot episodes (default); knn: weighted kNN on frozen features (cosine, "
                   "--k 200, --temperature 0.1) with the train split as memory bank; linear: logistic-regression "
                   "probe on frozen features (full-batch L-BFGS); metadataset: Meta-Dataset's variable-way "
                   "variable-shot episodes on each of --datasets, accuracy ± CI per data set and average rank")
    p.add_argument("--datasets", help="metadataset: comma-separated data sets (default: the run's data.datasets, "
                   "else data.dataset), each on its --split (default test)")
    p.add_argument("--runs", nargs="+", metavar="RUN", help="metadataset: more runs evaluated on the same episodes "
                   "(one column each; the average rank compares them)")
    p.add_argument("--train-split", help="knn/linear: labeled split for the memory bank / probe (default: the run's "
                   "data.train_split); --split is the test split")
    p.add_argument("--k", type=int, default=200, help="knn: neighbours")
    p.add_argument("--temperature", type=float, default=0.1, help="knn: vote weight exp(similarity / T)")
    p.add_argument("--max-train", type=int, help="knn/linear: at most this many training images (fixed subset, "
                   "--seed)")
    p.add_argument("--max-test", type=int, help="knn/linear: at most this many test images")
    p.add_argument("--weight-decay", type=float, default=1e-4, help="linear: L2 penalty of the probe")
    p.add_argument("--polarity", default="auto", choices=("auto", "keep"), help="images of other data than the "
                   "run's: auto inverts those whose background is on the other side of the training images'; keep "
                   "uses them as given")
    _transductive_args(p, "classify each episode's queries together with this transductive method on the "
                       "encoder's features")
    _data_root_arg(p)
    p.set_defaults(fn=cmd_eval)

    p = sub.add_parser("compare", help="evaluate several runs on the same episodes: accuracy ± 95%% CI each, and "
                       "against the first run the paired difference with its CI, paired t-test and Wilcoxon p-values")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run or checkpoint folders; the first is the reference")
    _episode_args(p, shots_nargs=None)
    p.add_argument("--json", action="store_true", help="print a JSON list, one object per run")
    p.add_argument("--out", help="also write the JSON to this file")
    _transductive_args(p, "one method for every run, or one per run (none: inductive), e.g. `compare R R "
                       "--transductive none ptmap` for the paired gain of PT-MAP", nargs="+")
    _data_root_arg(p)
    p.set_defaults(fn=cmd_compare)

    p = sub.add_parser("sample", help="a grid of images generated by a vae or gan run (PNG)")
    p.add_argument("run", metavar="RUN", help="run folder or checkpoint folder of a generative model")
    p.add_argument("--n", type=int, default=64, help="number of samples")
    p.add_argument("--out", required=True, help="PNG file to write")
    p.add_argument("--seed", type=int, default=0, help="seed of the latents (same seed, same images)")
    p.add_argument("--cols", type=int, help="columns of the grid (default: about sqrt(n))")
    p.add_argument("--scale", type=int, default=2, help="pixels per image pixel")
    p.add_argument("--interpolate", metavar="PNG", help="also write 4 latent interpolations of 10 steps here")
    p.add_argument("--device", help="cpu, cuda, ...")
    p.set_defaults(fn=cmd_sample)

    p = sub.add_parser("selftrain", help="self-training rounds: pseudo-classes from the previous round's model, "
                       "meta-train again; purity and test accuracy per round")
    p.add_argument("config", nargs="?", help="config or preset with tasks.source: cactus (e.g. "
                   "omniglot/selftrain_protonet_5w1s)")
    p.add_argument("overrides", nargs="*", help="key=value overrides of every round's config")
    p.add_argument("--from", dest="start_from", metavar="RUN", help="the model round 1 starts from (round 0)")
    p.add_argument("--rounds", type=int, help="number of rounds (with --resume: raise it to add rounds)")
    p.add_argument("--run-dir", help="folder of the rounds")
    p.add_argument("--resume", metavar="DIR", help="continue a selftrain folder after a kill")
    p.add_argument("--ways", type=int, default=5, help="test episodes: ways")
    p.add_argument("--shots", type=int, nargs="+", default=[1, 5], help="test episodes: shots")
    p.add_argument("--episodes", type=int, default=600, help="test episodes per shot count (seed 0)")
    _data_root_arg(p)
    p.set_defaults(fn=cmd_selftrain)

    p = sub.add_parser("datasets", help="list known data sets and where they were found")
    p.add_argument("--no-counts", action="store_true", help="only say where each data set is, do not load splits")
    _data_root_arg(p)
    p.set_defaults(fn=cmd_datasets)

    p = sub.add_parser("presets", help="list config presets (or all config keys with --keys)")
    p.add_argument("--keys", action="store_true")
    p.set_defaults(fn=cmd_presets)

    p = sub.add_parser("predict", help="adapt to a folder of labeled images and label new images (or to the rows "
                       "of a table file: --support S.csv --query Q.csv)")
    p.add_argument("run", nargs="?", metavar="RUN", help="run folder or checkpoint folder (first, before the options; "
                   "or --run RUN anywhere)")
    p.add_argument("--run", dest="run_flag", metavar="RUN", help="the run, as an option (same as RUN)")
    p.add_argument("--support", required=True, help="folder with one sub-folder of labeled images per class")
    p.add_argument("--query", required=True, nargs="+", help="a folder (searched recursively) or image files")
    p.add_argument("--out", help="write the CSV (or JSON) here instead of standard output")
    p.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    p.add_argument("--json", action="store_true", help="JSON instead of CSV")
    p.add_argument("--classifier", default="learner", choices=("learner", "logistic"),
                   help="adapt as the learner does, or logistic regression on frozen features")
    p.add_argument("--polarity", default="auto", choices=("auto", "keep"), help="auto: invert images whose "
                   "background is on the other side of the training images' (white ink on black, or the reverse); "
                   "keep: use them as given")
    _transductive_args(p, "classify all query images together with this transductive method (they are its "
                       "unlabeled data), on the encoder's features")
    p.add_argument("--unlabeled", dest="unlabeled_dir", metavar="DIR", help="with --transductive: a folder of "
                   "unlabeled images the method also uses (read in chunks; never written to the output)")
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
    p.add_argument("--transductive", nargs="+", metavar="NAME", help="transductive methods to add, paired against "
                   "the run's own classifier on the same episodes (e.g. ptmap softkmeans)")
    p.add_argument("--episodes", type=int, help="episodes per evaluation (default: the run's eval.episodes)")
    p.add_argument("--out", help="folder for the page and figures (default RUN/report)")
    p.add_argument("--device")
    _data_root_arg(p)
    p.set_defaults(fn=cmd_report)

    p = sub.add_parser("fit", help="from folders of your images to a run to predict with, within a time budget: "
                       "SimCLR on the unlabeled images, then ProtoNet on the labeled classes when given")
    p.add_argument("overrides", nargs="*", help="section.key=value for both stages, e.g. model.hidden=32")
    p.add_argument("--unlabeled", dest="unlabeled_dir", required=True, metavar="DIR", help="folder of unlabeled images (searched "
                   "recursively; the more the better)")
    p.add_argument("--labeled", dest="labeled_dir", metavar="DIR", help="DIR/<class>/<image>: labeled examples of some classes (not "
                   "necessarily the ones you will predict)")
    p.add_argument("--minutes", type=float, default=10.0, help="time budget for both stages (default 10)")
    p.add_argument("--out", required=True, metavar="RUN", help="the run folder to create (with --labeled, the "
                   "SimCLR stage goes to RUN.simclr beside it)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.set_defaults(fn=cmd_fit)

    p = sub.add_parser("demo", help="train ProtoNet on Omniglot and report 5-way 1/5-shot test accuracy")
    p.add_argument("overrides", nargs="*")
    p.add_argument("--run-dir")
    _data_root_arg(p)
    p.set_defaults(fn=cmd_demo)
    return ap


_OVERRIDE = re.compile(r"[A-Za-z_]\w*(\.\w+)*=")


def _split_overrides(parser: argparse.ArgumentParser, argv: list[str]) -> tuple[list[str], list[str]]:
    """(`key=value` overrides, the other arguments) of one command, wherever the overrides stand: after an option
    (`--run-dir R train.steps=5`) or after a list flag (`--shots 1 5 learner.eval_inner_steps=10`), where argparse
    would stop matching positionals or read the override as a flag value. The value of a one-value option
    (`--out a=b.json`) and an existing file stay where they are."""
    takes_one = {o for a in parser._actions if a.nargs is None and a.option_strings for o in a.option_strings}
    overrides, rest = [], []
    for i, x in enumerate(argv):
        if x == "--":
            return overrides, rest + argv[i:]
        if _OVERRIDE.match(x) and not (rest and rest[-1] in takes_one) and not Path(x).exists():
            overrides.append(x)
        else:
            rest.append(x)
    return overrides, rest


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line as a Namespace; `key=value` overrides are accepted anywhere after the command."""
    ap = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = next(a for a in ap._actions if isinstance(a, argparse._SubParsersAction)).choices
    i = next((i for i, x in enumerate(argv) if not x.startswith("-")), None)  # the command
    moved: list[str] = []
    if i is not None and argv[i] in commands and any(a.dest == "overrides" for a in commands[argv[i]]._actions):
        moved, rest = _split_overrides(commands[argv[i]], argv[i + 1:])
        argv = argv[:i + 1] + rest
    args, extra = ap.parse_known_args(argv)
    if extra:
        print(f"metassl {args.command}: error: unrecognized arguments: {' '.join(extra)}; see "
              f"`metassl {args.command} --help`", file=sys.stderr)
        raise SystemExit(2)
    if hasattr(args, "overrides"):
        args.overrides = list(args.overrides or []) + moved
    if args.command == "predict":
        _predict_run(args)
    return args


def _is_run(path: str) -> bool:
    """A run folder or a checkpoint folder (never a folder of images to predict)."""
    p = Path(path)
    return (p / "config.yaml").is_file() or (p / "state.json").is_file() or (p / "checkpoints").is_dir()


def _predict_run(a: argparse.Namespace) -> None:
    """predict's RUN: positional (`predict RUN --support S --query Q`) or `--run RUN`; in `predict --support S
    --query Q RUN` the list flag --query took RUN too, which is given back when it is a run folder."""
    if a.run is not None and a.run_flag is not None and a.run != a.run_flag:
        _usage_error("predict", f"RUN {a.run} and --run {a.run_flag} differ; give the run once")
    a.run = a.run if a.run is not None else a.run_flag  # "" stays: check_flags says it is empty
    if a.run is None and len(a.query) > 1 and _is_run(a.query[-1]):
        a.run = a.query.pop()
    if a.run is None:
        _usage_error("predict", "give the run first: `metassl predict RUN --support S --query Q` (or --run RUN)")


def _usage_error(command: str, message: str) -> None:
    print(f"metassl {command}: error: {message}; see `metassl {command} --help`", file=sys.stderr)
    raise SystemExit(2)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        code = _run(args)
        sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's exit
        return code
    except BrokenPipeError:
        # the reader went away (`metassl presets | head -1`): stop quietly, as Unix tools do on SIGPIPE
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError, AttributeError):
            pass
        return 141
    finally:
        if "torch.distributed" in sys.modules:  # a process group (torchrun) is closed before the process ends
            from ..engine.distributed import teardown

            teardown()


def _run(args: argparse.Namespace) -> int:
    try:
        check_flags(args)
        return args.fn(args)
    except KeyboardInterrupt as e:  # the trainer's says at which step and which checkpoint to continue from
        print(f"metassl {args.command}: {e}" if e.args and str(e) else
              "interrupted; the last checkpoint is intact (continue with `metassl train --resume RUN_DIR`)",
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
