"""Evaluate a saved run: load it and its split(s), run the few-shot protocol (`evaluate_run`) or a frozen-encoder
protocol, kNN or linear probe (`evaluate_frozen`), or several runs on the same episodes
with paired statistics (`compare_runs`), and return `EvalResult`s. Nothing is printed; `metassl eval`
(cli/main.py) prints the results and draws the progress bar from the `progress` callback."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from ..eval.compare import PairedComparison, compare_results
from ..eval.episodes import Protocol, evaluate
from ..eval.knn import knn_evaluate
from ..eval.linear import linear_evaluate
from ..eval.result import EvalResult
from ..eval.regression import RegressionProtocol, evaluate_regression
from ..data.regression import is_regression
from ..errors import ConfigError
from ..eval.transductive import method_config, transductive_predict
from ..config import to_plain
from .allocator import tune_allocator
from .build import Model, load_model
from .distributed import DistInfo, gather_objects, resolve_device, setup
from .frozen import load_run_split
from .shared_features import SharedFeatures

__all__ = ["evaluate_run", "evaluate_frozen", "compare_runs", "FROZEN_PROTOCOLS", "RunComparison",
           "evaluate_metadataset_runs"]

FROZEN_PROTOCOLS = ("knn", "linear")

# progress(protocol, episodes done so far in that protocol), after every batch of episodes
Progress = Callable[[Protocol, int], None]


def evaluate_run(run: str | Path, dataset: str | None = None, split: str | None = None, ways: int | None = None,
                 shots: int | Sequence[int] | None = None, queries: int | None = None, episodes: int | None = None,
                 seed: int | None = None, data_root: str | None = None, which: str = "latest",
                 device: str | None = None, batch_episodes: int | None = None, progress: Progress | None = None,
                 overrides: list[str] | None = None, transductive: str | None = None,
                 transductive_options: dict | None = None, unlabeled: int | None = None,
                 distractors: int | None = None, polarity: str = "auto", share_features: bool = True
                 ) -> tuple[Model, dict, list[EvalResult]]:
    """Few-shot accuracy of a run or checkpoint on fixed episodes, one result per shot count. Every protocol value
    not given comes from the run's config (`data.dataset`, `data.test_split`, the `eval` section); `overrides`
    (`learner.KEY=VALUE`) change how the learner evaluates. `progress` (None or False: none) is called as
    progress(protocol, episodes_done) after each batch of episodes. `transductive` (a name registered in
    `metassl.registry.TRANSDUCTIVE`, e.g. "ptmap") classifies each episode's queries with that transductive method
    on the encoder's features (options: `transductive_options`, e.g. {"n_iter": 30}) instead of the learner's own
    classifier; the protocol of each result then records the method, its options, the query-set size and its class
    balance. `unlabeled` / `distractors` (default: the run's `eval.unlabeled` / `eval.distractors`) make the episodes
    semi-supervised: M unlabeled images of each class and of D distractor classes come with every episode, used by
    learners that read them (semi_protonet) and by transductive methods as their extra pool. Images of other data
    than the run's are converted to its channels and polarity (`polarity="keep"`: as given; `load_run_split`); what
    was done is listed in the state's "input_notes". `share_features`: embed each test image once for all episodes
    where that gives the same logits bit for bit (`SharedFeatures`; one process, no transductive method); the
    state's "shared_features" says whether it was used. Returns (model, checkpoint state, results)."""
    method_cfg = None if transductive is None else method_config(transductive, transductive_options)  # fail early
    tune_allocator()
    dist = DistInfo.from_env()
    dev = resolve_device(device or "auto", dist)
    setup(dist, dev)  # under torchrun: each process evaluates its share of the episodes, all summarize all
    model, state = load_model(run, dev, which, overrides)
    cfg = model.config
    notes: list[str] = []
    data = load_run_split(model, dataset, split, data_root, polarity=polarity, notes=notes)
    state = {**state, "input_notes": notes}
    shot_list = [shots] if isinstance(shots, int) else list(cfg.eval.shots if shots is None else shots)
    if is_regression(data):  # few-shot regression: MSE / MAE / R² on fixed tasks (eval/regression.py)
        if transductive is not None:
            raise ConfigError(f"--transductive {transductive} classifies queries; {data.name} is a regression data "
                              f"set: drop --transductive")
        steps = getattr(model.learner, "steps", None)
        results = []
        for k in shot_list:
            rp = RegressionProtocol(_given(dataset, cfg.data.dataset), _given(split, cfg.data.test_split), k,
                                    _given(queries, cfg.eval.queries), _given(episodes, cfg.eval.episodes),
                                    cfg.eval.seed if seed is None else seed, steps(False) if steps else None)
            results.append(evaluate_regression(
                model.predict, data, rp, _given(batch_episodes, cfg.eval.batch_episodes),
                progress=_counter(progress, rp) if progress else None,
                part=dist.share(rp.episodes) if dist.active else None,
                gather=(lambda x: gather_objects(dist, x)) if dist.active else None))
        return model, state, results
    predict = model.predict
    if transductive is not None:
        predict = transductive_predict(model.learner, model.params, model.buffers, transductive,
                                       transductive_options)
    results = []
    protocols = [Protocol(_given(dataset, cfg.data.dataset), _given(split, cfg.data.test_split),
                          _given(ways, cfg.eval.ways), k, _given(queries, cfg.eval.queries),
                          _given(episodes, cfg.eval.episodes), cfg.eval.seed if seed is None else seed,
                          _given(unlabeled, cfg.eval.unlabeled), _given(distractors, cfg.eval.distractors))
                 for k in shot_list]
    batch = _given(batch_episodes, cfg.eval.batch_episodes)
    shared = None
    if share_features and transductive is None and not dist.active and protocols:
        shared = SharedFeatures.build(model, data, protocols[0], batch)
    state["shared_features"] = shared is not None
    for p in protocols:
        count = _counter(progress, p) if progress else None
        r = shared.evaluate(p, batch, progress=count) if shared is not None else evaluate(
            predict, data, p, model.preprocess, batch, progress=count,
            part=dist.share(p.episodes) if dist.active else None,
            gather=(lambda x: gather_objects(dist, x)) if dist.active else None)
        if transductive is not None:
            r.protocol.update(transductive=transductive, transductive_options=to_plain(method_cfg),
                              query_set_size=p.ways * p.queries, query_balance=f"balanced ({p.queries} per class)")
        results.append(r)
    return model, state, results


def _given(value, default):
    """`value` unless it was not given (None): 0 or "" are values, refused by the protocol's checks, never a silent
    fallback to the run's config."""
    return default if value is None else value


def _counter(progress: Progress, p: Protocol) -> Callable[[int], None]:
    """`evaluate`'s progress(episodes in this batch) as progress(protocol, episodes done so far)."""
    done = 0

    def step(n: int) -> None:
        nonlocal done
        done += n
        progress(p, done)

    return step


def evaluate_frozen(run: str | Path, protocol: str, dataset: str | None = None, split: str | None = None,
                    train_split: str | None = None, data_root: str | None = None, which: str = "latest",
                    device: str | None = None, k: int = 200, temperature: float = 0.1, max_train: int | None = None,
                    max_test: int | None = None, seed: int | None = None, weight_decay: float = 1e-4
                    ) -> tuple[Model, dict, EvalResult]:
    """kNN (`protocol="knn"`) or linear-probe (`"linear"`) accuracy of a run's frozen encoder: the labeled
    `train_split` (default the run's data.train_split) is the memory bank / probe training set, `split` (default
    data.test_split) the test set; `max_train` / `max_test` take fixed subsets (seed `seed`, default 0). Returns
    (model, checkpoint state, result)."""
    if protocol not in FROZEN_PROTOCOLS:
        raise ValueError(f"frozen-encoder protocol must be one of {', '.join(FROZEN_PROTOCOLS)}, got {protocol!r}")
    model, state = load_model(run, resolve_device(device or "auto"), which)
    cfg = model.config
    ds = _given(dataset, cfg.data.dataset)
    train = load_run_split(model, ds, _given(train_split, cfg.data.train_split), data_root)
    test = load_run_split(model, ds, _given(split, cfg.data.test_split), data_root)
    seed = 0 if seed is None else seed
    if protocol == "knn":
        r = knn_evaluate(model, train, test, ds, k, temperature, max_train, max_test, seed)
    else:
        r = linear_evaluate(model, train, test, ds, weight_decay, max_train=max_train, max_test=max_test, seed=seed)
    return model, state, r


@dataclass
class RunComparison:
    """One run's result in a comparison and its paired statistics against the first run (None for the first)."""

    run: str
    learner: str
    step: int
    result: EvalResult
    paired: PairedComparison | None

    def to_dict(self) -> dict:
        return {"run": self.run, "learner": self.learner, "step": self.step, **self.result.to_dict(),
                "paired_vs_first": None if self.paired is None else self.paired.to_dict()}


def compare_runs(runs: Sequence[str | Path], dataset: str | None = None, split: str | None = None,
                 ways: int | None = None, shots: int | None = None, queries: int | None = None,
                 episodes: int | None = None, seed: int | None = None, data_root: str | None = None,
                 which: str = "latest", device: str | None = None, batch_episodes: int | None = None,
                 progress: Progress | None = None, transductive: str | Sequence[str | None] | None = None,
                 transductive_options: dict | None = None, unlabeled: int | None = None,
                 distractors: int | None = None) -> list[RunComparison]:
    """Evaluate every run on the same episodes and compare each with the first (`eval.compare`). Protocol values
    not given come from the first run's config and are then used for every run, so all see identical episodes.
    `transductive`: one method name for every run, or one per run (None or "none": the run's inductive
    classifier), e.g. (RUN, RUN) with (None, "ptmap") gives the paired gain of PT-MAP on the same encoder."""
    if len(runs) < 2:
        raise ValueError(f"compare needs at least two runs, got {len(runs)}")
    methods = _per_run_methods(transductive, len(runs))
    out: list[RunComparison] = []
    for i, run in enumerate(runs):
        model, state, results = evaluate_run(run, dataset, split, ways, shots, queries, episodes, seed, data_root,
                                             which, device, batch_episodes, progress, transductive=methods[i],
                                             transductive_options=transductive_options if methods[i] else None,
                                             unlabeled=unlabeled, distractors=distractors)
        r = results[0]
        if i == 0:  # the first run fixes every protocol value for the others
            p = r.protocol
            dataset, split, ways, shots = p["dataset"], p["split"], p["ways"], p["shots"]
            queries, episodes, seed = p["queries"], p["episodes"], p["seed"]
            unlabeled, distractors = p.get("unlabeled", 0), p.get("distractors", 0)
        out.append(RunComparison(str(run), model.config.learner.name, int(state["step"]), r, None))
    paired = compare_results([c.result for c in out])
    for c, pc in zip(out, paired):
        c.paired = pc
    return out


def _per_run_methods(transductive: str | Sequence[str | None] | None, n: int) -> list[str | None]:
    """One transductive method (or None: inductive) per run, from one name for all or one per run."""
    if transductive is None or isinstance(transductive, str):
        names = [transductive] * n
    else:
        names = list(transductive)
        if len(names) == 1:
            names = names * n
        if len(names) != n:
            raise ValueError(f"--transductive: give one method for every run or one per run ({n} runs), got "
                             f"{len(names)}: {names}")
    return [None if m in (None, "none", "") else m for m in names]


def evaluate_metadataset_runs(runs: Sequence[str | Path], datasets: Sequence[str] | None = None,
                              split: str | None = None, episodes: int | None = None, seed: int | None = None,
                              data_root: str | None = None, which: str = "latest", device: str | None = None,
                              progress: Callable[[str, int], None] | None = None, hierarchy: bool = True
                              ) -> tuple[list[str], list[list[EvalResult]], list[float]]:
    """The Meta-Dataset protocol (`eval/metadataset.py`) for each run on each data set (default: the first run's
    data.datasets, else its data.dataset), on the same episodes: (learner names, results[run][dataset], average rank
    of each run over the data sets). `split`: each data set's test split (default `test`); `episodes` default 600
    (Meta-Dataset: 600 per data set), `seed` default the run's eval.seed. Images are converted as each run was
    trained (`load_run_split`: a multi-domain run's recorded conversion)."""
    from ..data.multidomain import check_datasets
    from ..eval.metadataset import MetaDatasetProtocol, average_ranks, evaluate_metadataset

    if not runs:
        raise ValueError("give at least one run")
    dev = resolve_device(device or "auto")
    names: list[str] = []
    table: list[list[EvalResult]] = []
    for run in runs:
        model, _ = load_model(run, dev, which)
        cfg = model.config
        if datasets is None:
            datasets = list(cfg.data.datasets) or [cfg.data.dataset]
        check_datasets(list(datasets))
        row = []
        for ds in datasets:
            data = load_run_split(model, ds, split or "test", data_root)
            p = MetaDatasetProtocol(ds, split or "test", 600 if episodes is None else episodes,
                                    cfg.eval.seed if seed is None else seed, hierarchy)
            if p.episodes < 1:
                raise ConfigError(f"--episodes must be >= 1, got {p.episodes}")
            row.append(evaluate_metadataset(model.predict, data, p, model.preprocess,
                                            progress=(lambda n, ds=ds: progress(ds, n)) if progress else None))
        names.append(cfg.learner.name)
        table.append(row)
    ranks = average_ranks([[table[r][d].accuracy for r in range(len(runs))] for d in range(len(datasets))])
    return names, table, ranks
