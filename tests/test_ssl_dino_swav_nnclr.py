"""DINO, SwAV and NNCLR: each formula against a direct loop computation of the paper's (DINO's centring, sharpening,
centre EMA and teacher temperature schedule; SwAV's Sinkhorn codes and their marginals, the swapped loss; NNCLR's
neighbour lookup and loss), the learners' state (EMA teacher, centre, queues) returned by `update`, 2-step runs
through `metassl train` / `metassl eval` on scikit-learn's digits (with local crops), and resume equality."""

import json
import math

import pytest
import torch
import torch.nn.functional as F

from metassl.config import resolve
from metassl.data import Preprocess, ViewBatch
from metassl.engine.build import build_model, load_model
from metassl.ssl.base import TARGET
from metassl.ssl.dino import CENTER, LAST, DINOHead
from metassl.ssl.losses import (dino_center, dino_loss, nearest_neighbour, nnclr_loss, sinkhorn, swav_loss,
                                teacher_temperature)
from metassl.ssl.swav import Prototypes, fifo

from conftest import apply_update

SMALL = {"dino": {"out_dim": 16, "hidden": 16, "bottleneck": 8},
         "swav": {"prototypes": 6, "proj_hidden": 16, "proj_dim": 8},
         "nnclr": {"proj_hidden": 16, "proj_dim": 8, "pred_hidden": 16, "queue_size": 10}}


def tiny(name, **learner):
    cfg = resolve({"model": {"backbone": "mlp", "hidden": [16, 8], "image_size": 8},
                   "learner": {"name": name, **SMALL[name], **learner}, "tasks": {"views": 2}})
    return build_model(cfg, (1, 8, 8), Preprocess())


def batch(b=6, local=0, seed=0):
    g = torch.Generator().manual_seed(seed)
    return ViewBatch(torch.rand(2, b, 1, 8, 8, generator=g), None,
                     torch.rand(local, b, 1, 4, 4, generator=g) if local else None)


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# ---------------------------------------------------------------------------------------------------------------
# DINO


def test_dino_loss_is_the_cross_entropy_of_centred_sharpened_teacher_and_student_over_view_pairs():
    vs, vt, b, k = 4, 2, 3, 5
    s, t, c = rand(vs, b, k, seed=1), rand(vt, b, k, seed=2), rand(k, seed=3)
    ts, tt = 0.1, 0.04
    S, T, C = s.tolist(), t.tolist(), c.tolist()
    total, pairs = 0.0, 0
    for i in range(vt):
        for v in range(vs):
            if v == i:
                continue
            for n in range(b):
                pt = [math.exp((T[i][n][j] - C[j]) / tt) for j in range(k)]
                zt = sum(pt)
                zs = sum(math.exp(S[v][n][j] / ts) for j in range(k))
                total += -sum(pt[j] / zt * (S[v][n][j] / ts - math.log(zs)) for j in range(k)) / b
            pairs += 1
    loss, metrics = dino_loss(s, t, c, ts, tt)
    assert pairs == 6 and float(loss) == pytest.approx(total / pairs, rel=1e-5)
    # the teacher's entropy is lower with a lower (sharper) temperature; the centre shifts the teacher's logits
    q = F.softmax((t - c) / tt, -1)
    assert float(metrics["teacher_entropy"]) == pytest.approx(float(-(q * q.log()).sum(-1).mean()), rel=1e-4)
    assert float(dino_loss(s, t, c, ts, 0.5)[1]["teacher_entropy"]) > float(metrics["teacher_entropy"])
    assert float(dino_loss(s, t, torch.zeros(k), ts, tt)[0]) != pytest.approx(float(loss))
    # a centre constant over k changes nothing (softmax is shift-invariant)
    assert float(dino_loss(s, t, torch.full((k,), 3.0), ts, tt)[0]) == pytest.approx(
        float(dino_loss(s, t, torch.zeros(k), ts, tt)[0]), rel=1e-6)


def test_dino_centre_ema_and_teacher_temperature_schedule():
    c, t = rand(1, 4, seed=0), rand(2, 5, 4, seed=1)
    mean = [sum(float(t[v, n, j]) for v in range(2) for n in range(5)) / 10 for j in range(4)]
    want = [0.9 * float(c[0, j]) + 0.1 * mean[j] for j in range(4)]
    assert dino_center(c, t, 0.9).flatten().tolist() == pytest.approx(want, rel=1e-6)
    assert teacher_temperature(0, 0.04, 0.07, 10) == pytest.approx(0.04)
    assert teacher_temperature(5, 0.04, 0.07, 10) == pytest.approx(0.055)
    assert teacher_temperature(10, 0.04, 0.07, 10) == pytest.approx(0.07)
    assert teacher_temperature(99, 0.04, 0.07, 10) == pytest.approx(0.07)
    assert float(teacher_temperature(torch.tensor(5), 0.04, 0.07, 10)) == pytest.approx(0.055)
    assert teacher_temperature(0, 0.04, 0.07, 0) == pytest.approx(0.07)


def test_dino_head_last_layer_is_weight_normalized_with_g_one():
    head = DINOHead(6, 10, 4, 7, layers=3)
    x = torch.randn(5, 6)
    bottleneck = F.normalize(head.mlp(x), dim=-1)
    w = head.last_layer.weight
    want = bottleneck @ (w / w.norm(dim=1, keepdim=True)).t()
    assert torch.allclose(head(x), want, atol=1e-6)
    with torch.no_grad():
        w.mul_(torch.rand(7, 1) * 5 + 0.1)  # row norms do not matter: g is 1
    assert torch.allclose(head(x), want, atol=1e-6)
    assert sum(isinstance(m, torch.nn.GELU) for m in head.mlp) == 2


def test_dino_teacher_sees_global_views_and_update_returns_teacher_centre_and_step():
    m = tiny("dino", momentum=0.9, momentum_schedule="constant", teacher_temp_warmup_steps=4)
    a, b2 = batch(local=3, seed=0), batch(local=3, seed=0)
    b2.local_views = torch.rand_like(b2.local_views)
    out_a, out_b = (m.learner.loss(m.params, m.buffers, x) for x in (a, b2))
    assert torch.allclose(out_a.state["teacher_mean"], out_b.state["teacher_mean"])  # local crops: student only
    assert float(out_a.loss) != pytest.approx(float(out_b.loss))
    assert float(out_a.metrics["teacher_temp"]) == pytest.approx(0.04)
    # the teacher output by hand: target encoder + target head on the global views
    tensors = {**m.params, **m.buffers}
    h = m.learner.encode(tensors, TARGET + "encoder.", a.views).reshape(12, -1)
    t = m.learner.head("head", tensors, h, prefix=TARGET)
    assert torch.allclose(out_a.state["teacher_mean"], t.mean(0, keepdim=True), atol=1e-6)
    before = {k: v.clone() for k, v in m.buffers.items()}
    new = m.learner.update(m.params, m.buffers, out_a.state, 0, 10)
    assert torch.allclose(new[CENTER], 0.9 * before[CENTER] + 0.1 * t.mean(0, keepdim=True), atol=1e-6)
    assert int(new["learner.step"]) == 1
    k = "encoder.net.1.weight"
    assert torch.allclose(new[TARGET + k], 0.9 * before[TARGET + k] + 0.1 * m.params[k].detach())
    apply_update(m, out_a.state, 0, 10)
    apply_update(m, out_a.state, 1, 10)
    assert float(m.learner.loss(m.params, m.buffers, a).metrics["teacher_temp"]) == pytest.approx(0.055)


def test_dino_freezes_its_last_layer_for_the_first_steps():
    m = tiny("dino", freeze_last_layer_steps=1)
    out = m.learner.loss(m.params, m.buffers, batch(local=2))
    out.loss.backward()
    assert float(m.params[LAST].grad.abs().sum()) == 0.0
    assert float(m.params["learner.head.mlp.0.weight"].grad.abs().sum()) > 0
    m.params[LAST].grad = None
    apply_update(m, out.state, 0, 10)
    m.learner.loss(m.params, m.buffers, batch(local=2)).loss.backward()
    assert float(m.params[LAST].grad.abs().sum()) > 0


# ---------------------------------------------------------------------------------------------------------------
# SwAV


def paper_sinkhorn(scores, eps, iters):
    """SwAV's algorithm 1 with loops: Q = exp(S / eps)^T [K, B], Q /= sum; repeat: rows (prototypes) to 1/K, columns
    (images) to 1/B; return (Q B)^T."""
    b, k = len(scores), len(scores[0])
    q = [[math.exp(scores[n][j] / eps) for n in range(b)] for j in range(k)]
    tot = sum(map(sum, q))
    q = [[x / tot for x in row] for row in q]
    for _ in range(iters):
        for j in range(k):
            r = sum(q[j])
            q[j] = [x / r / k for x in q[j]]
        for n in range(b):
            col = sum(q[j][n] for j in range(k))
            for j in range(k):
                q[j][n] = q[j][n] / col / b
    return [[q[j][n] * b for j in range(k)] for n in range(b)]


def test_sinkhorn_codes_follow_the_paper_and_split_the_mass_equally_over_the_prototypes():
    b, k = 8, 4
    s = rand(b, k, seed=5).clamp(-1, 1)
    codes = sinkhorn(s, 0.05, 3)
    assert torch.allclose(codes.double(), torch.tensor(paper_sinkhorn(s.tolist(), 0.05, 3), dtype=torch.float64),
                          rtol=1e-4, atol=1e-6)
    assert torch.allclose(codes.sum(1), torch.ones(b), atol=1e-5)  # each image: a distribution over prototypes
    converged = sinkhorn(s, 0.05, 300)
    assert torch.allclose(converged.sum(0), torch.full((k,), b / k), atol=1e-3)  # each prototype: B / K


def test_swav_loss_is_the_swapped_prediction():
    v, vg, b, k, temp = 4, 2, 3, 5, 0.1
    scores, codes = rand(v, b, k, seed=1), F.softmax(rand(vg, b, k, seed=2), -1)
    S, Q = scores.tolist(), codes.tolist()
    total = 0.0
    for i in range(vg):
        sub = 0.0
        for w in range(v):
            if w == i:
                continue
            for n in range(b):
                z = sum(math.exp(S[w][n][j] / temp) for j in range(k))
                sub += -sum(Q[i][n][j] * (S[w][n][j] / temp - math.log(z)) for j in range(k)) / b
        total += sub / (v - 1)
    assert float(swav_loss(scores, codes, temp)) == pytest.approx(total / vg, rel=1e-6)


def test_swav_prototypes_are_normalized_and_the_learner_loss_uses_the_codes_of_the_global_views():
    p = Prototypes(4, 3)
    z = torch.randn(5, 4)
    want = F.normalize(z, dim=1) @ F.normalize(p.weight, dim=1).t()
    assert torch.allclose(p(z), want, atol=1e-6)
    m = tiny("swav", freeze_prototypes_steps=1)
    x = batch(local=2)
    out = m.learner.loss(m.params, m.buffers, x)
    tensors = {**m.params, **m.buffers}
    h = torch.cat([m.learner.embed(m.params, m.buffers, x.views), m.learner.embed(m.params, m.buffers, x.local_views)])
    zz = F.normalize(m.learner.head("projector", tensors, h.reshape(24, -1)), dim=-1)
    scores = m.learner.head("prototypes", tensors, zz).reshape(4, 6, -1)
    codes = torch.stack([sinkhorn(scores[i].detach(), 0.05, 3) for i in range(2)])
    assert float(out.loss) == pytest.approx(float(swav_loss(scores, codes, 0.1)), rel=1e-5)
    out.loss.backward()
    assert float(m.params["learner.prototypes.weight"].grad.abs().sum()) == 0.0  # frozen at step 0


def test_swav_queue_is_fifo_starts_late_and_is_used_once_full():
    q = torch.arange(12.0).reshape(6, 2)
    rows = -torch.ones(2, 2)
    assert torch.equal(fifo(q, rows), torch.cat([rows, q[:4]]))
    m = tiny("swav", queue_length=8, queue_start_steps=1)
    x = batch(b=6)
    out = m.learner.loss(m.params, m.buffers, x)
    apply_update(m, out.state, 0, 10)  # step 0 < queue_start_steps: not filled
    assert int(m.buffers["learner.queue_count"]) == 0 and float(m.buffers["learner.queue"].abs().sum()) == 0
    apply_update(m, out.state, 1, 10)
    z = out.state["projections"]
    assert int(m.buffers["learner.queue_count"]) == 6
    assert torch.equal(m.buffers["learner.queue"][:, :6], z) and float(out.metrics["queue_used"]) == 0
    apply_update(m, out.state, 2, 10)  # 12 rows offered to 8 slots: full, newest first
    assert int(m.buffers["learner.queue_count"]) == 8
    assert torch.equal(m.buffers["learner.queue"][:, 6:], z[:, :2])
    full = m.learner.loss(m.params, m.buffers, x)
    assert float(full.metrics["queue_used"]) == 1.0
    # the codes now come from Sinkhorn over [queue; batch]; recompute the loss that way
    tensors = {**m.params, **m.buffers}
    h = m.learner.embed(m.params, m.buffers, x.views).reshape(12, -1)
    zz = F.normalize(m.learner.head("projector", tensors, h), dim=-1)
    scores = m.learner.head("prototypes", tensors, zz).reshape(2, 6, -1).detach()
    protos = F.normalize(m.params["learner.prototypes.weight"].detach(), dim=1)
    codes = torch.stack([sinkhorn(torch.cat([m.buffers["learner.queue"][i] @ protos.t(), scores[i]]), 0.05, 3)[-6:]
                         for i in range(2)])
    assert float(full.loss) == pytest.approx(float(swav_loss(scores, codes, 0.1)), rel=1e-5)


# ---------------------------------------------------------------------------------------------------------------
# NNCLR


def test_nearest_neighbour_is_the_brute_force_cosine_argmax():
    z, support = rand(5, 3, seed=1), rand(9, 3, seed=2) * torch.rand(9, 1, dtype=torch.float64) * 10
    nn, idx = nearest_neighbour(z, support)
    for i in range(5):
        best = max(range(9), key=lambda j: float(z[i] @ support[j]) / float(z[i].norm() * support[j].norm()))
        assert int(idx[i]) == best and torch.equal(nn[i], support[best])


def test_nnclr_loss_is_the_papers_formula():
    nn, p, t = rand(4, 3, seed=3), rand(4, 3, seed=4), 0.1
    nn_n, p_n = F.normalize(nn, dim=1), F.normalize(p, dim=1)
    want = 0.0
    for i in range(4):
        den = sum(math.exp(float(nn_n[i] @ p_n[k]) / t) for k in range(4))
        want += -math.log(math.exp(float(nn_n[i] @ p_n[i]) / t) / den) / 4
    assert float(nnclr_loss(nn, p, t)[0]) == pytest.approx(want, rel=1e-6)


def test_nnclr_learner_uses_neighbours_from_the_queue_and_enqueues_the_first_view_fifo():
    m = tiny("nnclr")
    x = batch(b=6)
    out = m.learner.loss(m.params, m.buffers, x)
    tensors = {**m.params, **m.buffers}
    h = m.learner.embed(m.params, m.buffers, x.views).reshape(12, -1)
    z = m.learner.head("projector", tensors, h)
    p = m.learner.head("predictor", tensors, z).reshape(2, 6, -1)
    z = z.reshape(2, 6, -1)
    q = m.buffers["learner.queue"]
    want = (nnclr_loss(nearest_neighbour(z[0], q)[0], p[1])[0] + nnclr_loss(nearest_neighbour(z[1], q)[0], p[0])[0]) / 2
    assert float(out.loss) == pytest.approx(float(want), rel=1e-5)
    keys = out.state["keys"]
    assert torch.allclose(keys, F.normalize(z[0].detach(), dim=1), atol=1e-6)
    apply_update(m, out.state, 0, 10)
    assert torch.equal(m.buffers["learner.queue"][:6], keys) and int(m.buffers["learner.queue_ptr"]) == 6
    old = m.buffers["learner.queue"].clone()
    apply_update(m, out.state, 1, 10)  # 6 more into 10 slots: 4 at the end, 2 wrap around to the front
    queue = m.buffers["learner.queue"]
    assert torch.equal(queue[6:], keys[:4]) and torch.equal(queue[:2], keys[4:]) and torch.equal(queue[2:6], old[2:6])
    assert int(m.buffers["learner.queue_ptr"]) == 2


# ---------------------------------------------------------------------------------------------------------------
# runs through the CLI and resume


def digits(learner, steps, local=0, **train):
    return {"name": "ssl", "seed": 0,
            "data": {"dataset": "digits", "train_split": "all", "val_split": None, "test_split": "all"},
            "tasks": {"batch_size": 64, "views": 2, "local_crops": local, "local_size": 4},
            "model": {"backbone": "mlp", "hidden": [32, 16], "image_size": 8},
            "learner": {**learner}, "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "schedule": "constant"},
            "train": {"steps": steps, "log_every": 1, "val_every": 0, "checkpoint_every": 2, "progress": False,
                      "tensorboard": False, "report": False, **train},
            "eval": {"ways": 5, "shots": [1], "queries": 5, "episodes": 10, "batch_episodes": 10}}


RUNS = {"dino": ({"name": "dino", **SMALL["dino"], "momentum": 0.9, "momentum_schedule": "constant",
                  "teacher_temp_warmup_steps": 3, "freeze_last_layer_steps": 1}, 2),
        "swav": ({"name": "swav", **SMALL["swav"], "queue_length": 64, "queue_start_steps": 1,
                  "freeze_prototypes_steps": 1}, 2),
        "nnclr": ({"name": "nnclr", **SMALL["nnclr"], "queue_size": 100}, 0)}


@pytest.mark.parametrize("name", sorted(RUNS))
def test_two_step_cli_run_then_eval(name, tmp_path, capsys):
    import yaml
    from metassl.cli.main import main

    learner, local = RUNS[name]
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(digits(learner, 2, local)))
    run = tmp_path / "run"
    assert main(["train", str(cfg), "--run-dir", str(run), "train.device=cpu"]) == 0
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if r.get("kind") == "train"]
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses)
    capsys.readouterr()
    assert main(["eval", str(run), "--json", "--device", "cpu"]) == 0
    assert 20.0 <= json.loads(capsys.readouterr().out)["accuracy"] <= 100.0


@pytest.mark.parametrize("name", sorted(RUNS))
def test_frozen_encoder_protocols_evaluate_every_method(name, tmp_path, capsys):
    import yaml
    from metassl.cli.main import main

    learner, local = RUNS[name]
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(digits(learner, 1, local)))
    run = tmp_path / "run"
    assert main(["train", str(cfg), "--run-dir", str(run), "train.device=cpu"]) == 0
    for protocol in ("knn", "linear"):  # digits' `all` split holds the ten classes: bank / probe and test on it
        capsys.readouterr()
        assert main(["eval", str(run), "--protocol", protocol, "--dataset", "digits", "--train-split", "all",
                     "--split", "all", "--max-train", "300", "--json", "--device", "cpu"]) == 0
        out = json.loads(capsys.readouterr().out)
        assert out["protocol"]["name"] == protocol and 10.0 <= out["accuracy"] <= 100.0


@pytest.mark.parametrize("name", sorted(RUNS))
def test_resumed_run_equals_the_uninterrupted_one(name, tmp_path):
    from metassl.engine.trainer import load_run_config, train

    learner, local = RUNS[name]
    # constant lr and momentum: the schedules would differ between a 2-step and a 4-step run; the queues, the
    # centre, the teacher temperature warm-up and the frozen last layer / prototypes span the resume point
    train(resolve(digits(learner, 4, local)), tmp_path / "full", echo=lambda *a: None)
    train(resolve(digits(learner, 2, local)), tmp_path / "half", echo=lambda *a: None)
    train(load_run_config(tmp_path / "half", ["train.steps=4"]), tmp_path / "half", resume=True,
          echo=lambda *a: None)
    a, _ = load_model(tmp_path / "full")
    b, _ = load_model(tmp_path / "half")
    sa, sb = a.state_tensors(), b.state_tensors()
    assert sa.keys() == sb.keys()
    for k, v in sa.items():
        assert torch.equal(v, sb[k]), k
    if name == "dino":
        assert int(sa["learner.step"]) == 4 and float(sa[CENTER].abs().sum()) > 0
    if name == "swav":
        assert int(sa["learner.queue_count"]) == 64


def test_dino_on_a_vit_reads_local_crops_of_another_size():
    cfg = resolve({"model": {"backbone": "vit", "dim": 16, "depth": 1, "heads": 2, "patch_size": 4, "image_size": 8},
                   "learner": {"name": "dino", **SMALL["dino"]}, "tasks": {"views": 2}})
    m = build_model(cfg, (1, 8, 8), Preprocess())
    out = m.learner.loss(m.params, m.buffers, batch(local=2))  # 8-px global views, 4-px local crops
    out.loss.backward()
    assert torch.isfinite(out.loss)
    assert all(m.params[k].grad is not None for k in m.params if k.startswith("encoder."))
