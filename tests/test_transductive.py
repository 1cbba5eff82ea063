"""Transductive inference (metassl.eval.transductive): each method against a direct computation of its paper's
formula on tiny tensors, no dependence on the order (hence on the labels) of the queries, accuracy on separable toy
features at least that of nearest-prototype, and `metassl eval / compare --transductive` on a tiny digits run."""

import json
import math

import numpy as np
import pytest
import torch

from metassl.cli.main import main
from metassl.eval.transductive import (method_config, method_spec, nearest_prototype_logprobs, parse_options,
                                       transductive_predict)
from metassl.eval.transductive import bdcspn, laplacianshot, ptmap, softkmeans, tim
from metassl.errors import ConfigError
from metassl.registry import TRANSDUCTIVE

pytestmark = pytest.mark.usefixtures("one_thread")

FEATURE_METHODS = ("bdcspn", "laplacianshot", "ptmap", "softkmeans", "tim")
ALL_METHODS = FEATURE_METHODS + ("finetune",)


def episode(t=2, ways=3, shots=2, queries=4, d=5, seed=0, spread=1.0, noise=0.3, dtype=torch.float64):
    """Features of T episodes: class centers (non-negative, like ReLU features) plus noise; queries sorted by
    class (as `eval_episodes` gives them)."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.rand(t, ways, d, generator=g, dtype=dtype) * spread
    sy = torch.arange(ways).repeat_interleave(shots).expand(t, -1)
    qy = torch.arange(ways).repeat_interleave(queries).expand(t, -1)
    take = lambda y: (torch.gather(centers, 1, y[..., None].expand(-1, -1, d))  # noqa: E731
                      + noise * torch.randn(t, y.shape[1], d, generator=g, dtype=dtype)).abs()
    return take(sy), sy, take(qy), qy


def test_registry_lists_every_method_with_its_spec():
    assert set(ALL_METHODS) <= set(TRANSDUCTIVE)
    assert method_spec("ptmap").assumes_balanced and method_spec("tim").assumes_balanced
    assert method_spec("finetune").needs_encoder and not method_spec("ptmap").needs_encoder
    assert method_config("ptmap", {"n_iter": "7"}).n_iter == 7
    with pytest.raises(ConfigError, match="transductive.ptmap.alpha"):
        method_config("ptmap", {"alpha": 2.0})
    with pytest.raises(ConfigError, match="transductive.ptmap.nitre"):
        method_config("ptmap", {"nitre": 3})
    with pytest.raises(ConfigError, match="Did you mean ptmap"):
        method_spec("ptmp")
    assert parse_options(["n_iter=3", "unbalanced=true", "block=last"]) == {"n_iter": 3, "unbalanced": True,
                                                                           "block": "last"}
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_options(["n_iter"])


# --------------------------------------------------------------------------------------------------------------
# PT-MAP


def test_sinkhorn_meets_both_marginals():
    g = torch.Generator().manual_seed(1)
    kernel = torch.rand(3, 6, 3, generator=g, dtype=torch.float64) + 0.05
    r, c = torch.ones(3, 6, dtype=torch.float64), torch.full((3, 3), 2.0, dtype=torch.float64)
    p = ptmap.sinkhorn(kernel, r, c, iters=5000, tol=1e-12)
    assert torch.allclose(p.sum(2), r, atol=1e-9) and torch.allclose(p.sum(1), c, atol=1e-9)
    # Sinkhorn only rescales rows and columns: p = diag(a) K diag(b), so p / K has rank one
    ratio = p / kernel
    assert torch.allclose(ratio[:, :, :1] * ratio[:, :1, :] / ratio[:, :1, :1], ratio, atol=1e-9)


def ptmap_reference(zs, ys, zq, ways, beta=0.5, lam=10.0, alpha=0.2, n_iter=20):
    """PT-MAP on one episode, written out in numpy (float64, loops over classes)."""
    pw = lambda x: np.sign(x) * (np.abs(x) + 1e-6) ** beta  # noqa: E731
    nrm = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    s, q = nrm(pw(zs)), nrm(pw(zq))
    s, q = nrm(s - s.mean(0)), nrm(q - q.mean(0))
    mus = np.stack([s[ys == c].mean(0) for c in range(ways)])

    def transport(mus):
        k = np.exp(-lam * ((q[:, None] - mus[None]) ** 2).sum(-1))
        k = k / k.sum()
        for _ in range(1000):
            rows = k.sum(1)
            k = k / rows[:, None]
            k = k * (len(q) / ways / k.sum(0))[None]
            if np.abs(k.sum(1) - 1).max() < 1e-12:
                break
        return k

    for _ in range(n_iter):
        p = transport(mus)
        est = np.stack([(s[ys == c].sum(0) + (p[:, c:c + 1] * q).sum(0)) / ((ys == c).sum() + p[:, c].sum())
                        for c in range(ways)])
        mus = mus + alpha * (est - mus)
    p = transport(mus)
    return np.log(p / p.sum(1, keepdims=True))


def test_ptmap_matches_a_direct_computation_and_keeps_the_classes_balanced():
    zs, sy, zq, _ = episode(t=2, noise=0.5)
    cfg = method_config("ptmap", {"tol": 1e-13, "sinkhorn_iters": 1000})
    out = ptmap.run(zs, sy, zq, 3, None, cfg)
    for t in range(2):
        ref = ptmap_reference(zs[t].numpy(), sy[t].numpy(), zq[t].numpy(), 3)
        np.testing.assert_allclose(out[t].numpy(), ref, atol=1e-6)
    p = out.exp()
    assert torch.allclose(p.sum(-1), torch.ones(2, 12, dtype=p.dtype), atol=1e-9)
    assert torch.allclose(p.sum(1), torch.full((2, 3), 4.0, dtype=p.dtype), atol=1e-6)  # Q / N per class
    # unbalanced: no class marginal, rows still probabilities
    pu = ptmap.run(zs, sy, zq, 3, None, method_config("ptmap", {"unbalanced": True})).exp()
    assert torch.allclose(pu.sum(-1), torch.ones(2, 12, dtype=p.dtype), atol=1e-9)
    assert not torch.allclose(pu.sum(1), torch.full((2, 3), 4.0, dtype=p.dtype), atol=1e-3)


# --------------------------------------------------------------------------------------------------------------
# TIM


def tim_objective_reference(w, zs, ys, zq, temperature=15.0, weights=(0.1, 1.0, 0.1)):
    """One episode's TIM objective with loops."""
    def probs(z):
        out = []
        for x in z:
            logit = torch.stack([-temperature / 2 * ((x - wc) ** 2).sum() for wc in w])
            out.append(torch.softmax(logit, 0))
        return torch.stack(out)

    ps = probs(zs)
    ce = -sum(torch.log(ps[i, ys[i]]) for i in range(len(ys))) / len(ys)
    pq = probs(zq)
    marg = pq.mean(0)
    h_marg = -(marg * marg.log()).sum()
    h_cond = -(pq * pq.log()).sum(1).mean()
    return weights[0] * ce - (weights[1] * h_marg - weights[2] * h_cond)


def test_tim_objective_matches_the_formula_and_decreases():
    zs, sy, zq, _ = episode(t=2, noise=0.6)
    zs, zq = tim.l2n(zs), tim.l2n(zq)
    cfg = method_config("tim", {"iters": 60, "lr": 1e-2})
    w0 = tim.prototypes(zs, sy, 3)
    obj = tim.tim_objective(w0, zs, sy, zq, 3, cfg)
    for t in range(2):
        assert obj[t].item() == pytest.approx(tim_objective_reference(w0[t], zs[t], sy[t], zq[t]).item(), abs=1e-9)
    w = tim.fit(zs, sy, zq, 3, cfg)
    after = tim.tim_objective(w, zs, sy, zq, 3, cfg)
    assert (after < obj - 1e-4).all()
    # the marginal term is what assumes balance: without it the objective is CE + conditional entropy only
    cfg0 = method_config("tim", {"marginal_weight": 0.0})
    p = torch.softmax(tim.tim_logits(w0, zq, 15.0), -1)
    ce = tim.tim_objective(w0, zs, sy, zq, 3, method_config("tim", {"marginal_weight": 0, "conditional_weight": 0}))
    assert torch.allclose(tim.tim_objective(w0, zs, sy, zq, 3, cfg0), ce + 0.1 * tim.entropy(p).mean(1))


# --------------------------------------------------------------------------------------------------------------
# BD-CSPN


def test_bdcspn_rectified_prototypes_by_hand():
    zs, sy, zq, _ = episode(t=1, ways=2, shots=2, queries=2, d=3, noise=0.4)
    s, q, ys = zs[0], zq[0], sy[0]
    eps = 10.0
    cos = lambda a, b: float(a @ b / a.norm() / b.norm())  # noqa: E731
    q_shift = q + (s.mean(0) - q.mean(0))
    protos = [s[ys == c].mean(0) for c in range(2)]
    pred = [int(np.argmax([cos(x, p) for p in protos])) for x in q_shift]
    for z in (0, 1):  # all pseudo-labelled queries, then the most confident one per class
        conf = [max(np.exp(eps * cos(x, p)) for p in protos) / sum(np.exp(eps * cos(x, p)) for p in protos)
                for x in q_shift]
        rect = []
        for c in range(2):
            members = [x for x, y in zip(s, ys) if y == c]
            chosen = [i for i in range(len(q_shift)) if pred[i] == c]
            if z:
                chosen = sorted(chosen, key=lambda i: -conf[i])[:z]
            members += [q_shift[i] for i in chosen]
            wts = np.array([np.exp(eps * cos(x, protos[c])) for x in members])
            wts = wts / wts.sum()
            rect.append(sum(float(wi) * x for wi, x in zip(wts, members)))
        rect = torch.stack(rect)
        got = bdcspn.rectify(zs, sy, bdcspn.shift_unlabeled(zs, zq), 2, eps, z)[0]
        assert torch.allclose(got, rect, atol=1e-9)
        out = bdcspn.run(zs, sy, zq, 2, None, method_config("bdcspn", {"pseudo_per_class": z}))[0]
        logits = torch.tensor([[eps * cos(x, p) for p in rect] for x in q_shift], dtype=torch.float64)
        assert torch.allclose(out, torch.log_softmax(logits, -1), atol=1e-9)


# --------------------------------------------------------------------------------------------------------------
# soft k-means


def test_softkmeans_one_step_by_hand_with_and_without_distractor():
    zs, sy, zq, _ = episode(t=1, ways=2, shots=2, queries=2, d=3, noise=0.4)
    s, q, ys = zs[0], zq[0], sy[0]
    p0 = [s[ys == c].mean(0) for c in range(2)]
    for distractor in (False, True):
        refined = []
        logits = np.array([[-float(((x - p) ** 2).sum()) for p in p0] + ([-float((x ** 2).sum()) / 0.25 -
                                                                          math.log(0.5)] if distractor else []) for x in q])
        w = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
        for c in range(2):
            num = s[ys == c].sum(0) + sum(float(w[j, c]) * q[j] for j in range(len(q)))
            refined.append(num / ((ys == c).sum() + w[:, c].sum()))
        refined = torch.stack(refined)
        got = softkmeans.refine(zs, sy, zq, 2, 1, distractor, 0.5)[0]
        assert torch.allclose(got, refined, atol=1e-9)
        cfg = method_config("softkmeans", {"distractor": distractor, "distractor_radius": 0.5})
        out = softkmeans.run(zs, sy, zq, 2, None, cfg)[0]
        ref = torch.log_softmax(-((q[:, None] - refined[None]) ** 2).sum(-1), -1)
        assert torch.allclose(out, ref, atol=1e-9)
    # zero steps: plain nearest prototype
    out = softkmeans.run(zs, sy, zq, 2, None, method_config("softkmeans", {"steps": 0}))
    assert torch.allclose(out, nearest_prototype_logprobs(zs, sy, zq, 2), atol=1e-12)


# --------------------------------------------------------------------------------------------------------------
# LaplacianShot


def test_laplacianshot_graph_and_bound_decreasing():
    zs, sy, zq, _ = episode(t=3, ways=3, shots=1, queries=5, noise=0.5)
    w = laplacianshot.knn_graph(zq, 3)
    assert torch.allclose(w, w.transpose(1, 2)) and (w.diagonal(dim1=1, dim2=2) == 0).all()
    d = ((zq[:, :, None] - zq[:, None]) ** 2).sum(-1)
    for t in range(3):
        for i in range(15):
            order = [j for j in d[t, i].argsort().tolist() if j != i][:3]
            assert all(w[t, i, j] > 0 for j in order)  # its 3 nearest neighbours are linked
    m = laplacianshot.prototypes(zs, sy, 3)
    unary = laplacianshot.sq_distances(zq, m)
    ys = laplacianshot.bound_updates(unary, w, 0.7, 20)
    energies = torch.stack([laplacianshot.energy(y, unary, w, 0.7) for y in ys])  # [steps + 1, T]
    assert (energies[1:] <= energies[:-1] + 1e-9).all() and (energies[-1] < energies[0]).all()
    # each update is the exact minimizer of the linear bound: softmax(-a + lam W Y)
    assert torch.allclose(ys[1], torch.softmax(-unary + 0.7 * w @ ys[0], -1))


# --------------------------------------------------------------------------------------------------------------
# every feature-level method


@pytest.mark.parametrize("name", FEATURE_METHODS)
def test_predictions_do_not_depend_on_query_order(name):
    """Queries arrive sorted by class; a method that read positions (or labels) would change its predictions
    when they are shuffled."""
    zs, sy, zq, _ = episode(t=2, noise=0.5, dtype=torch.float32)
    cfg = method_config(name, {"iters": 50} if name == "tim" else {})
    out = method_spec(name).run(zs, sy, zq, 3, None, cfg)
    perm = torch.randperm(zq.shape[1], generator=torch.Generator().manual_seed(3))
    out_p = method_spec(name).run(zs, sy, zq[:, perm], 3, None, cfg)
    assert out.shape == (2, 12, 3) and torch.isfinite(out).all()
    assert torch.allclose(out[:, perm].exp(), out_p.exp(), atol=1e-4)  # probabilities (float32 rounding)
    # an unlabeled pool is accepted and only the queries are classified
    pool = method_spec(name).run(zs, sy, zq, 3, zq[:, :5] + 0.01, cfg)
    assert pool.shape == (2, 12, 3) and torch.isfinite(pool).all()


@pytest.mark.parametrize("name", FEATURE_METHODS)
def test_a_query_set_of_one_image(name):
    zs, sy, zq, qy = episode(t=3, ways=3, shots=2, queries=1, d=6, seed=5, noise=0.1, dtype=torch.float32)
    zq, qy = zq[:, 1:2], qy[:, 1:2]  # one query (class 1) per episode
    # PT-MAP's balanced marginals cannot hold for one image (they force a uniform assignment): unbalanced
    options = {"ptmap": {"center": False, "unbalanced": True}, "bdcspn": {"shift": False},
               "laplacianshot": {"shift": False}, "tim": {"iters": 20}}.get(name, {})
    out = method_spec(name).run(zs, sy, zq, 3, None, method_config(name, options))
    assert out.shape == (3, 1, 3) and torch.isfinite(out).all()
    assert torch.allclose(out.exp().sum(-1), torch.ones(3, 1), atol=1e-5)
    assert (out.argmax(-1) == qy).all()


@pytest.mark.parametrize("name", FEATURE_METHODS)
def test_at_least_as_accurate_as_nearest_prototype_on_separable_features(name):
    zs, sy, zq, qy = episode(t=20, ways=5, shots=1, queries=6, d=16, seed=4, spread=1.0, noise=0.25,
                             dtype=torch.float32)
    base = (nearest_prototype_logprobs(zs, sy, zq, 5).argmax(-1) == qy).float().mean().item()
    out = method_spec(name).run(zs, sy, zq, 5, None, method_config(name, {}))
    acc = (out.argmax(-1) == qy).float().mean().item()
    assert base < 1.0  # the toy task is not trivial
    assert acc >= base, f"{name}: {acc:.3f} < nearest prototype {base:.3f}"


# --------------------------------------------------------------------------------------------------------------
# through a trained run: the engine and the CLI


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    from metassl.config import apply_overrides, resolve
    from metassl.engine.trainer import train

    out = tmp_path_factory.mktemp("transductive") / "protonet"
    cfg = resolve(apply_overrides({}, [
        "learner.name=protonet", "data.dataset=digits", "data.train_split=train", "data.val_split=null",
        "data.test_split=test", "model.backbone=conv4", "model.hidden=8", "model.depth=2", "tasks.ways=3",
        "tasks.shots=2", "tasks.queries=2", "train.steps=20", "train.progress=false", "train.tensorboard=false",
        "train.report=false", "eval.ways=3", "eval.shots=[1]", "eval.queries=5", "eval.episodes=6"]))
    train(cfg, out)
    return out


def test_finetune_leaves_the_model_alone_and_ignores_query_order(run_dir):
    from metassl.data.episodic import eval_episodes
    from metassl.engine.build import load_model
    from metassl.engine.frozen import load_run_split

    model, _ = load_model(run_dir)
    split = load_run_split(model, None, "test", None)
    tasks = eval_episodes(split, 3, 1, 5, 0, 0, 2).map_images(model.preprocess)
    before = {k: v.clone() for k, v in model.state_tensors().items()}
    predict = transductive_predict(model.learner, model.params, model.buffers, "finetune", {"lr": 1e-2, "steps": 5})
    with torch.no_grad():
        out = predict(tasks.support_x, tasks.support_y, tasks.query_x, 3)
        perm = torch.randperm(15, generator=torch.Generator().manual_seed(0))
        out_p = predict(tasks.support_x, tasks.support_y, tasks.query_x[:, perm], 3)
    assert out.shape == (2, 15, 3) and torch.allclose(out[:, perm], out_p, atol=1e-4)
    assert all(torch.equal(before[k], v) for k, v in model.state_tensors().items())
    # the fine-tuned copy differs from the untouched classifier (steps=0)
    predict0 = transductive_predict(model.learner, model.params, model.buffers, "finetune", {"steps": 0})
    with torch.no_grad():
        assert not torch.allclose(predict0(tasks.support_x, tasks.support_y, tasks.query_x, 3), out, atol=1e-3)


@pytest.mark.parametrize("name", ALL_METHODS)
def test_cli_eval_transductive(run_dir, name, capsys):
    args = ["eval", str(run_dir), "--ways", "3", "--shots", "1", "--episodes", "6", "--transductive", name]
    if name == "tim":
        args += ["--transductive-option", "iters=100"]
    assert main(args + ["--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert 0.0 <= d["accuracy"] <= 100.0 and math.isfinite(d["accuracy"])
    p = d["protocol"]
    assert p["transductive"] == name and p["query_set_size"] == 15 and p["query_balance"].startswith("balanced")
    assert p["transductive_options"] == json.loads(json.dumps(
        __import__("metassl.config", fromlist=["to_plain"]).to_plain(
            method_config(name, {"iters": 100} if name == "tim" else {}))))
    assert main(args) == 0
    assert f"transductive {name} on query sets of 15 images" in capsys.readouterr().out


def test_cli_compare_pairs_inductive_and_transductive(run_dir, capsys):
    r = str(run_dir)
    assert main(["compare", r, r, "--ways", "3", "--shots", "1", "--episodes", "6", "--transductive", "none",
                 "ptmap", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert "transductive" not in rows[0]["protocol"] and rows[1]["protocol"]["transductive"] == "ptmap"
    assert rows[1]["paired_vs_first"]["episodes"] == 6
    assert main(["compare", r, r, "--ways", "3", "--shots", "1", "--episodes", "6", "--transductive", "none",
                 "softkmeans"]) == 0
    out = capsys.readouterr().out
    assert "protonet+softkmeans" in out and "transductive rows" in out


def test_cli_refuses_bad_transductive_input(run_dir, capsys):
    r = str(run_dir)
    assert main(["eval", r, "--episodes", "2", "--transductive", "ptmapp"]) == 2
    assert "Did you mean ptmap" in capsys.readouterr().err
    assert main(["eval", r, "--episodes", "2", "--transductive", "ptmap", "--transductive-option",
                 "alpha=3"]) == 2
    assert "transductive.ptmap.alpha" in capsys.readouterr().err
    assert main(["eval", r, "--episodes", "2", "--transductive-option", "alpha=0.1"]) == 2
    assert "needs --transductive" in capsys.readouterr().err
    assert main(["eval", r, "--protocol", "knn", "--transductive", "ptmap"]) == 2
    assert "few-shot evaluation only" in capsys.readouterr().err
    assert main(["compare", r, r, "--episodes", "2", "--transductive", "ptmap", "tim", "bdcspn"]) == 2
    assert "one per run" in capsys.readouterr().err


@pytest.mark.parametrize("learner", ["maml", "simclr"])
def test_any_learner_family_gets_transductive_results(learner, tmp_path):
    """The methods read the encoder's features, so a MAML-family run (batch-statistics BatchNorm, per-episode
    embedding) and a self-supervised run evaluate the same way as ProtoNet."""
    from metassl.config import apply_overrides, resolve
    from metassl.engine.evaluate import evaluate_run
    from metassl.engine.trainer import train
    from metassl.registry import LEARNERS

    extra = [] if LEARNERS[learner].default_source == "labeled" else ["tasks.batch_size=16"]
    cfg = resolve(apply_overrides({}, [
        f"learner.name={learner}", "data.dataset=digits", "data.train_split=train", "data.val_split=null",
        "data.test_split=test", "model.backbone=conv4", "model.hidden=8", "model.depth=2",
        "model.track_running_stats=false", "tasks.ways=3", "tasks.shots=2", "tasks.queries=2", "train.steps=2",
        "train.progress=false", "train.tensorboard=false", "train.report=false", "optim.name=adam"] + extra))
    train(cfg, tmp_path / "run")
    for name in ("softkmeans", "ptmap"):
        _, _, (r,) = evaluate_run(tmp_path / "run", ways=3, shots=1, queries=3, episodes=4, transductive=name)
        assert r.protocol["transductive"] == name and 0.0 <= r.accuracy <= 100.0
        assert len(r.per_episode_accuracy) == 4 and r.protocol["query_set_size"] == 9


# --------------------------------------------------------------------------------------------------------------
# TIM-ADM


def test_tim_adm_updates_by_hand_and_the_objective_decreases():
    zs, sy, zq, qy = episode(t=2, noise=0.5)
    zs, zq = tim.l2n(zs), tim.l2n(zq)
    cfg = method_config("tim", {"solver": "adm", "adm_iters": 30})
    lam, a, g, tau = 0.1, 0.1, 1.0, 15.0
    w = tim.prototypes(zs, sy, 3)
    p = torch.softmax(tim.tim_logits(w, zq, tau), -1)
    q = tim.adm_assignments(p, cfg)
    new = tim.adm_weights(w, zs, sy, zq, q, 3, cfg)
    for t in range(2):
        pn, s, x, ys, wt = p[t].numpy(), zs[t].numpy(), zq[t].numpy(), sy[t].numpy(), w[t].numpy()
        # q_ik ~ p_ik^(1+a) / (sum_j p_jk^(1+a))^(g/(1+g)): with g = 1 the paper's square root
        qn = pn ** (1 + a) / np.sqrt((pn ** (1 + a)).sum(0, keepdims=True))
        qn = qn / qn.sum(1, keepdims=True)
        assert np.allclose(q[t].numpy(), qn, atol=1e-10)
        ps = torch.softmax(tim.tim_logits(w[t:t + 1], zs[t:t + 1], tau), -1)[0].numpy()
        for k in range(3):
            yk = (ys == k).astype(float)
            num = lam / (1 + a) * sum(yk[i] * s[i] + ps[i, k] * (wt[k] - s[i]) for i in range(len(s)))
            num = num + len(s) / len(x) * sum(qn[i, k] * x[i] + pn[i, k] * (wt[k] - x[i]) for i in range(len(x)))
            den = lam / (1 + a) * yk.sum() + len(s) / len(x) * qn[:, k].sum()
            assert np.allclose(new[t, k].numpy(), num / den, atol=1e-9)
    # the TIM objective (the mutual-information one TIM-GD minimizes) goes down under the ADM iterations
    before = tim.tim_objective(w, zs, sy, zq, 3, cfg)
    after = tim.tim_objective(tim.fit_adm(zs, sy, zq, 3, cfg), zs, sy, zq, 3, cfg)
    assert (after < before - 1e-4).all()
    out = method_spec("tim").run(zs, sy, zq, 3, None, cfg)
    assert (out.argmax(-1) == qy).float().mean() >= (nearest_prototype_logprobs(zs, sy, zq, 3).argmax(-1) == qy
                                                      ).float().mean()


def test_report_pairs_transductive_methods_with_the_inductive_classifier(run_dir, capsys):
    assert main(["report", str(run_dir), "--episodes", "4", "--transductive", "softkmeans", "ptmap"]) == 0
    rows = json.loads((run_dir / "report" / "transductive.json").read_text())
    assert [r["protocol"].get("transductive") for r in rows] == [None, "softkmeans", "ptmap"]
    assert rows[0]["paired_vs_first"] is None and rows[2]["paired_vs_first"]["episodes"] == 4
    page = (run_dir / "report" / "report.html").read_text()
    assert "Transductive inference" in page and "query images together" in page
