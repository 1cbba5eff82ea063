"""Self-supervised learners (metassl.ssl): each loss against a loop-based computation of the paper's formula,
stop-gradients, the MoCo queue, EMA updates, rotation labels, bad input and collapse, and short runs through the real
Trainer and CLI on scikit-learn's digits. CPU, tiny tensors. (Frozen-encoder evaluation: tests/test_eval_frozen.py;
LARS: tests/test_optim.py.)"""

from conftest import apply_update
import json
import math
import warnings

import pytest
import torch

from metassl.config import ConfigError, resolve
from metassl.data import ClassSplit, Preprocess, ViewBatch
from metassl.engine.build import build_model, load_model
from metassl.engine.logging import read_metrics
from metassl.ssl.base import TARGET, momentum_cosine, target_name
from metassl.ssl.losses import (barlow_twins_loss, info_nce_loss, negative_cosine, normalized_mse, nt_xent_loss,
                                rotate4, vicreg_loss)
from metassl.ssl.moco import enqueue

from conftest import make_split

METHODS = ["simclr", "moco", "byol", "simsiam", "barlow_twins", "vicreg", "rotnet"]
SMALL_HEADS = {"simclr": {"proj_hidden": 16, "proj_dim": 8}, "moco": {"proj_hidden": 16, "proj_dim": 8,
               "queue_size": 10}, "byol": {"proj_hidden": 16, "proj_dim": 8, "pred_hidden": 16},
               "simsiam": {"proj_hidden": 16, "proj_dim": 8, "pred_hidden": 4},
               "barlow_twins": {"proj_hidden": 16, "proj_dim": 8}, "vicreg": {"proj_hidden": 16, "proj_dim": 8},
               "rotnet": {}}


def cos(a, b):
    return float(torch.dot(a, b) / (a.norm() * b.norm()))


# ---------------------------------------------------------------------------------------------------------------
# losses against the papers' formulas, one term at a time


def test_nt_xent_matches_the_formula_in_both_directions():
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(5, 4, generator=g), torch.randn(5, 4, generator=g)
    t = 0.3
    z = torch.cat([z1, z2])
    n, b = 10, 5
    total = 0.0
    for i in range(n):  # eq. 1 of SimCLR: l(i, j) = -log exp(s_ij/t) / sum_{k != i} exp(s_ik/t); both (i,j), (j,i)
        j = (i + b) % n
        denom = sum(math.exp(cos(z[i], z[k]) / t) for k in range(n) if k != i)
        total += -math.log(math.exp(cos(z[i], z[j]) / t) / denom)
    loss, acc = nt_xent_loss(z1, z2, t)
    assert abs(float(loss) - total / n) < 1e-5
    assert 0.0 <= float(acc) <= 1.0


def test_info_nce_matches_the_formula():
    g = torch.Generator().manual_seed(1)
    q, k, queue = torch.randn(3, 4, generator=g), torch.randn(3, 4, generator=g), torch.randn(7, 4, generator=g)
    t = 0.2
    ref = 0.0
    for i in range(3):
        pos = math.exp(cos(q[i], k[i]) / t)
        neg = sum(math.exp(cos(q[i], queue[j]) / t) for j in range(7))
        ref += -math.log(pos / (pos + neg))
    assert abs(float(info_nce_loss(q, k, queue, t)[0]) - ref / 3) < 1e-5


def test_byol_and_simsiam_losses_stop_the_target_gradient():
    g = torch.Generator().manual_seed(2)
    p = torch.randn(4, 6, generator=g, requires_grad=True)
    z = torch.randn(4, 6, generator=g, requires_grad=True)
    pd, zd = p.detach(), z.detach()
    ref = sum(float(((pd[i] / pd[i].norm() - zd[i] / zd[i].norm()) ** 2).sum()) for i in range(4)) / 4
    loss = normalized_mse(p, z)
    assert abs(float(loss.detach()) - ref) < 1e-5
    assert abs(float(loss.detach()) - (2 - 2 * sum(cos(pd[i], zd[i]) for i in range(4)) / 4)) < 1e-5
    loss.backward()
    assert p.grad is not None and float(p.grad.abs().sum()) > 0 and z.grad is None
    p.grad = None
    d = negative_cosine(p, z)
    assert abs(float(d.detach()) + sum(cos(pd[i], zd[i]) for i in range(4)) / 4) < 1e-5
    d.backward()
    assert p.grad is not None and z.grad is None


def test_barlow_twins_matches_the_formula():
    g = torch.Generator().manual_seed(3)
    z1, z2 = torch.randn(6, 3, generator=g), torch.randn(6, 3, generator=g)
    lam, b, d = 0.01, 6, 3

    def norm(z, j):
        col = [float(z[n, j]) for n in range(b)]
        mu = sum(col) / b
        sd = math.sqrt(sum((v - mu) ** 2 for v in col) / b + 1e-5)
        return [(v - mu) / sd for v in col]

    c = [[sum(x * y for x, y in zip(norm(z1, i), norm(z2, j))) / b for j in range(d)] for i in range(d)]
    on = sum((1 - c[i][i]) ** 2 for i in range(d))
    off = sum(c[i][j] ** 2 for i in range(d) for j in range(d) if i != j)
    loss, terms = barlow_twins_loss(z1, z2, lam)
    assert abs(float(terms["on_diag"]) - on) < 1e-4 and abs(float(terms["off_diag"]) - off) < 1e-4
    assert abs(float(loss) - (on + lam * off)) < 1e-4


def test_vicreg_matches_the_formula():
    g = torch.Generator().manual_seed(4)
    z1, z2 = torch.randn(5, 3, generator=g) * 0.5, torch.randn(5, 3, generator=g) * 2
    b, d = 5, 3
    inv = sum(float((z1[n, j] - z2[n, j]) ** 2) for n in range(b) for j in range(d)) / (b * d)

    def v_c(z):
        mu = [sum(float(z[n, j]) for n in range(b)) / b for j in range(d)]
        cov = [[sum((float(z[n, i]) - mu[i]) * (float(z[n, j]) - mu[j]) for n in range(b)) / (b - 1)
                for j in range(d)] for i in range(d)]
        var = sum(max(0.0, 1 - math.sqrt(cov[j][j] + 1e-4)) for j in range(d)) / d
        return var, sum(cov[i][j] ** 2 for i in range(d) for j in range(d) if i != j) / d

    (v1, c1), (v2, c2) = v_c(z1), v_c(z2)
    loss, terms = vicreg_loss(z1, z2, 25.0, 25.0, 1.0)
    assert abs(float(terms["invariance"]) - inv) < 1e-5
    assert abs(float(terms["variance"]) - (v1 + v2) / 2) < 1e-5
    assert abs(float(terms["covariance"]) - (c1 + c2)) < 1e-4
    assert abs(float(loss) - (25 * inv + 25 * (v1 + v2) / 2 + (c1 + c2))) < 1e-3


def test_rotation_labels():
    x = torch.arange(2 * 1 * 2 * 2, dtype=torch.float32).view(2, 1, 2, 2)  # image 0 = [[0, 1], [2, 3]]
    rot, labels = rotate4(x)
    assert labels.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    assert rot[2, 0].tolist() == [[1, 3], [0, 2]]  # 90 degrees counter-clockwise
    assert rot[4, 0].tolist() == [[3, 2], [1, 0]]
    for k in range(4):
        assert torch.equal(rot[2 * k:2 * k + 2], torch.rot90(x, k, dims=(-2, -1)))


# ---------------------------------------------------------------------------------------------------------------
# momentum state


def test_moco_queue_is_fifo_with_wrap_around():
    queue, ptr = torch.zeros(5, 1), torch.zeros(1, dtype=torch.int64)
    keys = torch.arange(1, 12, dtype=torch.float32).view(-1, 1)
    queue, ptr = enqueue(queue, ptr, keys[0:3])  # 1 2 3 at slots 0..2
    assert queue.flatten().tolist() == [1, 2, 3, 0, 0] and int(ptr) == 3
    queue, ptr = enqueue(queue, ptr, keys[3:6])  # 4 5 at slots 3, 4; 6 wraps to slot 0 (the oldest key, 1, goes)
    assert queue.flatten().tolist() == [6, 2, 3, 4, 5] and int(ptr) == 1
    queue, ptr = enqueue(queue, ptr, keys[6:7])
    assert queue.flatten().tolist() == [6, 7, 3, 4, 5] and int(ptr) == 2
    before = queue.clone()
    new, new_ptr = enqueue(queue, ptr, keys[0:7])  # a new tensor: the input is unchanged (a pure update)
    assert torch.equal(queue, before)
    queue, ptr = new, new_ptr  # more keys than slots: the last 5 (3..7) are kept, in order
    assert queue.flatten().tolist() == [6, 7, 3, 4, 5] and int(ptr) == 2


def tiny_model(name, image_shape=(1, 8, 8), **learner):
    cfg = resolve({"model": {"backbone": "mlp", "hidden": [16, 8], "image_size": image_shape[-1]},
                   "learner": {"name": name, **SMALL_HEADS[name], **learner},
                   "tasks": {"views": 1 if name == "rotnet" else 2}})
    return build_model(cfg, image_shape, Preprocess())


def views(b=6, v=2, seed=0, shape=(1, 8, 8)):
    return ViewBatch(torch.rand(v, b, *shape, generator=torch.Generator().manual_seed(seed)))


@pytest.mark.parametrize("name", ["byol", "moco"])
def test_ema_update_formula(name):
    m = tiny_model(name, **({"momentum": 0.9} if name == "moco" else {"tau_base": 0.9}))
    names = [k for k in m.params if target_name(k) in m.buffers]
    assert names and all(k.startswith(("encoder.", "learner.projector.")) for k in names)
    assert not any(k.startswith("learner.predictor.") for k in names)  # BYOL: no target predictor
    with torch.no_grad():
        for k in names:
            m.params[k].add_(torch.randn_like(m.params[k]))
    before = {k: m.buffers[target_name(k)].clone() for k in names}
    online = {k: m.params[k].detach().clone() for k in names}
    step, total = 25, 100
    aux = {"keys": torch.zeros(0, 8)} if name == "moco" else {}
    with torch.no_grad():
        apply_update(m, aux, step, total)
    tau = 0.9 if name == "moco" else 1 - (1 - 0.9) * (math.cos(math.pi * step / total) + 1) / 2
    for k in names:
        assert torch.allclose(m.buffers[target_name(k)], tau * before[k] + (1 - tau) * online[k], atol=1e-6)
    assert momentum_cosine(0.99, 0, 100) == pytest.approx(0.99) and momentum_cosine(0.99, 100, 100) == 1.0


def test_byol_target_gets_no_gradient_and_loss_is_the_symmetric_nmse():
    m = tiny_model("byol")
    batch = views()
    _out = m.learner.loss(m.params, m.buffers, batch)
    loss, aux = _out.loss, {**_out.metrics, **_out.state}
    loss.backward()
    assert all(not t.requires_grad for t in m.buffers.values())
    for k in ("encoder.net.1.weight", "learner.projector.layers.0.weight", "learner.predictor.layers.0.weight"):
        assert m.params[k].grad is not None and float(m.params[k].grad.abs().sum()) > 0, k
    assert set(aux) == {"loss", "embedding_std", "embedding_spread"}


def test_moco_loss_uses_the_queue_and_after_step_enqueues_keys():
    m = tiny_model("moco", queue_size=9)
    batch = views(b=4)
    _out = m.learner.loss(m.params, m.buffers, batch)
    loss, aux = _out.loss, {**_out.metrics, **_out.state}
    assert aux["keys"].shape == (4, 8) and torch.allclose(aux["keys"].norm(dim=1), torch.ones(4), atol=1e-5)
    loss.backward()
    with torch.no_grad():
        for _ in range(3):  # 12 keys into 9 slots: wraps around
            apply_update(m, aux, 0, 10)
    assert int(m.buffers["learner.queue_ptr"]) == 12 % 9
    assert torch.allclose(m.buffers["learner.queue"][:3], aux["keys"][1:])
    sym = tiny_model("moco", symmetric=True)
    assert sym.learner.loss(sym.params, sym.buffers, batch).state["keys"].shape == (8, 8)


@pytest.mark.parametrize("name", METHODS)
def test_every_method_computes_a_finite_loss_and_updates(name):
    m = tiny_model(name)
    batch = views(b=6, v=1 if name == "rotnet" else 2)
    _out = m.learner.loss(m.params, m.buffers, batch)
    loss, aux = _out.loss, {**_out.metrics, **_out.state}
    assert torch.isfinite(loss) and loss.requires_grad
    loss.backward()
    grads = [p.grad for p in m.params.values()]
    assert sum(g is not None and float(g.abs().sum()) > 0 for g in grads) >= len(grads) // 2
    with torch.no_grad():
        apply_update(m, aux, 1, 10)
    assert "embedding_std" in aux and 0.0 <= float(aux["embedding_std"]) <= 1.0


# ---------------------------------------------------------------------------------------------------------------
# bad input and collapse


def test_bad_batches_are_named():
    with pytest.raises(ValueError, match="batch size must be >= 2"):
        nt_xent_loss(torch.randn(1, 4), torch.randn(1, 4))
    m = tiny_model("simclr")
    with pytest.raises(ConfigError, match=r"tasks.batch_size >= 2 \(NT-Xent"):
        m.learner.loss(m.params, m.buffers, views(b=1))
    with pytest.raises(ConfigError, match="set tasks.views=2"):
        m.learner.loss(m.params, m.buffers, views(b=4, v=3))
    rot = tiny_model("rotnet")
    rot.learner.loss(rot.params, rot.buffers, views(b=1, v=3))  # any number of views, any batch
    moco = tiny_model("moco", queue_size=7)  # 7 is no multiple of the batch size: handled by wrap-around
    _out = moco.learner.loss(moco.params, moco.buffers, views(b=3))
    _, aux = _out.loss, {**_out.metrics, **_out.state}
    apply_update(moco, aux, 0, 1)
    assert int(moco.buffers["learner.queue_ptr"]) == 3


def test_collapse_is_reported_and_warned():
    m = tiny_model("simclr")
    with torch.no_grad():
        for k, v in m.params.items():
            if k.startswith("encoder."):
                v.zero_()  # every image gets the same features, so the same embedding
    _out = m.learner.loss(m.params, m.buffers, views())
    loss, aux = _out.loss, {**_out.metrics, **_out.state}
    assert float(aux["embedding_std"]) < 1e-6
    logged = {k: float(v) for k, v in aux.items()}
    assert "collapsed at step 0" in m.learner.diagnose(logged, 0)
    healthy = tiny_model("simclr")
    _out = healthy.learner.loss(healthy.params, healthy.buffers, views())
    assert healthy.learner.diagnose({k: float(v) for k, v in _out.metrics.items()}, 0) is None


# ---------------------------------------------------------------------------------------------------------------
# the real Trainer and CLI on scikit-learn's digits


def digits_cfg(learner, steps, **train):
    return resolve({
        "name": "ssl", "seed": 0,
        "data": {"dataset": "digits", "train_split": "all", "val_split": None, "test_split": "all"},
        "tasks": {"batch_size": 256, "views": 2},
        "model": {"backbone": "mlp", "hidden": [64, 32], "image_size": 8},
        "learner": learner, "optim": {"name": "adam", "lr": 3e-3, "schedule": "cosine"},
        "train": {"steps": steps, "log_every": 1, "val_every": 0, "checkpoint_every": 1000, "progress": False,
                  "tensorboard": False, "report": False, **train},
        "eval": {"ways": 5, "shots": [1], "queries": 5, "episodes": 20, "batch_episodes": 10}})


def test_two_epochs_of_simclr_lower_the_loss_then_every_protocol_evaluates(tmp_path, capsys):
    from metassl.cli.main import main
    from metassl.engine.trainer import train

    run = tmp_path / "simclr"
    # digits: 1,797 images, batch 256 -> 7 steps per epoch; two epochs = 14 steps
    res = train(digits_cfg({"name": "simclr", "proj_hidden": 64, "proj_dim": 32}, 14, knn_every=7), run,
                echo=lambda *a: None)
    rows = read_metrics(run)
    losses = [r["loss"] for r in rows if r["kind"] == "train"]
    assert len(losses) == 14 and sum(losses[-3:]) / 3 < sum(losses[:3]) / 3
    assert all("accuracy" not in r and "embedding_std" in r for r in rows if r["kind"] == "train")
    knn = [r for r in rows if r["kind"] == "knn"]
    assert [r["step"] for r in knn] == [7, 14] and 0.0 < knn[-1]["knn_top1"] <= 1.0
    assert res.steps == 14 and (run / "learning_curves.png").exists()

    capsys.readouterr()
    assert main(["eval", str(run), "--protocol", "knn", "--json", "--device", "cpu"]) == 0
    out = json.loads(capsys.readouterr().out)
    p = out["protocol"]
    assert (p["name"], p["k"], p["temperature"], p["dataset"], p["train_split"], p["test_split"]) == \
        ("knn", 200, 0.1, "digits", "all", "all")
    assert p["train_size"] == 1797 and p["test_size"] == 1797 and out["learner"] == "simclr"
    assert main(["eval", str(run), "--protocol", "linear", "--json", "--device", "cpu", "--max-train", "500"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["protocol"]["name"] == "linear" and out["protocol"]["train_size"] == 500 and out["accuracy"] > 30
    assert main(["eval", str(run), "--json", "--device", "cpu"]) == 0  # few-shot episodes, nearest class mean
    assert 20.0 <= json.loads(capsys.readouterr().out)["accuracy"] <= 100.0
    assert main(["eval", str(run), "--protocol", "knn", "--train-split", "train", "--device", "cpu"]) == 2
    assert "same classes" in capsys.readouterr().err


def test_moco_checkpoint_keeps_its_state_and_only_scalars_are_logged(tmp_path):
    from metassl.engine.trainer import train

    run = tmp_path / "moco"
    cfg = digits_cfg({"name": "moco", "proj_hidden": 32, "proj_dim": 16, "queue_size": 300}, 3)
    train(cfg, run, echo=lambda *a: None)
    rows = [r for r in read_metrics(run) if r["kind"] == "train"]
    assert len(rows) == 3 and all("keys" not in r and "contrastive_acc" in r for r in rows)
    model, state = load_model(run)
    assert int(model.buffers["learner.queue_ptr"]) == (3 * 256) % 300
    assert any(k.startswith(TARGET + "encoder.") for k in model.buffers)


def test_batch_and_knn_settings_the_data_cannot_serve_are_config_errors(tmp_path):
    from metassl.engine.trainer import train

    one = resolve({**digits_cfg({"name": "simclr"}, 1).to_dict(), "tasks": {"batch_size": 1, "views": 2}})
    with pytest.raises(ConfigError, match=r"tasks.batch_size >= 2 \(NT-Xent"):
        train(one, tmp_path / "a", echo=lambda *a: None)
    bad = resolve({**digits_cfg({"name": "simclr"}, 1).to_dict(),
                   "data": {"dataset": "digits", "train_split": "train", "val_split": None, "test_split": "test"},
                   "train": {"knn_every": 5, "progress": False, "tensorboard": False, "report": False}})
    with pytest.raises(ConfigError, match="train.knn_every: kNN evaluation needs the same classes"):
        train(bad, tmp_path / "b", echo=lambda *a: None)


def test_resumed_moco_run_equals_the_uninterrupted_one(tmp_path):
    from metassl.engine.trainer import load_run_config, train

    # constant lr and momentum: with a cosine schedule a 2-step run differs from the first half of a 4-step run
    learner = {"name": "moco", "proj_hidden": 32, "proj_dim": 16, "queue_size": 500, "momentum": 0.9}

    def cfg(steps):
        return resolve({**digits_cfg(learner, steps, checkpoint_every=2).to_dict(),
                        "optim": {"name": "sgd", "lr": 0.1, "momentum": 0.9, "schedule": "constant"}})

    train(cfg(4), tmp_path / "full", echo=lambda *a: None)
    train(cfg(2), tmp_path / "half", echo=lambda *a: None)
    train(load_run_config(tmp_path / "half", ["train.steps=4"]), tmp_path / "half", resume=True,
          echo=lambda *a: None)
    a, _ = load_model(tmp_path / "full")
    b, _ = load_model(tmp_path / "half")
    for k, v in a.state_tensors().items():  # encoder, heads, target network, queue and its pointer
        assert torch.equal(v, b.state_tensors()[k]), k
