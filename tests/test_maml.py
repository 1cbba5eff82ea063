"""Gradient-based learners (MAML, first-order MAML, ANIL, Meta-SGD, Reptile): meta-gradients against independent
per-task autograd references and finite differences, the vmap / loop / chunked paths, Reptile's update, and
training + evaluation through the real Trainer and CLI. Tiny models on the CPU."""

import json

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from metassl.config import ConfigError, load_config, list_presets, resolve
from metassl.data import Preprocess, TaskBatch
from metassl.engine.build import build_model
from metassl.engine.logging import read_metrics
from metassl.engine.meta import StepRunner
from metassl.learners.base import sub
from metassl.learners.inner import BatchStatNorm, inner_loop
from metassl.models import build_backbone


pytestmark = pytest.mark.usefixtures("one_thread")


MLP = {"backbone": "mlp", "hidden": [12, 6], "image_size": 4, "norm": "batch", "track_running_stats": False}
CONV = {"backbone": "conv4", "hidden": 4, "depth": 2, "pool": "stride", "flatten": "avg", "track_running_stats": False}


def cfg_for(learner, model=MLP, ways=3, **extra):
    return resolve({"model": model, "learner": {"head_init": "linear", **learner},
                    "tasks": {"ways": ways, "shots": 2, "queries": 2}, "train": {"channels_last": False}, **extra})


def make(learner, model=MLP, ways=3, tasks=5, double=False, seed=0):
    torch.manual_seed(seed)
    cfg = cfg_for(learner, model, ways)
    m = build_model(cfg, (1, 4, 4), Preprocess())
    g = torch.Generator().manual_seed(seed + 1)
    n_s, n_q = ways * 2, ways * 2
    b = TaskBatch(torch.randn(tasks, n_s, 1, 4, 4, generator=g), torch.arange(ways).repeat(2).expand(tasks, n_s),
                  torch.randn(tasks, n_q, 1, 4, 4, generator=g), torch.arange(ways).repeat(2).expand(tasks, n_q), ways)
    if double:
        m.params = {k: v.detach().double().requires_grad_() for k, v in m.params.items()}
        b = b.map_images(lambda x: x.double())
    return m, b


def grads_of(m, loss):
    names = list(m.params)
    gs = torch.autograd.grad(loss, [m.params[k] for k in names], allow_unused=True)
    return {k: (torch.zeros_like(m.params[k]) if g is None else g) for k, g in zip(names, gs)}


def reference_maml(m, params, b, steps, lr, first_order, head_only=False):
    """MAML with plain per-task torch.autograd.grad (create_graph=True unless first order); no torch.func, and a
    freshly built encoder with torch's own BatchNorm (the learners swap in BatchStatNorm)."""
    encoder = build_backbone(m.config.model, 1)
    assert not any(isinstance(x, BatchStatNorm) for x in encoder.modules())

    def forward(p, x):
        z = functional_call(encoder, sub(p, "encoder."), (x,))
        return F.linear(z, p["learner.head.weight"], p["learner.head.bias"])

    total = 0.0
    for t in range(b.num_tasks):
        fast = dict(params)
        names = ["learner.head.weight", "learner.head.bias"] if head_only else list(params)
        for _ in range(steps):
            loss = F.cross_entropy(forward(fast, b.support_x[t]), b.support_y[t])
            gs = torch.autograd.grad(loss, [fast[k] for k in names], create_graph=not first_order)
            for k, g in zip(names, gs):
                fast[k] = fast[k] - lr * (g.detach() if first_order else g)
        total = total + F.cross_entropy(forward(fast, b.query_x[t]), b.query_y[t])
    return total / b.num_tasks


@pytest.mark.parametrize("model", [MLP, CONV], ids=["mlp", "conv"])
@pytest.mark.parametrize("first_order", [False, True])
def test_maml_meta_gradient_matches_autograd_reference(model, first_order):
    m, b = make({"name": "maml", "inner_steps": 2, "inner_lr": 0.3, "first_order": first_order}, model)
    ours = grads_of(m, m.learner.loss(m.params, m.buffers, b).loss)
    ref = grads_of(m, reference_maml(m, m.params, b, 2, 0.3, first_order))
    for k in ours:
        assert torch.allclose(ours[k], ref[k], atol=1e-5, rtol=1e-4), k
    if first_order:  # the detached version really differs from the second-order one
        so = grads_of(m, reference_maml(m, m.params, b, 2, 0.3, False))
        assert max((so[k] - ref[k]).abs().max() for k in so) > 1e-4


def test_fomaml_name_equals_maml_first_order():
    a, b = make({"name": "fomaml", "inner_steps": 2, "inner_lr": 0.3})
    c, _ = make({"name": "maml", "inner_steps": 2, "inner_lr": 0.3, "first_order": True})
    ga, gc = grads_of(a, a.learner.loss(a.params, a.buffers, b).loss), grads_of(c, c.learner.loss(c.params, c.buffers, b).loss)
    assert all(torch.allclose(ga[k], gc[k], atol=1e-6) for k in ga)


def test_anil_meta_gradient_matches_autograd_reference():
    m, b = make({"name": "anil", "inner_steps": 3, "inner_lr": 0.5})
    ours = grads_of(m, m.learner.loss(m.params, m.buffers, b).loss)
    ref = grads_of(m, reference_maml(m, m.params, b, 3, 0.5, False, head_only=True))
    for k in ours:
        assert torch.allclose(ours[k], ref[k], atol=1e-5, rtol=1e-4), k
    assert ours["encoder.net.1.weight"].abs().sum() > 0  # the body learns through the features


@pytest.mark.parametrize("name", ["maml", "metasgd"])
def test_second_order_meta_gradient_matches_finite_differences(name):
    learner = {"name": name, "inner_steps": 2}
    if name == "maml":
        learner["inner_lr"] = 0.4
    m, b = make(learner, double=True)
    loss_fn = lambda p: m.learner.loss(p, m.buffers, b).loss  # noqa: E731
    g = grads_of(m, loss_fn(m.params))
    gen = torch.Generator().manual_seed(3)
    eps = 1e-6
    for _ in range(3):
        v = {k: torch.randn(p.shape, generator=gen, dtype=p.dtype) for k, p in m.params.items()}
        with torch.no_grad():
            plus = loss_fn({k: p + eps * v[k] for k, p in m.params.items()})
            minus = loss_fn({k: p - eps * v[k] for k, p in m.params.items()})
        fd = float((plus - minus) / (2 * eps))
        an = float(sum((g[k] * v[k]).sum() for k in g))
        assert fd == pytest.approx(an, rel=1e-5, abs=1e-8)


@pytest.mark.parametrize("learner", [
    {"name": "maml", "inner_steps": 2, "inner_lr": 0.3},
    {"name": "fomaml", "inner_steps": 1},
    {"name": "anil", "inner_steps": 2},
    {"name": "metasgd", "inner_steps": 1},
    {"name": "reptile", "inner_steps": 3, "inner_optimizer": "sgd", "inner_lr": 0.1},
], ids=lambda d: d["name"])
@pytest.mark.parametrize("model", [MLP, CONV], ids=["mlp", "conv"])
def test_vmap_loop_and_chunked_paths_give_the_same_meta_gradient(learner, model):
    results = {}
    for path, chunk in (("vmap", None), ("loop", None), ("vmap", 3), ("loop", 2)):  # chunks that do not divide 5
        m, b = make({**learner, "path": path, "tasks_per_chunk": chunk}, model, tasks=5)
        runner = StepRunner(m, "cpu", info=lambda *a: None)
        out = runner(b)
        loss, metrics = out.loss, out.metrics
        results[(path, chunk)] = ({k: p.grad.clone() for k, p in m.params.items()}, float(loss),
                                  float(metrics["accuracy"]))
    ref_g, ref_loss, ref_acc = results[("vmap", None)]
    for key, (g, loss, acc) in results.items():
        assert loss == pytest.approx(ref_loss, abs=1e-5), key
        assert acc == pytest.approx(ref_acc, abs=1e-6), key
        for k in ref_g:
            assert torch.allclose(g[k], ref_g[k], atol=1e-5), (key, k, (g[k] - ref_g[k]).abs().max())


@pytest.mark.parametrize("inner_optimizer", ["sgd"])  # the Adam inner loop: tests/test_reptile.py (TF's Adam, carried)
def test_reptile_update_is_interpolation_towards_mean_adapted_weights(inner_optimizer):
    lr_inner, steps, eps = (0.1 if inner_optimizer == "sgd" else 0.01), 3, 0.7
    # no BatchNorm here: it makes the gradient of the bias before it exactly zero in theory, i.e. rounding noise of
    # ~1e-9 in practice, which Adam's normalization turns into full-size steps of either sign
    m, b = make({"name": "reptile", "inner_steps": steps, "inner_lr": lr_inner, "inner_optimizer": inner_optimizer},
                {**MLP, "norm": "none"})
    theta = {k: v.detach().clone() for k, v in m.params.items()}
    # reference: each task adapted by a torch.optim optimizer on a copy of the weights
    phis = []
    for t in range(b.num_tasks):
        p = {k: v.clone().requires_grad_() for k, v in theta.items()}
        opt = (torch.optim.SGD(p.values(), lr=lr_inner) if inner_optimizer == "sgd"
               else torch.optim.Adam(p.values(), lr=lr_inner, betas=(0.0, 0.999), eps=1e-8))
        for _ in range(steps):
            z = functional_call(m.encoder, sub(p, "encoder."), (b.support_x[t],))
            loss = F.cross_entropy(F.linear(z, p["learner.head.weight"], p["learner.head.bias"]), b.support_y[t])
            opt.zero_grad()
            loss.backward()
            opt.step()
        phis.append({k: v.detach() for k, v in p.items()})
    expected = {k: theta[k] + eps * torch.stack([phi[k] - theta[k] for phi in phis]).mean(0) for k in theta}
    # ours: the surrogate loss and one plain SGD step of size eps, as the engine does
    opt = torch.optim.SGD(m.params.values(), lr=eps, momentum=0.0)
    opt.zero_grad()
    loss = StepRunner(m, "cpu", info=lambda *a: None)(b).loss
    opt.step()
    for k in theta:
        assert torch.allclose(m.params[k].detach(), expected[k], atol=1e-5), k


def test_metasgd_learning_rates_receive_gradients():
    m, b = make({"name": "metasgd", "inner_steps": 1})
    lrs = [k for k in m.params if k.startswith("learner.lr.")]
    assert len(lrs) == len(m.params) - len(lrs)  # one rate tensor per adapted tensor
    assert all(m.params[k].shape == m.params[k[len("learner.lr."):]].shape for k in lrs)
    assert all(0.005 <= m.params[k].min().item() and m.params[k].max().item() <= 0.1 for k in lrs)
    g = grads_of(m, m.learner.loss(m.params, m.buffers, b).loss)
    for k in lrs:
        assert torch.isfinite(g[k]).all() and g[k].abs().sum() > 0, k


def test_two_inner_steps_reduce_the_support_loss():
    torch.manual_seed(0)
    x = torch.randn(20, 5)
    y = (x[:, 0] > 0).long()
    params = {"w": torch.zeros(2, 5), "b": torch.zeros(2)}
    forward = lambda p, buf, inp: F.linear(inp, p["w"], p["b"])  # noqa: E731
    before = F.cross_entropy(forward(params, {}, x), y)
    fast1 = inner_loop(forward, params, {}, x, y, 1, 0.5, False)
    fast2 = inner_loop(forward, params, {}, x, y, 2, 0.5, False)
    after1, after2 = (F.cross_entropy(forward(f, {}, x), y) for f in (fast1, fast2))
    assert after2 < after1 < before


def test_bad_settings_are_named():
    with pytest.raises(ConfigError, match="learner.first_order must be one of True"):
        cfg_for({"name": "fomaml", "first_order": False})
    with pytest.raises(ConfigError, match="learner.first_order must be one of True"):
        cfg_for({"name": "reptile", "first_order": False})  # Reptile is first order by nature
    with pytest.raises(ConfigError, match=r"learner.inner_steps must be in \[1, 10000\], got 0"):
        cfg_for({"name": "maml", "inner_steps": 0})
    with pytest.raises(ConfigError, match="model.track_running_stats=false"):
        build_model(cfg_for({"name": "maml"}, {**MLP, "track_running_stats": True}), (1, 4, 4), Preprocess())
    m, b = make({"name": "anil"})
    with pytest.raises(ValueError, match="meta-trained for 3-way tasks.*--ways 3"):
        m.predict(b.support_x, b.support_y, b.query_x, 4)


@pytest.mark.parametrize("path", ["vmap", "loop"])
def test_evaluation_adapts_with_eval_settings(path):
    m, b = make({"name": "maml", "inner_steps": 1, "inner_lr": 0.3, "eval_inner_steps": 4, "eval_inner_lr": 0.1,
                 "path": path})
    logits = m.predict(b.support_x, b.support_y, b.query_x, 3)
    p = {k: v.detach().requires_grad_() for k, v in m.params.items()}
    for t in range(b.num_tasks):
        ref = reference_maml(m, p, TaskBatch(b.support_x[t:t + 1], b.support_y[t:t + 1], b.query_x[t:t + 1],
                                             b.query_y[t:t + 1], 3), 4, 0.1, True)
        assert float(F.cross_entropy(logits[t], b.query_y[t])) == pytest.approx(float(ref.detach()), abs=1e-5)
    assert not logits.requires_grad


def test_presets_have_matching_train_and_eval_ways():
    names = [f"omniglot/{m}_{s}" for m in ("maml", "fomaml", "anil", "metasgd", "reptile") for s in ("5w1s", "20w1s")]
    names += ["omniglot/maml_5w5s", "omniglot/maml_20w5s"]
    assert set(names) <= set(list_presets())
    for p in names:
        cfg = load_config(p)
        assert cfg.eval.ways == cfg.tasks.ways, p
        assert cfg.model.track_running_stats is False, p
        if cfg.learner.name == "reptile":
            assert cfg.optim.name == "sgd" and cfg.optim.momentum == 0.0, p


# ---------------------------------------------------------------------------------------------------------------
# the real Trainer and CLI, on scikit-learn's digits (always available)


def digits_cfg(learner, steps=3, **train):
    from dataclasses import fields

    from metassl.config import TrainConfig

    if "report" in {f.name for f in fields(TrainConfig)}:
        train.setdefault("report", False)  # the end-of-training HTML report is tested elsewhere
    return resolve({
        "name": "t", "data": {"dataset": "digits", "train_split": "train", "val_split": None, "test_split": "test"},
        "tasks": {"ways": 3, "shots": 1, "queries": 3, "tasks_per_batch": 4},
        "model": {"backbone": "mlp", "hidden": [32, 16], "image_size": 8, "norm": "batch",
                  "track_running_stats": False},
        "learner": learner, "optim": {"name": "adam", "lr": 0.003},
        "train": {"steps": steps, "log_every": 1, "val_every": 0, "checkpoint_every": 100, "progress": False,
                  "tensorboard": False, **train},
        "eval": {"ways": 3, "shots": [1], "queries": 3, "episodes": 20, "batch_episodes": 10}})


@pytest.mark.parametrize("learner", [
    {"name": "maml", "inner_lr": 0.4, "path": "vmap"},
    {"name": "fomaml", "inner_lr": 0.4, "path": "loop", "tasks_per_chunk": 3},
    {"name": "anil", "inner_lr": 0.4, "path": "vmap"},
    {"name": "metasgd", "path": "vmap"},
    {"name": "reptile", "inner_steps": 2, "eval_inner_steps": 3, "inner_lr": 0.01, "path": "vmap"},
], ids=lambda d: d["name"])
def test_each_learner_trains_through_the_trainer(learner, tmp_path):
    from metassl.engine.trainer import train

    extra = {"optim": {"name": "sgd", "lr": 0.5, "momentum": 0.0}} if learner["name"] == "reptile" else {}
    cfg = digits_cfg(learner)
    if extra:
        cfg = resolve({**cfg.to_dict(), **extra})
    res = train(cfg, tmp_path / "run", echo=lambda *a: None)
    assert res.steps == 3 and res.final_loss is not None
    rows = [r for r in read_metrics(tmp_path / "run") if r["kind"] == "train"]
    assert len(rows) == 3 and all(r["loss"] == r["loss"] for r in rows)
    assert (tmp_path / "run" / "checkpoints" / "latest").exists()


def test_auto_path_is_timed_and_logged_then_cli_eval_works(tmp_path, capsys):
    from metassl.cli.main import main
    from metassl.engine.trainer import train

    messages = []
    run = tmp_path / "maml"
    cfg = digits_cfg({"name": "maml", "inner_lr": 0.4, "eval_inner_steps": 3, "path": "auto", "amp": "bf16"}, steps=8)
    train(cfg, run, echo=messages.append)
    info = [r for r in read_metrics(run) if r["kind"] == "info"]
    chosen = [r for r in info if r["event"] == "path"]
    assert len(chosen) == 1 and chosen[0]["path"] in ("vmap", "loop") and chosen[0]["step"] == 5
    assert chosen[0]["vmap_s"] > 0 and chosen[0]["loop_s"] > 0
    assert any(r["event"] == "amp" for r in info)  # bf16 requested on CPU: noted, ignored
    assert any("learner.path=auto: using" in m for m in messages)

    capsys.readouterr()
    assert main(["eval", str(run), "--episodes", "20", "--json", "--device", "cpu"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["learner"] == "maml" and out["protocol"]["ways"] == 3 and 0.0 <= out["accuracy"] <= 100.0
    assert main(["eval", str(run), "--episodes", "5", "--ways", "4", "--device", "cpu"]) == 2
    assert "meta-trained for 3-way tasks" in capsys.readouterr().err
