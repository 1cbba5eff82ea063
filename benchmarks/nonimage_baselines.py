"""Reference rows without meta-training for results/nonimage.md, on the same fixed test episodes / tasks as
`metassl eval` (same protocol and seed, so paired with the trained runs):

- classification (a preset's test split, as its config loads it): nearest class mean, squared Euclidean, on the
  inputs as loaded (digits: the 64 standardized pixel columns; ACSF1: the z-normalized series flattened; text: the
  frozen MiniLM sentence embeddings): what the trained head / backbone has to beat;
- regression (tabular/diabetes_maml): the support targets' mean; ridge regression (alpha 1) fitted on the K support
  rows of each task; ordinary least squares fitted once on all training rows (no adaptation).

    python benchmarks/nonimage_baselines.py --fortunes DIR --acsf1-root DIR > baselines.json

One thread; nothing is trained or downloaded.
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

from metassl.config import load_config
from metassl.data import load_dataset
from metassl.eval import Protocol, evaluate
from metassl.eval.regression import RegressionProtocol, evaluate_regression


def nearest_mean(support_x, support_y, query_x, ways, **_):
    s = support_x.flatten(2).double()
    q = query_x.flatten(2).double()
    onehot = torch.nn.functional.one_hot(support_y, ways).double()  # [T, N*K, N]
    means = onehot.transpose(1, 2) @ s / onehot.sum(1).unsqueeze(-1)
    return -torch.cdist(q, means) ** 2


def classification(preset: str, overrides: list[str], data_root: str | None) -> list[dict]:
    cfg = load_config(preset, overrides)
    split = load_dataset(cfg.data.dataset, cfg.data.test_split, data_root or cfg.data.root,
                         options=dict(cfg.data.options))
    out = []
    for shots in cfg.eval.shots:
        p = Protocol(cfg.data.dataset, cfg.data.test_split, ways=cfg.eval.ways, shots=shots, queries=cfg.eval.queries,
                     episodes=cfg.eval.episodes, seed=cfg.eval.seed)
        r = evaluate(nearest_mean, split, p)
        out.append({"preset": preset, "baseline": "nearest class mean on the inputs", "ways": p.ways, "shots": shots,
                    "queries": p.queries, "episodes": p.episodes, "seed": p.seed, "accuracy": r.accuracy,
                    "ci95": r.ci95})
    return out


def _ridge(x, y, alpha):
    """Ridge with an unpenalized intercept: x [T, K, D], y [T, K, P] -> (w [T, D, P], b [T, 1, P])."""
    mx, my = x.mean(1, keepdim=True), y.mean(1, keepdim=True)
    xc, yc = x - mx, y - my
    eye = torch.eye(x.shape[-1], dtype=x.dtype)
    w = torch.linalg.solve(xc.transpose(1, 2) @ xc + alpha * eye, xc.transpose(1, 2) @ yc)
    return w, my - mx @ w


def regression(preset: str) -> list[dict]:
    cfg = load_config(preset)
    opts = dict(cfg.data.options)
    test = load_dataset(cfg.data.dataset, cfg.data.test_split, cfg.data.root, options=opts)
    train = load_dataset(cfg.data.dataset, cfg.data.train_split, cfg.data.root, options=opts)
    xt, yt = train.x.double().flatten(1), train.y.double()
    w_all, b_all = _ridge(xt[None], yt[None], 1e-8)

    def support_mean(sx, sy, qx, _):
        return sy.double().mean(1, keepdim=True).expand(-1, qx.shape[1], -1)

    def ridge_support(sx, sy, qx, _):
        w, b = _ridge(sx.double().flatten(2), sy.double(), 1.0)
        return qx.double().flatten(2) @ w + b

    def ols_train(sx, sy, qx, _):
        return qx.double().flatten(2) @ w_all + b_all

    out = []
    for k in cfg.eval.shots:
        p = RegressionProtocol(cfg.data.dataset, cfg.data.test_split, k, cfg.eval.queries, cfg.eval.episodes,
                               cfg.eval.seed)
        for name, fn in (("support mean", support_mean), ("ridge (alpha 1) on the K support rows", ridge_support),
                         ("least squares on all training rows, no adaptation", ols_train)):
            r = evaluate_regression(fn, test, p).metrics
            out.append({"preset": preset, "baseline": name, "shots": k, "queries": p.queries,
                        "episodes": p.episodes, "seed": p.seed, "mse": r["mse"]["mean"], "mse_ci95": r["mse"]["ci95"],
                        "mae": r["mae"]["mean"], "r2": r["r2"]["mean"]})
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--fortunes", help="the text folder made by scripts/fortunes_to_text.py (skipped if absent)")
    p.add_argument("--acsf1-root", help="the folder holding acsf1.npz (skipped if absent)")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    rows = classification("tabular/digits_protonet", [], None)
    rows += regression("tabular/diabetes_maml")
    if a.acsf1_root:
        rows += classification("sequences/acsf1_protonet", [f"data.root={a.acsf1_root}"], a.acsf1_root)
    if a.fortunes:
        rows += classification("text/protonet_minilm", [f"data.root={a.fortunes}"], a.fortunes)
    json.dump(rows, sys.stdout, indent=1)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
