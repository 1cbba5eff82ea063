"""PsCo: Sinkhorn pseudo-labels from a momentum queue, the pseudo-supervised contrastive loss, its view source and
its few-shot evaluation."""

from conftest import apply_update
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import make_split

from metassl.config import ConfigError, apply_overrides, resolve
from metassl.data import ClassSplit
from metassl.data.augment import PRESETS, augment, weak_view
from metassl.data.task_sources import make_task_source
from metassl.ssl.psco import pseudo_tasks
from metassl.ssl.losses import pseudo_supcon_loss, sinkhorn


def reference_sinkhorn(scores, epsilon, iterations):
    """SwAV's distributed_sinkhorn with row normalization, written directly (exp, no log space)."""
    q = torch.exp(scores.double() / epsilon)
    b, m = q.shape
    q = q / q.sum()
    for _ in range(iterations):
        q = q / q.sum(0, keepdim=True) / m
        q = q / q.sum(1, keepdim=True) / b
    return q * b


def test_sinkhorn_equals_the_direct_formula_and_rows_are_distributions():
    g = torch.Generator().manual_seed(0)
    scores = F.normalize(torch.randn(6, 5, generator=g), dim=1) @ F.normalize(torch.randn(20, 5, generator=g), dim=1).t()
    for iters in (1, 3, 10):
        p = sinkhorn(scores, 0.05, iters)
        assert torch.allclose(p.double(), reference_sinkhorn(scores, 0.05, iters), rtol=1e-4, atol=1e-7)
        assert torch.allclose(p.sum(1), torch.ones(6), atol=1e-5)
    # more iterations -> columns closer to equal mass (B/M each)
    gap = [float((sinkhorn(scores, 0.05, i).sum(0) - 6 / 20).abs().max()) for i in (1, 30)]
    assert gap[1] < gap[0]
    # small epsilon does not overflow (exp(1/0.001) would)
    assert torch.isfinite(sinkhorn(scores, 1e-3, 3)).all()


def test_pseudo_tasks_find_the_matching_queue_entries():
    g = torch.Generator().manual_seed(1)
    keys = F.normalize(torch.randn(8, 16, generator=g), dim=1)
    perm = torch.randperm(8, generator=g)
    queue = F.normalize(keys[perm] + 0.05 * torch.randn(8, 16, generator=g), dim=1)
    idx, plan = pseudo_tasks(keys, queue, shots=1)
    assert idx.shape == (8, 1) and plan.shape == (8, 8)
    assert torch.equal(perm[idx[:, 0]], torch.arange(8))  # key i's support is its own noisy copy
    with pytest.raises(ConfigError, match="queue_size"):
        pseudo_tasks(keys, queue, shots=9)


def test_pseudo_supcon_loss_equals_the_per_query_formula():
    g = torch.Generator().manual_seed(2)
    n, k, d, t = 4, 3, 8, 0.7
    q = torch.randn(n, d, generator=g, requires_grad=True)
    shots = torch.randn(n, k, d, generator=g)
    loss, acc = pseudo_supcon_loss(q, shots, t)
    qn, s = F.normalize(q, dim=1), F.normalize(shots, dim=2).reshape(n * k, d)
    ref = 0.0
    for i in range(n):
        logits = qn[i] @ s.t() / t
        log_prob = logits - torch.logsumexp(logits, 0)
        ref = ref - log_prob[i * k:(i + 1) * k].mean()
    assert torch.allclose(loss, ref / n, atol=1e-5)
    loss.backward()
    assert q.grad is not None and q.grad.abs().sum() > 0
    # a query equal to its own shots' mean is classified correctly
    perfect, acc = pseudo_supcon_loss(shots.mean(1), shots, t)
    assert float(acc) == 1.0 and float(perfect) < float(loss.detach())


def psco_config(*extra):
    return resolve(apply_overrides({}, ["data.dataset=omniglot", "learner.name=psco", "tasks.batch_size=16",
                                        "learner.queue_size=64", "learner.proj_hidden=32", "learner.proj_dim=16",
                                        "learner.pred_hidden=32", *extra]))


def test_psco_source_makes_a_strong_and_a_weak_view_without_reading_labels():
    split = make_split(num_classes=20, per_class=5, shape=(1, 16, 16))
    cfg = psco_config()

    def sample(s, seed=0):
        return make_task_source(cfg.tasks, s, torch.Generator().manual_seed(seed), "psco", config=cfg).sample()

    b = sample(split)
    assert b.views.shape == (2, 16, 1, 16, 16) and b.indices.shape == (16,)
    assert not torch.equal(b.views[0], b.views[1])
    counts = torch.tensor([37, 13, 50])  # same images, another class structure
    shuffled = ClassSplit(split.images, counts, ["a", "b", "c"], name=split.name)
    assert torch.equal(sample(split, 3).views, sample(shuffled, 3).views)
    # the weak view keeps the geometry and drops colour
    strong = PRESETS["cifar10"]
    weak = weak_view(strong)
    assert weak.crop_scale == strong.crop_scale and weak.flip == strong.flip
    assert weak.jitter == 0 and weak.grayscale == 0 and max(weak.blur) == 0 and max(weak.solarize) == 0
    x = torch.full((4, 3, 8, 8), 0.5)
    assert torch.allclose(augment(x, weak_view(PRESETS["none"]), 1, torch.Generator().manual_seed(0)), x)


def test_psco_source_refuses_other_learners():
    with pytest.raises(ConfigError, match="tasks.source=psco gives .*learner.name=protonet trains on"):
        resolve(apply_overrides({}, ["data.dataset=omniglot", "learner.name=protonet", "tasks.source=psco"]))
    split = make_split(num_classes=20, per_class=5, shape=(1, 16, 16))  # a views learner reaches the source's check
    cfg = resolve(apply_overrides({}, ["data.dataset=omniglot", "learner.name=simclr", "tasks.source=psco"]))
    with pytest.raises(ConfigError, match="only learner.name=psco.*umtra or cactus"):
        make_task_source(cfg.tasks, split, torch.Generator(), config=cfg)


def test_step_enqueues_the_keys_and_moves_the_momentum_network():
    from metassl.data.episodic import Preprocess
    from metassl.data.views import ViewBatch
    from metassl.engine.build import build_model

    cfg = psco_config("model.depth=2", "model.hidden=8")
    model = build_model(cfg, (1, 16, 16), Preprocess())
    views = torch.rand(2, 16, 1, 16, 16)
    before = {k: v.clone() for k, v in model.buffers.items()}
    _out = model.learner.loss(model.params, model.buffers, ViewBatch(views))
    loss, aux = _out.loss, {**_out.metrics, **_out.state}
    assert torch.isfinite(loss) and 0 <= float(aux["pseudo_task_acc"]) <= 1
    assert math.isclose(float(loss.detach()), float(aux["supcon_loss"] + aux["moco_loss"]), rel_tol=1e-5)
    loss.backward()
    with torch.no_grad():
        for p in model.params.values():
            if p.grad is not None:
                p -= 0.1 * p.grad
        apply_update(model, aux, 0, 10)
    q = model.buffers["learner.queue"]
    assert torch.allclose(q[:16], aux["keys"]) and torch.equal(q[16:], before["learner.queue"][16:])
    assert int(model.buffers["learner.queue_ptr"]) == 16
    w = "encoder.features.0.weight"
    target = model.buffers["learner.target." + w]
    expected = 0.99 * before["learner.target." + w] + 0.01 * model.params[w]
    assert torch.allclose(target, expected, atol=1e-6)


def test_supcon_evaluation_uses_running_statistics_in_the_heads():
    from metassl.data.episodic import Preprocess
    from metassl.engine.build import build_model

    cfg = psco_config("model.depth=2", "model.hidden=8")
    model = build_model(cfg, (1, 16, 16), Preprocess())
    model.train(False)
    sx, sy = torch.rand(1, 6, 1, 16, 16), torch.tensor([[0, 0, 1, 1, 2, 2]])
    qx = torch.rand(1, 9, 1, 16, 16)
    with torch.no_grad():
        full = model.predict(sx, sy, qx, 3)
        part = model.predict(sx, sy, qx[:, :4], 3)
    # in eval mode each query is classified on its own (no batch statistics)
    assert full.shape == (1, 9, 3) and torch.allclose(full[:, :4], part, atol=1e-5)


def test_psco_trains_and_evaluates_end_to_end(tmp_path):
    from metassl.engine.evaluate import evaluate_run
    from metassl.engine.trainer import train

    cfg = resolve(apply_overrides({}, [
        "data.dataset=digits", "data.train_split=all", "data.val_split=null", "data.test_split=test",
        "learner.name=psco", "tasks.batch_size=32", "learner.queue_size=128", "learner.proj_hidden=64",
        "learner.proj_dim=32", "learner.pred_hidden=64", "model.backbone=conv4", "model.depth=2", "model.hidden=8",
        "train.steps=12", "train.log_every=4", "train.progress=false", "train.tensorboard=false",
        "train.report=false", "optim.name=sgd", "optim.lr=0.03", "eval.ways=4", "eval.queries=5"]))
    r = train(cfg, tmp_path / "run")
    assert r.steps == 12 and all(math.isfinite(h["loss"]) for h in r.history)
    assert {"supcon_loss", "moco_loss", "pseudo_task_acc"} <= set(r.history[-1])
    kw = dict(shots=[1], episodes=20, progress=False)
    _, _, supcon = evaluate_run(str(tmp_path / "run"), **kw)
    _, _, encoder = evaluate_run(str(tmp_path / "run"), overrides=["learner.eval_head=encoder"], **kw)
    a, b = supcon[0].accuracy, encoder[0].accuracy
    assert 0 < a <= 100 and 0 < b <= 100 and a != b  # two different classifiers of the same checkpoint
    with pytest.raises(ConfigError, match="learner.KEY=VALUE"):
        evaluate_run(str(tmp_path / "run"), overrides=["train.steps=3"], **kw)
    # through the command line: the override is accepted for episodes, refused for the frozen-encoder protocols
    from metassl.cli.main import main

    run = str(tmp_path / "run")
    assert main(["eval", run, "learner.eval_head=encoder", "--shots", "1", "--episodes", "5", "--device", "cpu"]) == 0
    assert main(["eval", run, "learner.eval_head=encoder", "--protocol", "knn", "--device", "cpu"]) == 2
