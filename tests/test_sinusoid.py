"""Few-shot regression on sinusoids (Finn et al. 2017, sec. 5.1): the task source's distributions, fixed test tasks,
the regression meta-gradients of MAML / Meta-SGD / ANIL and Reptile's update against direct computations, the
pretrained baseline, the regression metrics, and the whole path through the `metassl` command."""

import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from metassl.cli.main import main
from metassl.config import ConfigError, load_config
from metassl.data.episodic import TaskBatch
from metassl.data.loaders.sinusoid import SinusoidSplit
from metassl.data.registry import load_dataset
from metassl.engine.build import build_model
from metassl.eval.regression import task_errors

SMALL = ["train.steps=2", "train.val_every=2", "train.val_episodes=4", "train.progress=false",
         "train.tensorboard=false", "train.report=false", "eval.episodes=6", "eval.queries=5",
         "tasks.tasks_per_batch=3", "model.hidden=[8,8]"]


def test_sinusoid_tasks_follow_the_papers_distributions():
    s = SinusoidSplit("sinusoid/train")
    g = torch.Generator().manual_seed(0)
    p = s.draw_params(20000, g, torch.device("cpu"))
    amp, phase = p["amplitude"].flatten(), p["phase"].flatten()
    assert 0.1 <= float(amp.min()) and float(amp.max()) <= 5.0
    assert 0.0 <= float(phase.min()) and float(phase.max()) <= math.pi
    assert abs(float(amp.mean()) - 2.55) < 0.05 and abs(float(phase.mean()) - math.pi / 2) < 0.03
    x = s.draw_inputs(2000, 10, g, torch.device("cpu"))
    assert -5 <= float(x.min()) and float(x.max()) <= 5
    assert abs(float(x.mean())) < 0.05 and abs(float(x.var()) - 100 / 12) < 0.15
    # a batch of tasks: K support + Q query points of y = A sin(x - phase), the targets from the formula
    torch.manual_seed(0)
    b = s.sample(5, 7, 4, torch.Generator().manual_seed(1))
    assert b.support_x.shape == (4, 5, 1) and b.query_y.shape == (4, 7, 1) and b.ways is None
    g1 = torch.Generator().manual_seed(1)
    pp = s.draw_params(4, g1, torch.device("cpu"))
    xx = s.draw_inputs(4, 12, g1, torch.device("cpu"))
    for t in range(4):
        for i in range(12):
            want = float(pp["amplitude"][t, 0, 0]) * math.sin(float(xx[t, i, 0]) - float(pp["phase"][t, 0, 0]))
            got = b.support_y[t, i, 0] if i < 5 else b.query_y[t, i - 5, 0]
            assert abs(float(got) - want) < 1e-5


def test_fixed_test_tasks_are_a_pure_function_of_their_identity():
    s = load_dataset("sinusoid", "test")
    a = s.fixed_tasks(10, 20, 0, 0, 8)
    b1, b2 = s.fixed_tasks(10, 20, 0, 0, 3), s.fixed_tasks(10, 20, 0, 3, 5)
    assert torch.equal(a.support_x, torch.cat([b1.support_x, b2.support_x]))
    assert torch.equal(a.query_y, torch.cat([b1.query_y, b2.query_y]))
    assert torch.equal(a.query_y, load_dataset("sinusoid", "test").fixed_tasks(10, 20, 0, 0, 8).query_y)
    assert not torch.equal(a.support_x, s.fixed_tasks(10, 20, 1, 0, 8).support_x)  # another seed
    assert not torch.equal(a.support_x, load_dataset("sinusoid", "val").fixed_tasks(10, 20, 0, 0, 8).support_x)


def _tasks(n=3, k=5, q=6, seed=1):
    s = SinusoidSplit("sinusoid/train")
    return s.sample(k, q, n, torch.Generator().manual_seed(seed))


def _mlp(params, x):
    h = torch.relu(x @ params["encoder.net.1.weight"].t() + params["encoder.net.1.bias"])
    h = torch.relu(h @ params["encoder.net.3.weight"].t() + params["encoder.net.3.bias"])
    return h @ params["learner.head.weight"].t() + params["learner.head.bias"]


def _model(learner, *extra):
    cfg = load_config(f"sinusoid/{learner}_k10", ["model.hidden=[8,8]", "learner.path=loop", *extra])
    torch.manual_seed(0)
    return build_model(cfg, (1,), SinusoidSplit("s").preprocess)


def _direct_maml(params, tasks, lr_of, adapted):
    """Finn et al.'s objective written out: per task one SGD step on the support MSE (step lr_of(name)), only the
    `adapted` names move, then the query MSE at the fast weights; second order; mean over tasks."""
    losses = []
    for t in range(tasks.num_tasks):
        inner = F.mse_loss(_mlp(params, tasks.support_x[t]), tasks.support_y[t])
        names = [k for k in params if adapted(k)]
        grads = torch.autograd.grad(inner, [params[k] for k in names], create_graph=True)
        fast = dict(params)
        fast.update({k: params[k] - lr_of(k) * g for k, g in zip(names, grads)})
        losses.append(F.mse_loss(_mlp(fast, tasks.query_x[t]), tasks.query_y[t]))
    return torch.stack(losses).mean()


@pytest.mark.parametrize("name", ["maml", "metasgd", "anil"])
def test_regression_meta_gradient_matches_the_direct_computation(name):
    tasks = _tasks()
    if name == "anil":
        m = _model("maml", "learner.name=anil")
    else:
        m = _model(name)
    params = {k: v for k, v in m.params.items()}
    if name == "metasgd":  # elementwise learned step sizes, themselves differentiated
        lr_of, adapted = (lambda k: params["learner.lr." + k]), (lambda k: not k.startswith("learner.lr."))
    elif name == "anil":
        lr_of, adapted = (lambda k: 0.01), (lambda k: k.startswith("learner.head"))
    else:
        lr_of, adapted = (lambda k: 0.01), (lambda k: True)
    for path in ("loop", "vmap"):
        learner = m.learner.with_options(path=path)
        out = learner.loss(params, m.buffers, tasks)
        assert set(out.metrics) == {"loss", "mse"}
        ref = _direct_maml(params, tasks, lr_of, adapted)
        assert torch.allclose(out.loss, ref, atol=1e-6)
        ours = torch.autograd.grad(out.loss, list(params.values()), allow_unused=True)
        want = torch.autograd.grad(ref, list(params.values()), allow_unused=True)
        for k, a, b in zip(params, ours, want):
            a = torch.zeros_like(params[k]) if a is None else a
            b = torch.zeros_like(params[k]) if b is None else b
            assert torch.allclose(a, b, atol=1e-5, rtol=1e-4), (name, path, k)


def test_reptile_on_regression_moves_towards_the_adapted_weights():
    tasks = _tasks()
    m = _model("reptile", "learner.inner_steps=3")
    params = m.params
    out = m.learner.loss(params, m.buffers, tasks)
    grads = torch.autograd.grad(out.loss, list(params.values()))
    # phi_i: 3 plain SGD steps (lr 0.01) on task i's support MSE, written out; gradient of the surrogate = theta - mean phi
    phis = []
    for t in range(tasks.num_tasks):
        p = {k: v.detach().clone().requires_grad_() for k, v in params.items()}
        for _ in range(3):
            loss = F.mse_loss(_mlp(p, tasks.support_x[t]), tasks.support_y[t])
            g = torch.autograd.grad(loss, list(p.values()))
            p = {k: (v - 0.01 * gk).detach().requires_grad_() for (k, v), gk in zip(p.items(), g)}
        phis.append(p)
    for (k, v), gk in zip(params.items(), grads):
        mean_phi = torch.stack([ph[k].detach() for ph in phis]).mean(0)
        assert torch.allclose(gk, v.detach() - mean_phi, atol=1e-6), k
    assert "mse" in out.metrics


def test_pretrained_baseline_regresses_on_all_points_then_fine_tunes():
    tasks = _tasks()
    m = _model("pretrained", "learner.eval_inner_steps=2", "learner.eval_inner_lr=0.05")
    params = m.params
    out = m.learner.loss(params, m.buffers, tasks)
    x = torch.cat([tasks.support_x, tasks.query_x], 1).reshape(-1, 1)
    y = torch.cat([tasks.support_y, tasks.query_y], 1).reshape(-1, 1)
    assert torch.allclose(out.loss, ((_mlp(params, x) - y) ** 2).mean(), atol=1e-6)
    with torch.no_grad():
        pred = m.predict(tasks.support_x, tasks.support_y, tasks.query_x, None)
    for t in range(tasks.num_tasks):  # two SGD steps of 0.05 on the support MSE, from the trained weights
        p = {k: v.detach().clone().requires_grad_() for k, v in params.items()}
        for _ in range(2):
            g = torch.autograd.grad(F.mse_loss(_mlp(p, tasks.support_x[t]), tasks.support_y[t]), list(p.values()))
            p = {k: (v - 0.05 * gk).detach().requires_grad_() for (k, v), gk in zip(p.items(), g)}
        assert torch.allclose(pred[t], _mlp(p, tasks.query_x[t]), atol=1e-5)
    with pytest.raises(ValueError, match="baseline"):
        m.learner.loss(params, m.buffers, TaskBatch(tasks.support_x, tasks.support_y[..., 0].long(), tasks.query_x,
                                                    tasks.query_y[..., 0].long(), 2))


def test_regression_metrics_match_their_formulas():
    g = torch.Generator().manual_seed(0)
    pred, target = torch.randn(4, 6, 2, generator=g), torch.randn(4, 6, 2, generator=g)
    target[3] = 1.5  # constant targets: no R²
    e = task_errors(pred, target)
    for t in range(4):
        d = [(float(pred[t, q, p]) - float(target[t, q, p])) for q in range(6) for p in range(2)]
        assert abs(float(e["mse"][t]) - sum(v * v for v in d) / 12) < 1e-9
        assert abs(float(e["mae"][t]) - sum(abs(v) for v in d) / 12) < 1e-9
        mean = [sum(float(target[t, q, p]) for q in range(6)) / 6 for p in range(2)]
        sst = sum((float(target[t, q, p]) - mean[p]) ** 2 for q in range(6) for p in range(2))
        if t < 3:
            assert abs(float(e["r2"][t]) - (1 - sum(v * v for v in d) / sst)) < 1e-9
        else:
            assert math.isnan(float(e["r2"][t]))


def test_train_eval_through_the_command(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "sinusoid/maml_k10", *SMALL, "--run-dir", str(run), "--eval"]) == 0
    out = capsys.readouterr().out
    assert "10-shot regression (6 tasks, 5 query points" in out and "MSE" in out
    # beside it, the paper's: Finn et al. give only curves, and the line says so rather than printing nothing
    assert "(paper: unchecked: Finn et al. 2017 give sinusoid MSE only as curves (Figure 3)" in out
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    val = [r for r in rows if r["kind"] == "val"]
    assert val and "mse" in val[0] and "accuracy" not in val[0]
    # an evaluation-time override: 10 inner steps, recorded in the protocol and its tag
    assert main(["eval", str(run), "learner.eval_inner_steps=10", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["protocol"]["name"] == "regression" and res["protocol"]["inner_steps"] == 10
    assert res["mse"] > 0 and res["metrics"]["mse"]["ci95"] > 0 and "r2" in res and "top1" not in res
    assert main(["eval", str(run), "--json", "--shots", "5"]) == 0
    assert json.loads(capsys.readouterr().out)["protocol"]["shots"] == 5


@pytest.mark.parametrize("preset", ["reptile_k10", "metasgd_k10", "pretrained_k10", "maml_k5", "maml_k20"])
def test_every_regression_preset_trains_two_steps(preset, tmp_path, capsys):
    assert main(["train", f"sinusoid/{preset}", *SMALL, "--run-dir", str(tmp_path / "r"), "--eval"]) == 0
    assert "regression" in capsys.readouterr().out


@pytest.mark.parametrize("args, match", [
    (["learner.name=protonet", "model.hidden=[8,8]"], "learner.name=protonet classifies.*maml"),
    (["tasks.source=auto", "tasks.ways=5"], "tasks.source=regression"),
    (["data.train_fraction=0.5"], "data.train_fraction"),
])
def test_regression_refuses_what_cannot_regress(args, match, tmp_path):
    from metassl.engine.trainer import train

    raw = ["train.steps=1", "train.progress=false", "train.report=false", "train.tensorboard=false"]
    if args[0].startswith("learner.name=protonet"):  # protonet has no inner-loop keys: a fresh learner section
        cfg = load_config("sinusoid/maml_k10", ["learner={name: protonet}", *raw, *args[1:]])
    else:
        cfg = load_config("sinusoid/maml_k10", [*raw, *args])
    with pytest.raises(ConfigError, match=match):
        train(cfg, tmp_path / "r")


def test_the_regression_only_baseline_refuses_a_classification_data_set(tmp_path):
    from metassl.config import apply_overrides, resolve
    from metassl.engine.trainer import train

    cfg = resolve(apply_overrides({}, ["learner.name=pretrained", "data.dataset=digits", "data.train_split=train",
                                       "data.val_split=null", "model.backbone=mlp", "model.hidden=[8]",
                                       "tasks.ways=3", "tasks.shots=1", "tasks.queries=1", "train.steps=1",
                                       "train.progress=false", "train.report=false", "train.tensorboard=false"]))
    with pytest.raises(ConfigError, match="learner.name=pretrained regresses.*data.dataset=digits.*baseline"):
        train(cfg, tmp_path / "r")
    assert not (tmp_path / "r" / "model.safetensors").exists()


def test_regression_source_refuses_a_classification_data_set():
    from metassl.data.regression import RegressionTasks

    with pytest.raises(ConfigError, match="tasks.source=regression needs a regression data set"):
        RegressionTasks(load_config("sinusoid/maml_k10").tasks, load_dataset("digits", "train"),
                        torch.Generator())


def test_image_backbone_refuses_vector_inputs():
    cfg = load_config("sinusoid/maml_k10", ["model={backbone: conv4, track_running_stats: false}"])
    with pytest.raises(ConfigError, match="model.backbone=conv4 takes images.*mlp"):
        build_model(cfg, (1,), SinusoidSplit("s").preprocess)


def test_the_paper_network_is_1_40_40_1():
    m = _model("maml", "model.hidden=[40,40]")
    shapes = {k: tuple(v.shape) for k, v in m.params.items()}
    assert shapes == {"encoder.net.1.weight": (40, 1), "encoder.net.1.bias": (40,), "encoder.net.3.weight": (40, 40),
                      "encoder.net.3.bias": (40,), "learner.head.weight": (1, 40), "learner.head.bias": (1,)}
    relus = [mod for mod in m.encoder.modules() if isinstance(mod, nn.ReLU)]
    assert len(relus) == 2
