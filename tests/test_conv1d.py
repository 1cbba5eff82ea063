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


def _ts_file(path, rows, dims=1):
    lines = ["# a comment", "@problemName Toy", "@univariate " + ("true" if dims == 1 else "false"),
             "@equalLength true", "@classLabel true " + " ".join(sorted({y for _, y in rows})), "@data"]
    lines += [":".join(",".join(f"{v:.4f}" for v in d) for d in x) + f":{y}" for x, y in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def test_ts_files_become_an_npz_the_sequence_presets_train_on(tmp_path, capsys):
    """scripts/ts_to_npz.py (the UCR / aeon .ts format) -> x [M, C, L], y [M]; then both sequences/ presets train
    and evaluate on it through the command (classes 0-4 train, 5-9 test, as for ACSF1)."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("ts_to_npz", Path(__file__).parents[1] / "scripts" / "ts_to_npz.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    rng = np.random.default_rng(0)
    t = np.linspace(0, 1, 24)
    rows = [([np.sin(2 * math.pi * (c + 1) * t) + 0.1 * rng.normal(size=24)], str(c)) for c in range(10) for _ in range(4)]
    _ts_file(tmp_path / "A_TRAIN.ts", rows[::2])
    _ts_file(tmp_path / "A_TEST.ts", rows[1::2])
    assert mod.main([str(tmp_path / "A_TRAIN.ts"), str(tmp_path / "A_TEST.ts"), "--out", str(tmp_path / "acsf1.npz")]) == 0
    d = np.load(tmp_path / "acsf1.npz")
    assert d["x"].shape == (40, 1, 24) and d["x"].dtype == np.float32 and sorted(set(d["y"])) == [str(c) for c in range(10)]
    assert np.allclose(d["x"][0, 0], np.round(rows[0][0][0], 4), atol=1e-4)  # the first train row, as written
    mod.main([str(tmp_path / "A_TRAIN.ts"), "--out", str(tmp_path / "z.npz"), "--znorm"])
    z = np.load(tmp_path / "z.npz")["x"]
    assert np.allclose(z.mean(-1), 0, atol=1e-5) and np.allclose(z.std(-1), 1, atol=1e-4)
    (tmp_path / "bad.ts").write_text("@data\n1,2,?:a\n", encoding="utf-8")
    with pytest.raises(SystemExit, match=r"bad.ts:2: not a number"):
        mod.main([str(tmp_path / "bad.ts"), "--out", str(tmp_path / "b.npz")])
    small = [f"data.root={tmp_path}", "model.channels=[4, 4]", "tasks.queries=1", "eval.shots=[1]", "eval.queries=1",
             "eval.episodes=3", "train.steps=2", "train.progress=false", "train.tensorboard=false", "train.report=false"]
    for preset in ("sequences/acsf1_protonet", "sequences/acsf1_anil"):
        assert main(["train", preset, *small, "--run-dir", str(tmp_path / preset.split("/")[1]), "--eval"]) == 0
        assert "table/test 5-way 1-shot (3 episodes, 1 queries" in capsys.readouterr().out
