"""The `conv1d` backbone for signals: its forward against a direct computation, every episodic learner on it, and
ProtoNet / ANIL (and the transfer baseline) trained, evaluated and used for prediction through the command on a tiny
synthetic .npz of signals."""

import csv
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from metassl.cli.main import main
from metassl.config import ConfigError, resolve
from metassl.data.episodic import Preprocess, TaskBatch
from metassl.engine.build import build_model
from metassl.models import build_backbone

EPISODIC = ["protonet", "matchingnet", "feat", "r2d2", "metaoptnet", "meta_baseline", "maml", "fomaml", "anil",
            "metasgd", "reptile", "boil", "mamlpp", "protomaml"]
GRADIENT = {"maml", "fomaml", "anil", "metasgd", "reptile", "boil", "mamlpp", "protomaml"}


def _cfg(learner="protonet", **model):
    return resolve({"data": {"dataset": "table"}, "learner": {"name": learner},
                    "model": {"backbone": "conv1d", "channels": [4, 6], "track_running_stats": learner not in GRADIENT,
                              **model}, "tasks": {"ways": 3, "shots": 2, "queries": 2}})


def test_forward_matches_the_direct_computation():
    cfg = _cfg(norm="none", kernel=3)
    torch.manual_seed(0)
    enc = build_backbone(cfg.model, 2, (2, 9))
    x = torch.randn(5, 2, 9)
    w = dict(enc.named_parameters())
    h = F.max_pool1d(torch.relu(F.conv1d(x, w["net.0.weight"], w["net.0.bias"], padding=1)), 2)  # length 9 -> 4
    h = F.max_pool1d(torch.relu(F.conv1d(h, w["net.3.weight"], w["net.3.bias"], padding=1)), 2)  # 4 -> 2
    assert torch.allclose(enc(x), h.mean(-1), atol=1e-6) and enc(x).shape == (5, 6)
    # vectors [L] are one channel; a length-1 signal is never pooled below one position
    v = build_backbone(cfg.model, 9, (9,))
    assert v(x[:, 0]).shape == (5, 6)
    assert build_backbone(cfg.model, 1, (1, 1))(torch.randn(3, 1, 1)).shape == (3, 6)
    with pytest.raises(ConfigError, match="conv1d takes signals"):
        build_backbone(cfg.model, 3, (3, 8, 8))


@pytest.mark.parametrize("name", EPISODIC)
def test_every_episodic_learner_runs_on_signals(name):
    torch.manual_seed(0)
    n, k, q = 3, 2, 2
    sx, qx = torch.randn(2, n * k, 2, 16), torch.randn(2, n * q, 2, 16)
    sy = torch.arange(n).repeat_interleave(k).expand(2, -1)
    qy = torch.arange(n).repeat_interleave(q).expand(2, -1)
    m = build_model(_cfg(name), (2, 16), Preprocess())
    out = m.learner.loss(m.params, m.buffers, TaskBatch(sx, sy, qx, qy, n))
    out.loss.backward()
    assert torch.isfinite(out.loss)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for k_, p in m.params.items() if k_.startswith("encoder."))
    with torch.no_grad():
        assert m.predict(sx, sy, qx, n).shape == (2, n * q, n)


def _signals(path, n_per=10, length=32, seed=0):
    """Four classes of noisy sinusoids of different frequencies, 2 channels (sin and cos)."""
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    t = np.arange(length) / length
    for c, f in enumerate((1, 2, 4, 6)):
        for _ in range(n_per):
            ph = rng.uniform(0, 2 * math.pi)
            xs.append(np.stack([np.sin(2 * math.pi * f * t + ph), np.cos(2 * math.pi * f * t + ph)])
                      + 0.1 * rng.normal(size=(2, length)))
            ys.append(f"f{f}")
    np.savez(path, x=np.array(xs), y=np.array(ys))
    return np.array(xs), np.array(ys)


@pytest.mark.parametrize("learner", ["learner={name: protonet}", "learner={name: anil, inner_steps: 2}"])
def test_protonet_and_anil_train_and_predict_on_signals(learner, tmp_path, capsys):
    x, y = _signals(tmp_path / "sig.npz")
    run = tmp_path / "run"
    anil = "anil" in learner
    assert main(["train", "tabular/digits_protonet", "data={dataset: table, "
                 "train_split: train, val_split: null, test_split: test, options: {file: sig.npz, label_column: y, "
                 "classes: {train: [f1, f2], test: [f4, f6]}}}", f"data.root={tmp_path}", "model={backbone: conv1d, channels: [8, 8], "
                 f"track_running_stats: {str(not anil).lower()}}}", learner, "tasks.ways=2", "tasks.shots=2",
                 "tasks.queries=3", "tasks.tasks_per_batch=2", "eval.ways=2", "eval.shots=[2]", "eval.queries=3", "eval.episodes=10",
                 "train.steps=2", "train.progress=false", "train.tensorboard=false", "train.report=false",
                 "--run-dir", str(run), "--eval"]) == 0
    assert "table/test 2-way 2-shot (10 episodes" in capsys.readouterr().out
    test = np.isin(y, ["f4", "f6"])
    np.savez(tmp_path / "s.npz", x=x[test][::5], y=y[test][::5])
    np.savez(tmp_path / "q.npz", x=x[test][1::5], y=np.array(["?"] * len(x[test][1::5])))
    assert main(["predict", str(run), "--support", str(tmp_path / "s.npz"), "--query", str(tmp_path / "q.npz"),
                 "--out", str(tmp_path / "p.csv")]) == 0
    rows = list(csv.reader(open(tmp_path / "p.csv")))
    assert rows[0][:2] == ["row", "predicted"] and len(rows) == 1 + len(x[test][1::5])
    assert {r[1] for r in rows[1:]} <= {"f4", "f6"}


def test_transfer_baseline_trains_on_signals(tmp_path, capsys):
    _signals(tmp_path / "sig.npz")
    assert main(["train", "tabular/digits_protonet", "data={dataset: table, "
                 "train_split: train, val_split: null, test_split: test, options: {file: sig.npz, label_column: y, "
                 "classes: {train: [f1, f2], test: [f4, f6]}}}", f"data.root={tmp_path}", "model={backbone: conv1d, channels: [8]}",
                 "learner={name: baseline}", "tasks={batch_size: 8}", "eval.ways=2", "eval.shots=[2]", "eval.queries=3",
                 "eval.episodes=5", "train.steps=2", "train.progress=false", "train.tensorboard=false",
                 "train.report=false", "--run-dir", str(tmp_path / "run"), "--eval"]) == 0
    assert "table/test 2-way 2-shot" in capsys.readouterr().out
