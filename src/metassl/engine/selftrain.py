"""Self-training rounds (`metassl selftrain`): a label-free model improves itself on its own pseudo-classes.

Round 0 is the starting run (`--from RUN`, e.g. our best label-free model), evaluated as it is. Round r >= 1 is an
ordinary training run in `DIR/round_r` of the given config, which must draw its tasks from pseudo-classes made by
the previous round's model (`tasks.source: cactus`): the previous round's encoder embeds the unlabeled training
images, k-means (`tasks.clusters` centres, CACTUs' sampler) makes pseudo-classes, and the model, initialized from
the previous round (`init_from`), meta-trains on episodes from them. This is self-training with cluster
pseudo-labels, the loop of DeepCluster (Caron et al. 2018) and of CACTUs (Hsu et al. 2019) iterated with the
meta-learner's own embedding; the confident-prediction variant (pseudo-labels above a threshold) is not
implemented.

After each round: the pseudo-label purity (the share of images whose pseudo-class's most common true class is
their own; the true labels are read for this report only, never for training), how many clusters could be used,
and the test accuracy on fixed episodes are appended to `DIR/rounds.jsonl` and drawn in `DIR/rounds.png`. A killed
round resumes like any run (`metassl selftrain --resume DIR`: finished rounds are kept, the unfinished one
continues from its last checkpoint with its random state, and its pseudo-classes are made again, identically, from
the previous round's saved model).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable

import torch

from ..atomic import atomic_write_text
from ..config import ConfigError, load_config
from .evaluate import evaluate_run
from .trainer import Trainer, load_run_config

__all__ = ["purity", "selftrain", "read_rounds"]

STATE = "selftrain.json"
ROUNDS = "rounds.jsonl"


def purity(assign: torch.Tensor, labels: torch.Tensor) -> float:
    """Cluster purity: sum over clusters of the count of their most common true label, divided by the images."""
    assign, labels = assign.long().cpu(), labels.long().cpu()
    k, c = int(assign.max()) + 1, int(labels.max()) + 1
    table = torch.bincount(assign * c + labels, minlength=k * c).view(k, c)
    return float(table.max(1).values.sum()) / max(assign.numel(), 1)


def cluster_assignments(source: Any) -> torch.Tensor:
    """The first partition's cluster index of every training image, from a CACTUs task source."""
    order, counts = source.orders[0], source.counts[0]
    assign = torch.empty_like(order)
    assign[order] = torch.repeat_interleave(torch.arange(counts.numel(), device=counts.device), counts)
    return assign


def read_rounds(run_dir: str | Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / ROUNDS
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _append(run_dir: Path, row: dict[str, Any]) -> None:
    rows = [r for r in read_rounds(run_dir) if r["round"] != row["round"]] + [row]
    atomic_write_text(run_dir / ROUNDS, "".join(json.dumps(r) + "\n" for r in sorted(rows, key=lambda r: r["round"])))


def _accuracy(run: str | Path, state: dict[str, Any], data_root: str | None) -> dict[str, Any]:
    _, _, results = evaluate_run(run, ways=state["ways"], shots=state["shots"], episodes=state["episodes"], seed=0,
                                 data_root=data_root, device="cpu", progress=None)
    return {f"{r.protocol['ways']}w{r.protocol['shots']}s": {"accuracy": round(r.accuracy, 3),
                                                            "ci95": round(r.ci95, 3)} for r in results}


def plot_rounds(run_dir: Path) -> Path | None:
    rows = read_rounds(run_dir)
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.2))
    keys = sorted({k for r in rows for k in r.get("test", {})})
    for k in keys:
        pts = [(r["round"], r["test"][k]["accuracy"], r["test"][k]["ci95"]) for r in rows if k in r.get("test", {})]
        a1.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts], marker="o", label=k)
    a1.set_xlabel("round")
    a1.set_ylabel("test accuracy (%)")
    a1.legend()
    pur = [(r["round"], 100 * r["purity"]) for r in rows if r.get("purity") is not None]
    a2.plot([p[0] for p in pur], [p[1] for p in pur], marker="o")
    a2.set_xlabel("round")
    a2.set_ylabel("pseudo-label purity (%)")
    for a in (a1, a2):
        a.set_xticks([r["round"] for r in rows])
    fig.tight_layout()
    out = run_dir / "rounds.png"
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def selftrain(run_dir: str | Path, config: str | None = None, start_from: str | None = None, rounds: int = 1,
              overrides: list[str] | None = None, resume: bool = False, data_root: str | None = None,
              ways: int = 5, shots: tuple[int, ...] = (1, 5), episodes: int = 600,
              echo: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Run (or continue, `resume`) self-training rounds into `run_dir`; returns the rows of rounds.jsonl."""
    run_dir = Path(run_dir)
    state_path = run_dir / STATE
    if resume:
        if not state_path.is_file():
            raise ConfigError(f"{run_dir} is not a selftrain folder (no {STATE}); start one with `metassl "
                              f"selftrain CONFIG --from RUN --rounds R --run-dir {run_dir}`")
        state = json.loads(state_path.read_text(encoding="utf-8"))
        if rounds and rounds > state["rounds"]:
            state["rounds"] = int(rounds)  # more rounds than first asked for
    else:
        if config is None or start_from is None:
            raise ConfigError("metassl selftrain needs CONFIG and --from RUN (the model round 1 starts from)")
        if run_dir.exists() and any(run_dir.iterdir()):
            raise ConfigError(f"{run_dir} exists and is not empty: continue it with `metassl selftrain --resume "
                              f"{run_dir}` or choose another --run-dir")
        state = {"config": config, "from": str(start_from), "rounds": int(rounds), "overrides": list(overrides or []),
                 "ways": int(ways), "shots": [int(s) for s in shots], "episodes": int(episodes)}
    probe = load_config(state["config"], [*state["overrides"], f"tasks.embed_from={state['from']}"])
    if probe.tasks.source != "cactus":
        raise ConfigError(f"selftrain: {state['config']} trains on tasks.source={probe.tasks.source}; self-training "
                          f"rounds draw their tasks from the previous round's pseudo-classes: set tasks.source=cactus "
                          f"(e.g. the preset omniglot/selftrain_protonet_5w1s)")
    if probe.tasks.clusters < probe.tasks.ways:
        raise ConfigError(f"selftrain: tasks.clusters={probe.tasks.clusters} pseudo-classes are fewer than the "
                          f"task's tasks.ways={probe.tasks.ways}: raise tasks.clusters or lower tasks.ways")
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(state_path, json.dumps(state, indent=1) + "\n")
    done = {r["round"] for r in read_rounds(run_dir)}
    if 0 not in done:
        echo(f"round 0: evaluating {state['from']}")
        _append(run_dir, {"round": 0, "run": state["from"], "purity": None,
                          "test": _accuracy(state["from"], state, data_root)})
    for r in range(1, state["rounds"] + 1):
        if r in done:
            continue
        prev = state["from"] if r == 1 else str(run_dir / f"round_{r - 1}")
        folder = run_dir / f"round_{r}"
        again = (folder / "config.yaml").is_file()
        cfg = (load_run_config(folder) if again else
               load_config(state["config"], [*state["overrides"], f"init_from={prev}", f"tasks.embed_from={prev}"]))
        echo(f"round {r}: {'resuming' if again else 'training'} {folder} (pseudo-classes from {prev})")
        t0 = time.perf_counter()
        trainer = Trainer(cfg, folder, resume=again, data_root=data_root, echo=echo)
        assign = cluster_assignments(trainer.source)
        labels = trainer.train_split.labels()  # read for the purity report only
        pur = purity(assign, labels)
        usable = int((trainer.source.counts[0] >= cfg.tasks.shots + cfg.tasks.queries).sum())
        echo(f"round {r}: {cfg.tasks.clusters} pseudo-classes ({usable} with >= {cfg.tasks.shots + cfg.tasks.queries} "
             f"images), purity {100 * pur:.2f}%")
        result = trainer.run()
        row = {"round": r, "run": str(folder), "purity": round(pur, 5), "clusters": cfg.tasks.clusters,
               "usable_clusters": usable, "steps": result.steps, "train_s": round(time.perf_counter() - t0, 1),
               "test": _accuracy(folder, state, data_root)}
        _append(run_dir, row)
        echo(f"round {r}: " + ", ".join(f"{k} {v['accuracy']:.2f} ± {v['ci95']:.2f}%" for k, v in row["test"].items()))
        plot_rounds(run_dir)
    plot_rounds(run_dir)
    return read_rounds(run_dir)
