"""One HTML page per run, with PNG figures: learning curves, the evaluation table (95% CIs, the paper's number),
accuracy against shots with CI bands, a confusion matrix over test episodes and a t-SNE map of test-class embeddings.
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

import torch

from ..atomic import atomic_write_path, atomic_write_text
from ..data.episodic import ClassSplit, eval_episodes
from ..engine.build import Model, load_model
from ..engine.evaluate import compare_runs
from ..engine.frozen import load_run_split
from ..engine.logging import plot_learning_curves
from ..engine.provenance import overrides_text, paper_reference, preset_applies
from ..engine.shared_features import SharedFeatures
from ..eval.episodes import Protocol, evaluate
from ..eval.features import embed_images
from ..eval.result import EvalResult

SHOTS = (1, 5, 10, 20)


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    with atomic_write_path(path) as tmp:  # tight: long class names and legends are not cut off
        fig.savefig(tmp, dpi=110, format="png", bbox_inches="tight", pad_inches=0.1)
    _plt().close(fig)
    return path


def shot_sweep(model: Model, split: ClassSplit, ways: int, queries: int, episodes: int, seed: int,
               shots=SHOTS, done: dict[Protocol, EvalResult] | None = None, evaluator: "SharedFeatures | None" = None
               ) -> list[tuple[int, int, EvalResult | None]]:
    """Accuracy at each shot count; queries shrink where a class has too few images (recorded), None if impossible.
    `done`: results already computed (the report's table), reused for the same protocol (the same episodes);
    `evaluator`: evaluates on shared features (`SharedFeatures`)."""
    out = []
    done = done or {}
    smallest = int(torch.sort(split.counts).values[-ways]) if split.num_classes >= ways else 0
    for k in shots:
        q = min(queries, smallest - k)
        if q < 1:
            out.append((k, 0, None))
            continue
        p = Protocol(split.name.split("/")[0], split.name.split("/")[-1], ways, k, q, episodes, seed)
        out.append((k, q, done[p] if p in done else evaluator.evaluate(p, 25) if evaluator else
                    evaluate(model.predict, split, p, model.preprocess, 25)))
    return out


def plot_shots(sweep, path: Path, title: str) -> Path:
    plt = _plt()
    pts = [(k, r) for k, _, r in sweep if r is not None]
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    ks = [k for k, _ in pts]
    acc = [r.accuracy for _, r in pts]
    ci = [r.ci95 for _, r in pts]
    ax.plot(ks, acc, marker="o", color="tab:blue")
    ax.fill_between(ks, [a - c for a, c in zip(acc, ci)], [a + c for a, c in zip(acc, ci)], alpha=0.25,
                    color="tab:blue", label="95% CI")
    for k, q, r in sweep:
        if r is None:
            ax.annotate(f"{k}-shot: too few images", xy=(0.02, 0.04), xycoords="axes fraction", fontsize=8)
    ax.set(xscale="log", xticks=list(SHOTS), xticklabels=[str(s) for s in SHOTS], xlabel="shots (log scale)",
           ylabel="accuracy (%)", title=title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    return _save(fig, path)


def class_confusion(model: Model, split: ClassSplit, ways: int, shots: int, queries: int, episodes: int, seed: int,
                    num_classes: int = 10, evaluator: SharedFeatures | None = None) -> tuple[list[str], torch.Tensor]:
    """Confusion over real test classes: episodes drawn from a fixed subset of `num_classes` classes, each
    prediction counted against the true class identity (not the episode's arbitrary label). `evaluator`: the same
    episodes on shared features."""
    predict, prep = model.predict, model.preprocess
    if evaluator is not None:
        split, predict, prep = evaluator.features, evaluator.predict, (lambda x: x)
    g = torch.Generator().manual_seed(seed)
    eligible = (split.counts >= shots + queries).nonzero().flatten().cpu()
    chosen = eligible[torch.randperm(eligible.numel(), generator=g)[:num_classes]].sort().values
    if evaluator is not None:
        evaluator.ensure_classes(chosen)
    sub = split.subset(chosen.to(split.device), name=split.name + "/report")
    n = min(ways, sub.num_classes)
    conf = torch.zeros(sub.num_classes, sub.num_classes)
    for start in range(0, episodes, 25):
        t = eval_episodes(sub, n, shots, queries, seed, start, min(25, episodes - start))
        b = t.map_images(prep)
        with torch.no_grad():
            logits = predict(b.support_x, b.support_y, b.query_x, n)
        pred = logits.argmax(-1).cpu()
        cls = t.classes.cpu()
        true_c = torch.gather(cls, 1, t.query_y.cpu())
        pred_c = torch.gather(cls, 1, pred)
        conf.index_put_((true_c.flatten(), pred_c.flatten()), torch.ones(true_c.numel()), accumulate=True)
    return sub.class_names, conf


def plot_confusion(names: list[str], conf: torch.Tensor, path: Path, title: str) -> Path:
    plt = _plt()
    rows = conf / conf.sum(1, keepdim=True).clamp_min(1)
    fig, ax = plt.subplots(figsize=(6.4, 5.6))
    im = ax.imshow(rows.numpy(), cmap="Blues", vmin=0, vmax=1)
    short = [n if len(n) <= 40 else "…" + n[-39:] for n in names]  # whole names; the saved figure grows to fit
    ax.set_xticks(range(len(names)), short, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(len(names)), short, fontsize=7)
    for i in range(len(names)):
        for j in range(len(names)):
            v = float(rows[i, j])
            if v >= 0.005:
                ax.text(j, i, f"{100 * v:.0f}", ha="center", va="center", fontsize=6,
                        color="white" if v > 0.5 else "black")
    ax.set(xlabel="predicted class", ylabel="true class", title=title)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of the true class's queries")
    fig.tight_layout()
    return _save(fig, path)


def plot_tsne(model: Model, split: ClassSplit, path: Path, seed: int, num_classes: int = 10, per_class: int = 30,
              features: Callable[[torch.Tensor], torch.Tensor] | None = None) -> Path:
    """`features(rows)`: the stored features of those rows of the split (SharedFeatures.rows), else embedded here."""
    from sklearn.manifold import TSNE

    plt = _plt()
    g = torch.Generator().manual_seed(seed + 1)
    chosen = torch.randperm(split.num_classes, generator=g)[:num_classes].sort().values
    idx, lab = [], []
    for j, c in enumerate(chosen.tolist()):
        o, n = int(split.offsets[c]), int(split.counts[c])
        take = torch.randperm(n, generator=g)[:per_class] + o
        idx.append(take)
        lab += [j] * take.numel()
    take = torch.cat(idx).to(split.device)
    z = features(take) if features is not None else embed_images(model, split.images[take], model.preprocess)
    z = torch.nn.functional.normalize(z, dim=-1).cpu().numpy()
    xy = TSNE(n_components=2, perplexity=min(30, max(5, len(z) // 4)), init="pca", random_state=seed).fit_transform(z)
    fig, ax = plt.subplots(figsize=(6.4, 5.2))
    cmap = plt.get_cmap("tab10" if num_classes <= 10 else "tab20")
    for j, c in enumerate(chosen.tolist()):
        m = [i for i, v in enumerate(lab) if v == j]
        name = split.class_names[c]
        ax.scatter(xy[m, 0], xy[m, 1], s=10, color=cmap(j % cmap.N), label=name if len(name) <= 28 else "…" + name[-27:])
    ax.set(title=f"t-SNE of test-class embeddings ({split.name})", xticks=[], yticks=[])
    ax.legend(fontsize=6, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    fig.tight_layout()
    return _save(fig, path)


@dataclass
class ReportResult:
    html: Path
    figures: list[Path]
    table: list[dict[str, Any]]


def write_report(run: str | Path, data_root: str | None = None, episodes: int | None = None, device: str = "cpu",
                 out: str | Path | None = None, compare_with: list[str | Path] | None = None,
                 transductive: list[str] | None = None, progress: Callable[[str], None] | None = None,
                 share_features: bool = True) -> ReportResult:
    """Evaluate a run on its test split and write `report.html` with its figures into `<run>/report/`.
    `compare_with`: other runs, evaluated on the same episodes as this run's first protocol; the page then shows
    the paired comparison (`metassl compare`) of every run against this one. `transductive`: methods of
    `metassl.eval.transductive`; the page adds their accuracy on the same episodes, paired against the run's own
    (inductive) classifier, in a table of its own that states the query-set size and balance. `progress(phase)` is
    called as each phase starts; `share_features`: evaluate on one embedding of the test split where that gives
    the same results (`SharedFeatures`)."""
    say = progress or (lambda phase: None)
    run = Path(run)
    model, info = load_model(run, torch.device(device))
    cfg = model.config
    run_dir = run if (run / "config.yaml").exists() else Path(info["checkpoint"]).parent.parent
    folder = Path(out) if out else run_dir / "report"
    folder.mkdir(parents=True, exist_ok=True)
    say(f"loading {cfg.data.dataset}/{cfg.data.test_split}")
    split = load_run_split(model, data_root=data_root)
    if getattr(split, "task_type", "") == "regression":  # few-shot regression (issue 18): its own page
        from .regression import regression_report

        page, figs, rtable = regression_report(run, run_dir, split, folder, device, episodes, info)
        return ReportResult(page, figs, rtable)
    eps = episodes or cfg.eval.episodes
    ways = min(cfg.eval.ways, split.num_classes)
    figures, table = [], []
    curves = plot_learning_curves(run_dir, folder / "learning_curves.png")
    if curves:
        figures.append(curves)
    protocols = [Protocol(cfg.data.dataset, cfg.data.test_split, ways, k, cfg.eval.queries, eps, cfg.eval.seed,
                          cfg.eval.unlabeled, cfg.eval.distractors) for k in cfg.eval.shots]
    shared = None
    if share_features:
        say("embedding the test images the report reads, once")
        shared = SharedFeatures.build(model, split, protocols[0], cfg.eval.batch_episodes)
        if shared is None:
            say(f"{cfg.learner.name} does not classify stored features the same way: every episode's images are "
                f"embedded")
    done: dict[Protocol, EvalResult] = {}
    for p in protocols:
        say(f"evaluating {p.ways}-way {p.shots}-shot ({eps} episodes)")
        r = (shared.evaluate(p, cfg.eval.batch_episodes) if shared else
             evaluate(model.predict, split, p, model.preprocess, cfg.eval.batch_episodes))
        done[p] = r
        table.append({**r.to_dict(), "paper_accuracy": paper_reference(cfg, model.origin, r.protocol)})
    say(f"accuracy against shots ({', '.join(map(str, SHOTS))})")
    sweep = shot_sweep(model, split, ways, cfg.eval.queries, eps, cfg.eval.seed, done=done, evaluator=shared)
    figures.append(plot_shots(sweep, folder / "accuracy_vs_shots.png",
                              f"{ways}-way accuracy against shots ({eps} episodes each)"))
    say("confusion matrix")
    names, conf = class_confusion(model, split, ways, min(cfg.eval.shots), min(cfg.eval.queries, 5), eps,
                                  cfg.eval.seed, evaluator=shared)
    figures.append(plot_confusion(names, conf, folder / "confusion.png",
                                  f"Confusion over {len(names)} test classes ({eps} episodes)"))
    say("t-SNE map")
    figures.append(plot_tsne(model, split, folder / "tsne.png", cfg.eval.seed,
                             features=shared.rows if shared else None))
    if getattr(model.learner, "generative", False):  # vae, gan: samples from the prior and interpolations
        from ..engine.generative import generative_figures

        say("samples and interpolations")
        figures += generative_figures(model, folder)
    comparison = []
    if compare_with:
        say(f"comparing with {len(compare_with)} other run(s)")
        p = table[0]["protocol"]
        comparison = [c.to_dict() for c in compare_runs(
            [run, *compare_with], p["dataset"], p["split"], p["ways"], p["shots"], p["queries"], p["episodes"],
            p["seed"], data_root, device=device)]
        atomic_write_text(folder / "comparison.json", json.dumps(comparison, indent=1) + "\n")
    transductive_rows = []
    if transductive:
        say(f"transductive methods ({', '.join(transductive)})")
        p = table[0]["protocol"]
        transductive_rows = [c.to_dict() for c in compare_runs(
            [run] * (1 + len(transductive)), p["dataset"], p["split"], p["ways"], p["shots"], p["queries"],
            p["episodes"], p["seed"], data_root, device=device, transductive=[None, *transductive],
            unlabeled=p.get("unlabeled", 0), distractors=p.get("distractors", 0))]
        atomic_write_text(folder / "transductive.json", json.dumps(transductive_rows, indent=1) + "\n")
    say("writing the page")
    page = _html(cfg, info, table, sweep, figures, folder, comparison, transductive_rows, model.origin)
    atomic_write_text(folder / "report.html", page)
    atomic_write_text(folder / "evaluation.json", json.dumps(table, indent=1) + "\n")
    return ReportResult(folder / "report.html", figures, table)


def _num(v: float | None, spec: str) -> str:
    """A number of `EvalResult.to_dict()`; None (not defined, e.g. the CI of a single episode) as a dash."""
    return "—" if v is None else format(v, spec)


def _comparison_html(rows: list[dict]) -> str:
    if not rows:
        return ""
    e = html.escape
    p = rows[0]["protocol"]
    body = []
    for r in rows:
        c = r["paired_vs_first"]
        vs = "<td colspan=4>reference</td>" if c is None else (
            f"<td>{c['mean_difference']:+.2f} ± {c['ci95']:.2f}</td><td>{c['wins']}/{c['losses']}</td>"
            f"<td>{c['t_pvalue']:.2g}</td><td>{c['wilcoxon_pvalue']:.2g}</td>")
        body.append(f"<tr><td><code>{e(r['run'])}</code></td><td>{e(r['learner'])}</td><td>{r['step']}</td>"
                    f"<td><b>{r['accuracy']:.2f} ± {_num(r['ci95'], '.2f')}</b></td>{vs}</tr>")
    return (f"<h2>Paired comparison ({e(p['dataset'])}/{e(p['split'])} {p['ways']}-way {p['shots']}-shot, "
            f"{p['episodes']} episodes, the same for every run)</h2>\n<p>Against the first run: the mean per-episode "
            f"difference in points with its 95% CI (Student's t), episodes won/lost, the paired t-test's and the "
            f"Wilcoxon signed-rank test's p-values.</p>\n<table><tr><th>run</th><th>learner</th><th>steps</th>"
            f"<th>accuracy (%)</th><th>difference</th><th>wins/losses</th><th>t-test p</th><th>Wilcoxon p</th></tr>"
            f"{''.join(body)}</table>")


def _transductive_html(rows: list[dict]) -> str:
    if not rows:
        return ""
    e = html.escape
    p = rows[0]["protocol"]
    body = []
    for r in rows:
        c, q = r["paired_vs_first"], r["protocol"]
        name = q.get("transductive") or "inductive (the run's classifier)"
        vs = "<td colspan=2>reference</td>" if c is None else (
            f"<td>{c['mean_difference']:+.2f} ± {c['ci95']:.2f}</td><td>{c['wins']}/{c['losses']}</td>")
        body.append(f"<tr><td>{e(name)}</td><td><b>{r['accuracy']:.2f} ± {_num(r['ci95'], '.2f')}</b></td>{vs}</tr>")
    return (f"<h2>Transductive inference ({e(p['dataset'])}/{e(p['split'])} {p['ways']}-way {p['shots']}-shot, "
            f"{p['episodes']} episodes)</h2>\n<p>Each method classifies an episode's {p['ways'] * p['queries']} "
            f"query images together (balanced: {p['queries']} per class), so these accuracies depend on the "
            f"query set's size and balance and are not comparable with inductive numbers of other protocols. "
            f"Differences are paired against the run's own classifier on the same episodes.</p>\n<table><tr>"
            f"<th>method</th><th>accuracy (%)</th><th>difference</th><th>wins/losses</th></tr>{''.join(body)}"
            f"</table>")


def _html(cfg, info, table, sweep, figures, folder: Path, comparison: list[dict] | None = None,
          transductive_rows: list[dict] | None = None, origin: dict | None = None) -> str:
    e = html.escape
    # the preset's name and description describe its own data; a run moved to other data says so
    own = preset_applies(cfg, origin)
    preset = (origin or {}).get("config") or cfg.name
    title = cfg.name if own else f"{cfg.name} (preset {preset}) trained on {cfg.data.dataset}"
    about = (e(cfg.description) if own else
             f"A run of the preset <code>{e(preset)}</code> moved to other data (<code>{e(cfg.data.dataset)}</code>"
             f"{'' if not cfg.data.options else f', options <code>{e(str(dict(cfg.data.options)))}</code>'}): "
             f"the preset's description and paper numbers are about its own data set and are not shown.")
    command, origin = overrides_text(origin), origin or {}
    if command:
        listed = ", ".join(f"<code>{e(o)}</code>" for o in origin.get("overrides", [])) or "none"
        root = f"; data root <code>{e(origin['data_root'])}</code>" if origin.get("data_root") else ""
        started = f"<p>Trained as <code>metassl train {e(command)}</code> (overrides: {listed}){root}.</p>"
    else:
        started = ("<p>The config and overrides this run started from were not recorded (a run made before they "
                   "were, or from the Python API); its config is in config.yaml.</p>")
    rows = "".join(
        f"<tr><td>{e(r['protocol']['dataset'])}/{e(r['protocol']['split'])}</td><td>{r['protocol']['ways']}-way "
        f"{r['protocol']['shots']}-shot</td><td>{r['protocol']['episodes']}</td><td><b>{r['accuracy']:.2f} ± "
        f"{_num(r['ci95'], '.2f')}</b></td><td>{'' if r['paper_accuracy'] is None else r['paper_accuracy']}</td>"
        f"<td>{_num(r['f1'], '.3f')}</td><td>{_num(r['roc_auc'], '.3f')}</td></tr>" for r in table)
    sweep_rows = "".join(
        f"<tr><td>{k}</td><td>{q if r else '—'}</td><td>{f'{r.accuracy:.2f} ± {r.ci95:.2f}' if r else 'too few images per class'}</td></tr>"
        for k, q, r in sweep)
    # the learning curves are wide (several panels): full width; the other figures side by side
    imgs = "".join(f'<figure{" class=wide" if p.stem == "learning_curves" else ""}><img src="{e(p.name)}" '
                   f'alt="{e(p.stem)}"><figcaption>{e(p.stem.replace("_", " "))}</figcaption></figure>'
                   for p in figures)
    env = info.get("environment", {})
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>metassl report: {e(title)}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}}
table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #ccc;padding:.3em .7em;text-align:right}}
th{{background:#f3f3f3}}td:first-child,th:first-child{{text-align:left}}figure{{display:inline-block;margin:.5em}}
img{{max-width:520px;border:1px solid #ddd}}figure.wide{{display:block}}figure.wide img{{max-width:100%}}code{{background:#f6f6f6;padding:0 .3em}}</style></head><body>
<h1>{e(title)}</h1>
<p>{about}</p>
{started}
<p>Learner <code>{e(cfg.learner.name)}</code>, backbone <code>{e(cfg.model.backbone)}</code>, data set
<code>{e(cfg.data.dataset)}</code> (train split <code>{e(cfg.data.train_split)}</code>), {info['step']} steps.
Checkpoint <code>{e(info['checkpoint'])}</code>; torch {e(str(env.get('torch', '?')))} on
{e(str(env.get('device_name', '?')))}. Written {datetime.now().isoformat(timespec='seconds')}.</p>
<h2>Evaluation (mean ± 95% CI over episodes)</h2>
<table><tr><th>split</th><th>protocol</th><th>episodes</th><th>accuracy (%)</th><th>paper (%)</th><th>macro F1</th>
<th>ROC-AUC</th></tr>{rows}</table>
{_comparison_html(comparison or [])}
{_transductive_html(transductive_rows or [])}
<h2>Accuracy against shots</h2>
<table><tr><th>shots</th><th>queries per class</th><th>accuracy (%)</th></tr>{sweep_rows}</table>
<h2>Figures</h2>{imgs}
</body></html>
"""
