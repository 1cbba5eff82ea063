"""The transfer family: Baseline / Baseline++ (Chen et al. 2019), SimpleShot (Wang et al. 2019), Meta-Baseline (Chen et
al. 2021). Classifier heads and episode classifiers against direct computations and torch.optim.SGD / weight_norm
references on tiny tensors, SimpleShot's base mean after a real Trainer run, the init_from rules, 2-step Trainer
runs + evaluate_run on digits, presets."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from metassl.config import ConfigError, apply_overrides, load_config, resolve
from metassl.data import Preprocess, TaskBatch, load_dataset
from metassl.data.classes import ClassBatch
from metassl.engine.build import build_model, load_model
from metassl.engine.checkpoint import find_checkpoint, load_checkpoint
from metassl.engine.evaluate import evaluate_run
from metassl.engine.trainer import train
from metassl.eval.features import embed_images
from metassl.learners.base import sub
from metassl.learners.baseline import (SGDSettings, cosine_logits, cosine_scale, fit_classifier, linear_init,
                                       linear_logits, support_seed)
from metassl.learners.meta_baseline import TEMPERATURE
from metassl.learners.simpleshot import BASE_MEAN
from metassl.models import build_backbone

pytestmark = pytest.mark.usefixtures("one_thread")

MLP = {"backbone": "mlp", "hidden": [12, 6], "image_size": 4}
DIGITS = ["data.dataset=digits", "data.train_split=train", "data.val_split=null", "data.test_split=test",
          "model.backbone=conv4", "model.hidden=8", "model.depth=2", "train.progress=false",
          "train.tensorboard=false", "train.report=false", "eval.ways=3", "eval.shots=[1]", "eval.queries=3",
          "eval.episodes=12", "eval.batch_episodes=6"]
CLASSES = ["tasks.batch_size=16"]


def tiny(learner: dict, classes: int = 5, tasks: dict | None = None):
    """A model on 1x4x4 inputs with an MLP encoder (BatchNorm with running statistics, evaluation mode)."""
    torch.manual_seed(0)
    cfg = resolve({"model": MLP, "learner": learner,
                   "tasks": tasks or {"source": "classes", "batch_size": 8, "num_classes": classes}})
    m = build_model(cfg, (1, 4, 4), Preprocess())
    m.train(False)
    return m


def episodes(tasks=3, ways=3, shots=(2, 3, 1), queries=2, seed=1, dtype=torch.float32):
    """Support sets of unequal counts per class, shuffled (S = 6: one mini-batch of 4 and one of 2)."""
    g = torch.Generator().manual_seed(seed)
    sy = torch.tensor([c for c in range(ways) for _ in range(shots[c])])
    sy = torch.stack([sy[torch.randperm(len(sy), generator=g)] for _ in range(tasks)])
    qy = torch.arange(ways).repeat(queries).expand(tasks, -1)
    return TaskBatch(torch.randn(tasks, sy.shape[1], 1, 4, 4, generator=g, dtype=dtype), sy,
                     torch.randn(tasks, qy.shape[1], 1, 4, 4, generator=g, dtype=dtype), qy, ways)


# ---------------------------------------------------------------------------------------------------------------
# Baseline / Baseline++: classifiers


def test_cosine_logits_match_direct_formula_and_weight_norm_linear():
    g = torch.Generator().manual_seed(0)
    z, v, gn = (torch.randn(7, 5, generator=g, dtype=torch.float64), torch.randn(4, 5, generator=g,
                dtype=torch.float64), torch.rand(4, generator=g, dtype=torch.float64) + 0.5)
    out = cosine_logits(z, v, gn, 10.0)
    direct = torch.tensor([[10.0 * float(gn[c]) * float(z[i] @ v[c]) / (float(v[c].norm()) * (float(z[i].norm())
                            + 1e-5)) for c in range(4)] for i in range(7)], dtype=torch.float64)
    assert torch.allclose(out, direct, atol=1e-10)
    # the reference's distLinear: a weight-normalised nn.Linear without bias on x / (||x|| + 1e-5), times s
    lin = nn.utils.parametrizations.weight_norm(nn.Linear(5, 4, bias=False).double(), dim=0)
    with torch.no_grad():
        lin.parametrizations.weight.original0.copy_(gn[:, None])
        lin.parametrizations.weight.original1.copy_(v)
    ref = 10.0 * lin(z / (z.norm(dim=1, keepdim=True) + 1e-5))
    assert torch.allclose(out, ref, atol=1e-10)
    # plain cosine without the learnable norm; batched [T, ...] episodes like single ones
    assert torch.allclose(cosine_logits(z, v, None, 1.0), F.cosine_similarity(z[:, None], v[None], dim=-1),
                          atol=1e-5)
    zb, vb, gb = z.reshape(1, 7, 5).expand(3, -1, -1), v.expand(3, -1, -1), gn.expand(3, -1)
    assert torch.allclose(cosine_logits(zb, vb, gb, 10.0), out.expand(3, -1, -1), atol=1e-12)
    assert cosine_scale(200) == 2.0 and cosine_scale(201) == 10.0


def test_baseline_pp_training_logits_and_scale_follow_the_number_of_classes():
    for classes, scale in ((5, 2.0), (201, 10.0)):
        m = tiny({"name": "baseline_pp"}, classes)
        v, gn = m.params["learner.head.weight_v"], m.params["learner.head.weight_g"]
        assert v.shape == (classes, 6) and torch.allclose(gn, v.norm(dim=1))  # weight_norm's initialization
        x = torch.randn(9, 1, 4, 4)
        z = m.learner.embed(m.params, m.buffers, x)
        ref = scale * gn * ((z / (z.norm(dim=1, keepdim=True) + 1e-5)) @ (v / v.norm(dim=1, keepdim=True)).T)
        assert torch.allclose(m.learner.head_logits(m.params, z), ref, atol=1e-5)
    m = tiny({"name": "baseline_pp", "scale": 4.0, "learnable_norm": False}, 5)
    assert "learner.head.weight_g" not in m.params
    z = torch.randn(3, 6)
    assert torch.allclose(m.learner.head_logits(m.params, z),
                          4.0 * F.cosine_similarity(z[:, None], m.params["learner.head.weight_v"][None], dim=-1),
                          atol=1e-4)


def test_classifier_loss_is_cross_entropy_over_base_classes_and_bad_batches_are_refused():
    for name in ("baseline", "simpleshot"):
        m = tiny({"name": name}, 5)
        m.train(True)
        g = torch.Generator().manual_seed(3)
        b = ClassBatch(torch.randn(8, 1, 4, 4, generator=g), torch.randint(0, 5, (8,), generator=g), 5)
        out = m.learner.loss(m.params, m.buffers, b)
        z = m.learner.embed(m.params, m.buffers, b.images)
        ref = F.cross_entropy(z @ m.params["learner.head.weight"].T + m.params["learner.head.bias"], b.labels)
        assert torch.allclose(out.loss, ref, atol=1e-6) and 0 <= float(out.metrics["accuracy"]) <= 1
        assert (m.params["learner.head.bias"] == 0).all()  # the reference zeroes the training head's bias
        with pytest.raises(ConfigError, match=r"tasks.source=classes"):
            m.learner.loss(m.params, m.buffers, episodes())
        with pytest.raises(ConfigError, match=r"tasks.num_classes=7"):
            m.learner.loss(m.params, m.buffers, ClassBatch(b.images, b.labels, 7))


# ---------------------------------------------------------------------------------------------------------------
# Baseline / Baseline++: the episode classifier


def sgd_reference(module: nn.Module, z: torch.Tensor, y: torch.Tensor, order: torch.Tensor, forward, bs=4):
    """The authors' BaselineFinetune loop for one episode: torch.optim.SGD(lr 0.01, momentum 0.9, dampening 0.9,
    weight decay 0.001), CrossEntropyLoss on consecutive slices of each epoch's permutation."""
    opt = torch.optim.SGD(module.parameters(), lr=0.01, momentum=0.9, dampening=0.9, weight_decay=0.001)
    for perm in order:
        for i in range(0, len(perm), bs):
            idx = perm[i:i + bs]
            opt.zero_grad()
            F.cross_entropy(forward(z[idx]), y[idx]).backward()
            opt.step()
    return module


@pytest.mark.parametrize("cosine", [False, True])
def test_fit_classifier_matches_torch_sgd_on_each_episode(cosine):
    t, s, n, d, epochs = 3, 7, 3, 5, 6
    g = torch.Generator().manual_seed(4)
    z = torch.randn(t, s, d, generator=g, dtype=torch.float64)
    y = torch.randint(0, n, (t, s), generator=g)
    order = torch.rand(epochs, t, s, generator=g).argsort(-1)
    w0 = torch.randn(t, n, d, generator=g, dtype=torch.float64)
    b0 = torch.randn(t, n, generator=g, dtype=torch.float64)
    if cosine:
        head = {"v": w0, "g": w0.norm(dim=-1)}
        fitted = fit_classifier(lambda p, x: cosine_logits(x, p["v"], p["g"], 2.0), head, z, y, order, 4,
                                SGDSettings())
    else:
        fitted = fit_classifier(lambda p, x: linear_logits(x, p["w"], p["b"]), {"w": w0, "b": b0}, z, y, order, 4,
                                SGDSettings())
    for e in range(t):
        if cosine:
            lin = nn.utils.parametrizations.weight_norm(nn.Linear(d, n, bias=False).double(), dim=0)
            with torch.no_grad():
                lin.parametrizations.weight.original0.copy_(w0[e].norm(dim=1, keepdim=True))
                lin.parametrizations.weight.original1.copy_(w0[e])
            sgd_reference(lin, z[e], y[e], order[:, e], lambda x: 2.0 * lin(x / (x.norm(dim=1, keepdim=True) + 1e-5)))
            assert torch.allclose(fitted["v"][e], lin.parametrizations.weight.original1, atol=1e-10)
            assert torch.allclose(fitted["g"][e], lin.parametrizations.weight.original0[:, 0], atol=1e-10)
        else:
            lin = nn.Linear(d, n).double()
            with torch.no_grad():
                lin.weight.copy_(w0[e])
                lin.bias.copy_(b0[e])
            sgd_reference(lin, z[e], y[e], order[:, e], lin)
            assert torch.allclose(fitted["w"][e], lin.weight, atol=1e-10)
            assert torch.allclose(fitted["b"][e], lin.bias, atol=1e-10)
    assert not torch.equal(fitted["v" if cosine else "w"], w0)  # it moved


@pytest.mark.parametrize("name", ["baseline", "baseline_pp"])
def test_adapt_is_the_reference_recipe_seeded_by_the_support_set_and_batch_independent(name):
    m = tiny({"name": name}, 5)
    b = episodes()
    with torch.no_grad():  # as evaluation calls it
        logits = m.predict(b.support_x, b.support_y, b.query_x, 3)
    zs = m.learner.embed(m.params, m.buffers, b.support_x)
    zq = m.learner.embed(m.params, m.buffers, b.query_x)
    for t in range(3):
        gen = torch.Generator().manual_seed(support_seed(b.support_x[t], b.support_y[t], 0))
        w, bias = linear_init(3, 6, gen, bias=name == "baseline")
        order = torch.rand(100, 6, generator=gen).argsort(-1)
        if name == "baseline":
            lin = nn.Linear(6, 3)
            with torch.no_grad():
                lin.weight.copy_(w)
                lin.bias.copy_(bias)
            fwd = lin
        else:
            lin = nn.utils.parametrizations.weight_norm(nn.Linear(6, 3, bias=False), dim=0)
            with torch.no_grad():
                lin.parametrizations.weight.original0.copy_(w.norm(dim=1, keepdim=True))
                lin.parametrizations.weight.original1.copy_(w)

            def fwd(x, lin=lin):
                return 2.0 * lin(x / (x.norm(dim=1, keepdim=True) + 1e-5))
        sgd_reference(lin, zs[t].detach(), b.support_y[t], order, fwd)
        with torch.no_grad():
            assert torch.allclose(logits[t], fwd(zq[t]), atol=1e-5), t
    # each episode alone gives the same logits: the draws depend on the episode, not on the batch
    with torch.no_grad():
        alone = m.predict(b.support_x[1:2], b.support_y[1:2], b.query_x[1:2], 3)
        again = m.predict(b.support_x, b.support_y, b.query_x, 3)
    assert torch.allclose(alone[0], logits[1], atol=1e-6) and torch.equal(again, logits)
    assert logits.shape == (3, 6, 3)


def test_finetune_encoder_matches_a_reference_loop_and_leaves_the_model_alone():
    m = tiny({"name": "baseline", "finetune_encoder": True, "finetune_epochs": 3}, 5)
    before = {k: v.clone() for k, v in {**m.params, **m.buffers}.items()}
    b = episodes(tasks=2)
    with torch.no_grad():
        logits = m.predict(b.support_x, b.support_y, b.query_x, 3)
    state = m.learner.adapt(m.params, m.buffers, b.support_x, b.support_y, 3)
    assert set(state) == {"head", "encoder"} and state["encoder"]["net.1.weight"].shape[0] == 2
    for t in range(2):
        enc = build_backbone(m.config.model, 1)
        enc.load_state_dict({k: v for k, v in {**sub(m.params, "encoder."), **sub(m.buffers, "encoder.")}.items()})
        enc.train(False)
        gen = torch.Generator().manual_seed(support_seed(b.support_x[t], b.support_y[t], 0))
        w, bias = linear_init(3, 6, gen)
        order = torch.rand(3, 6, generator=gen).argsort(-1)
        lin = nn.Linear(6, 3)
        with torch.no_grad():
            lin.weight.copy_(w)
            lin.bias.copy_(bias)
        net = nn.Sequential(enc, lin)
        sgd_reference(net, b.support_x[t], b.support_y[t], order, net)
        with torch.no_grad():
            assert torch.allclose(logits[t], net(b.query_x[t]), atol=1e-5), t
    after = {**m.params, **m.buffers}
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not torch.allclose(state["encoder"]["net.1.weight"][0], m.params["encoder.net.1.weight"])


# ---------------------------------------------------------------------------------------------------------------
# SimpleShot


@pytest.mark.parametrize("how", ["un", "l2n", "cl2n"])
def test_simpleshot_transforms_and_nearest_centroid_logits(how):
    m = tiny({"name": "simpleshot", "normalize": how}, 5)
    mean = torch.randn(6, generator=torch.Generator().manual_seed(2))
    m.buffers[BASE_MEAN].copy_(mean)
    b = episodes(tasks=2)
    with torch.no_grad():
        logits = m.predict(b.support_x, b.support_y, b.query_x, 3)
    zs = m.learner.embed(m.params, m.buffers, b.support_x).detach().double()
    zq = m.learner.embed(m.params, m.buffers, b.query_x).detach().double()

    def tf(x):
        if how == "cl2n":
            x = x - mean.double()
        return x if how == "un" else x / x.norm()

    for t in range(2):
        cents = [torch.stack([tf(zs[t, i]) for i in range(6) if b.support_y[t, i] == c]).mean(0) for c in range(3)]
        for q in range(zq.shape[1]):
            d = [float(torch.dist(tf(zq[t, q]), cents[c])) for c in range(3)]
            assert torch.allclose(logits[t, q].double(), -torch.tensor(d, dtype=torch.float64), atol=1e-5)
            assert int(logits[t, q].argmax()) == min(range(3), key=lambda c: d[c])


def test_simpleshot_base_mean_is_the_training_split_mean_after_a_trainer_run(tmp_path):
    run = tmp_path / "ss"
    train(resolve(apply_overrides({}, DIGITS + CLASSES + ["learner.name=simpleshot", "train.steps=2"])), run,
          echo=lambda *a, **k: None)
    model, _ = load_model(run)
    split = load_dataset("digits", "train")
    ref = embed_images(model, split.images).double().mean(0)
    base_mean = model.buffers[BASE_MEAN]
    assert base_mean.abs().sum() > 0 and torch.allclose(base_mean.double(), ref, atol=1e-5)
    _, _, (r,) = evaluate_run(run, ways=3, shots=1, episodes=12)
    assert 0.0 <= r.accuracy <= 100.0


# ---------------------------------------------------------------------------------------------------------------
# Meta-Baseline


def test_meta_baseline_logits_are_tau_cosine_and_tau_learns():
    m = tiny({"name": "meta_baseline"}, tasks={"ways": 3, "shots": 2, "queries": 2})
    assert float(m.params[TEMPERATURE]) == 10.0
    with torch.no_grad():
        m.params[TEMPERATURE].fill_(7.5)
    b = episodes(tasks=2)
    with torch.no_grad():
        logits = m.predict(b.support_x, b.support_y, b.query_x, 3)
    zs = m.learner.embed(m.params, m.buffers, b.support_x).detach()
    zq = m.learner.embed(m.params, m.buffers, b.query_x).detach()
    for t in range(2):
        protos = [zs[t][b.support_y[t] == c].mean(0) for c in range(3)]
        direct = torch.tensor([[7.5 * float(F.cosine_similarity(q, p, dim=0)) for p in protos] for q in zq[t]])
        assert torch.allclose(logits[t], direct, atol=1e-5)
    # the training loss: CE of tau * cos on the queries; tau's gradient is the derivative of that loss
    m = tiny({"name": "meta_baseline"}, tasks={"ways": 3, "shots": 2, "queries": 2})
    m.params = {k: v.detach().double().requires_grad_() for k, v in m.params.items()}
    m.buffers = {k: v.double() for k, v in m.buffers.items()}
    m.encoder.double()
    m.train(True)
    b64 = episodes(tasks=2, dtype=torch.float64)
    out = m.learner.loss(m.params, m.buffers, b64)
    out.loss.backward()
    grad = m.params[TEMPERATURE].grad
    assert grad is not None and float(grad) != 0.0 and float(out.metrics["temperature"]) == 10.0

    def loss_at(tau):
        p = {**m.params, TEMPERATURE: torch.tensor(tau, dtype=torch.float64)}
        with torch.no_grad():
            return float(m.learner.loss(p, m.buffers, b64).loss)

    h = 1e-5
    assert abs(float(grad) - (loss_at(10.0 + h) - loss_at(10.0 - h)) / (2 * h)) < 1e-6
    fixed = tiny({"name": "meta_baseline", "learn_temperature": False}, tasks={"ways": 3, "shots": 2, "queries": 2})
    assert TEMPERATURE not in fixed.params and float(fixed.buffers[TEMPERATURE]) == 10.0
    with pytest.raises(ConfigError, match=r"tasks.source=labeled"):
        m.learner.loss(m.params, m.buffers, ClassBatch(b64.support_x[0], b64.support_y[0], 3))


# ---------------------------------------------------------------------------------------------------------------
# the Trainer: 2-step runs, init_from rules


@pytest.fixture(scope="module")
def baseline_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("transfer") / "baseline"
    train(resolve(apply_overrides({}, DIGITS + CLASSES + ["learner.name=baseline", "train.steps=2"])), run,
          echo=lambda *a, **k: None)
    return run


@pytest.mark.parametrize("name", ["baseline", "baseline_pp"])
def test_two_step_training_and_evaluation(name, baseline_run, tmp_path):
    run = baseline_run
    if name != "baseline":
        run = tmp_path / name
        r = train(resolve(apply_overrides({}, DIGITS + CLASSES + [f"learner.name={name}", "train.steps=2"])), run,
                  echo=lambda *a, **k: None)
        assert r.steps == 2 and r.final_loss is not None
    model, state = load_model(run)
    assert model.config.tasks.num_classes == 6 and state["learner"] == name  # the six digits 0-5
    _, _, (res,) = evaluate_run(run, ways=3, shots=1, episodes=12)
    assert 0.0 <= res.accuracy <= 100.0 and len(res.per_episode_accuracy) == 12


def test_simpleshot_from_a_baseline_run_copies_the_encoder_and_computes_the_base_mean(baseline_run, tmp_path):
    run = tmp_path / "ss"
    train(resolve(apply_overrides({}, DIGITS + CLASSES + ["learner.name=simpleshot", "train.steps=0",
                                                         f"init_from={baseline_run}"])), run, echo=lambda *a, **k: None)
    a, _, _ = load_checkpoint(find_checkpoint(baseline_run))
    b, _, _ = load_checkpoint(find_checkpoint(run))
    enc = [k for k in a if k.startswith("encoder.")]
    assert enc and all(torch.equal(a[k], b[k]) for k in enc)
    model, _ = load_model(run)
    ref = embed_images(model, load_dataset("digits", "train").images).mean(0)
    assert torch.allclose(b[BASE_MEAN], ref, atol=1e-5)


def test_init_from_rules_name_what_is_needed(baseline_run, tmp_path):
    proto = tmp_path / "proto"
    train(resolve(apply_overrides({}, DIGITS + ["learner.name=protonet", "tasks.ways=3", "tasks.shots=1",
                                                "tasks.queries=2", "train.steps=1"])), proto, echo=lambda *a, **k: None)
    with pytest.raises(ConfigError, match=r"learner simpleshot needs init_from to be a run of baseline / "
                                          r"baseline_pp / simpleshot .*is a protonet run.*metassl train"):
        train(resolve(apply_overrides({}, DIGITS + CLASSES + ["learner.name=simpleshot", "train.steps=0",
                                                             f"init_from={proto}"])), tmp_path / "x")
    episodic = DIGITS + ["learner.name=meta_baseline", "tasks.ways=3", "tasks.shots=1", "tasks.queries=2",
                         "tasks.tasks_per_batch=2", "train.steps=2"]
    with pytest.raises(ConfigError, match=r"learner meta_baseline starts from a trained run: set init_from=RUN, a run "
                                          r"of baseline / baseline_pp / simpleshot"):
        train(resolve(apply_overrides({}, episodic)), tmp_path / "y")
    with pytest.raises(ConfigError, match=r"meta_baseline needs init_from to be a run of baseline.*protonet run"):
        train(resolve(apply_overrides({}, episodic + [f"init_from={proto}"])), tmp_path / "z")
    # from the classifier run: trains, evaluates
    run = tmp_path / "mb"
    lines = []
    r = train(resolve(apply_overrides({}, episodic + [f"init_from={baseline_run}"])), run, echo=lines.append)
    assert r.steps == 2 and any("encoder initialized from" in str(x) for x in lines)
    _, _, (res,) = evaluate_run(run, ways=3, shots=1, episodes=12)
    assert 0.0 <= res.accuracy <= 100.0


# ---------------------------------------------------------------------------------------------------------------
# presets


@pytest.mark.parametrize("name", ["baseline", "baseline_pp", "simpleshot", "meta_baseline"])
def test_presets_load_with_the_papers_settings(name):
    for ways in (5, 20):
        cfg = load_config(f"omniglot/{name}_{ways}w1s")
        assert cfg.learner.name == name and cfg.eval.ways == ways and cfg.eval.shots == [1]
        assert cfg.data.dataset == "omniglot" and cfg.model.backbone == "conv4" and cfg.model.hidden == 64
        assert "unchecked" in cfg.description or name in ("simpleshot", "meta_baseline")
        assert cfg.eval.paper == {}  # no Omniglot number checked against the paper's text
        if name == "meta_baseline":
            assert cfg.init_from is None and "init_from=RUN" in cfg.description
            assert cfg.tasks.ways == ways and cfg.tasks.shots == 1 and cfg.optim.name == "sgd"
        else:
            assert cfg.tasks.source == "classes" and cfg.data.train_split == "train"
