"""The report of a few-shot regression run (`metassl report RUN`, and after `metassl train`): MSE / MAE / R² on the
fixed test tasks after 1 and 10 inner steps, beside the preset's paper values, and for function families (the
sinusoid) a plot like Finn et al. 2017's Figure 2: per test task the true curve, the K support points, and the
predictions after 0 (the meta-learned initialization), 1 and 10 gradient steps."""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

import torch

from ..atomic import atomic_write_text
from ..data.regression import FunctionSplit
from ..engine.build import Model, load_model
from ..engine.provenance import paper_reference
from ..eval.regression import RegressionProtocol, evaluate_regression

__all__ = ["regression_report", "plot_fits", "STEPS"]

STEPS = (1, 10)


def _with_steps(run: Path, device: str, steps: int) -> Model:
    model, _ = load_model(run, device, learner_overrides=[f"learner.eval_inner_steps={steps}"])
    return model


def plot_fits(run: Path, split: FunctionSplit, path: Path, device: str = "cpu", tasks: int = 3, seed: int = 0,
              steps: tuple[int, ...] = (0, 1, 10)) -> Path:
    """Figure 2 of the MAML paper for this run: `tasks` fixed test tasks (seed `seed`), each with the true function
    on a grid over the input range, the K support points, and the predictions after each number of `steps`."""
    from . import _plt, _save

    plt = _plt()
    base, _ = load_model(run, device)
    cfg = base.config
    k = cfg.eval.shots[0]
    params, x = split.fixed_params(k, cfg.eval.queries, seed, 0, tasks)
    lo, hi = getattr(getattr(split, "options", None), "x", (float(x.min()), float(x.max())))
    grid = torch.linspace(lo, hi, 200).view(1, -1, 1).expand(tasks, -1, -1)
    truth = split.function(params, grid)
    sx, sy = x[:, :k], split.function(params, x[:, :k])
    fig, axes = plt.subplots(1, tasks, figsize=(4.2 * tasks, 3.4), squeeze=False)
    curves = {}
    for s in steps:
        if s == 0:  # the meta-learned initialization, before any step on the task
            with torch.no_grad():
                curves[s] = torch.stack([base.learner.forward(base.params, base.buffers, g) for g in grid])
        else:
            m = _with_steps(run, device, s)
            with torch.no_grad():
                curves[s] = m.predict(sx, sy, grid.contiguous(), None)
    for t in range(tasks):
        ax = axes[0, t]
        ax.plot(grid[t, :, 0], truth[t, :, 0], color="red", lw=2, label="ground truth")
        for s, style in zip(steps, (":", "--", "-")):
            ax.plot(grid[t, :, 0], curves[s][t, :, 0], style, color="green", lw=1.5,
                    label="pre-update" if s == 0 else f"{s} grad step{'s' if s > 1 else ''}")
        ax.plot(sx[t, :, 0], sy[t, :, 0], "^", color="purple", ms=7, label=f"{k} points used for the update")
        ax.set_title(f"test task {t}: A={float(params['amplitude'][t]):.2f}, phase={float(params['phase'][t]):.2f}"
                     if "amplitude" in params else f"test task {t}", fontsize=9)
    axes[0, 0].legend(fontsize=7, loc="lower left")
    lr = getattr(cfg.learner, "eval_inner_lr", None) or getattr(cfg.learner, "inner_lr", "learned")
    fig.suptitle(f"{cfg.learner.name}, K={k}: fits after 0 / 1 / 10 inner steps (step size {lr})", fontsize=10)
    return _save(fig, path)


def regression_report(run: Path, run_dir: Path, split: Any, folder: Path, device: str, episodes: int | None,
                      info: dict) -> tuple[Path, list[Path], list[dict]]:
    base, _ = load_model(run, device)
    cfg = base.config
    eps = episodes or cfg.eval.episodes
    table, figures = [], []
    from ..engine.logging import plot_learning_curves

    curves = plot_learning_curves(run_dir, folder / "learning_curves.png")
    if curves:
        figures.append(curves)
    for k in cfg.eval.shots:
        for s in STEPS:
            m = _with_steps(run, device, s)
            rp = RegressionProtocol(cfg.data.dataset, cfg.data.test_split, k, cfg.eval.queries, eps, cfg.eval.seed, s)
            r = evaluate_regression(m.predict, split, rp, cfg.eval.batch_episodes)
            table.append({**r.to_dict(), "paper_mse": paper_reference(cfg, base.origin, r.protocol, rp.tag)})
    if isinstance(split, FunctionSplit):
        figures.append(plot_fits(run, split, folder / "fits.png", device, seed=cfg.eval.seed))
    e = html.escape
    rows = "".join(
        f"<tr><td>{r['protocol']['shots']}</td><td>{r['protocol']['inner_steps']}</td>"
        f"<td><b>{r['mse']:.4f} ± {r['metrics']['mse']['ci95']:.4f}</b></td><td>{r['mae']:.4f}</td>"
        f"<td>{r['r2']:.3f}</td><td>{'—' if r['paper_mse'] is None else r['paper_mse']}</td></tr>" for r in table)
    imgs = "".join(f"<p><img src='{e(p.name)}' style='max-width:100%'></p>" for p in figures)
    page = (f"<!doctype html><meta charset=utf-8><title>{e(cfg.name)}</title><h1>{e(cfg.name)}: few-shot "
            f"regression</h1><p>{e(cfg.description)}</p><p>learner <code>{e(cfg.learner.name)}</code>, step "
            f"{info.get('step')}, data <code>{e(cfg.data.dataset)}/{e(cfg.data.test_split)}</code>, {eps} fixed test "
            f"tasks of {cfg.eval.queries} query points (seed {cfg.eval.seed}); mean ± 95% CI over tasks.</p>"
            f"<table border=1 cellpadding=4><tr><th>K</th><th>inner steps</th><th>MSE</th><th>MAE</th><th>R²</th>"
            f"<th>paper MSE</th></tr>{rows}</table>{imgs}")
    atomic_write_text(folder / "report.html", page)
    atomic_write_text(folder / "evaluation.json", json.dumps(table, indent=1) + "\n")
    return folder / "report.html", figures, table
