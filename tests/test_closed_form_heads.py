"""Closed-form and convex-optimization heads (R2-D2, MetaOptNet SVM and ridge): the ridge solution against the normal
equations, the SVM dual against scipy's SLSQP on the same QP, the implicit gradient against central finite
differences (float64), the non-convergence path, the learners' logits against direct formulas, and training +
evaluation through the real Trainer on scikit-learn's digits. Tiny tensors on the CPU."""

import json
import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.optimize import minimize

from metassl.config import ConfigError, resolve
from metassl.data import Preprocess, sample_tasks
from metassl.engine.build import build_model
from metassl.learners.heads import (crammer_singer_dual, cs_natural_residual, metaoptnet_ridge_logits, r2d2_logits,
                                    r2d2_weights, ridge_solve, svm_logits)
from metassl.learners.metaoptnet import SVMConvergenceWarning, SVMNotConvergedError, smoothed_cross_entropy

from conftest import make_split

pytestmark = pytest.mark.usefixtures("one_thread")

f64 = torch.float64


def rand_task(t=3, s=7, n=3, d=5, q=4, scale=1.0, seed=0):
    """Random embeddings with shuffled labels, every class present (unequal counts when s % n != 0)."""
    g = torch.Generator().manual_seed(seed)
    zs = torch.randn(t, s, d, generator=g, dtype=f64) * scale
    zq = torch.randn(t, q, d, generator=g, dtype=f64) * scale
    base = torch.arange(s) % n
    ys = torch.stack([base[torch.randperm(s, generator=g)] for _ in range(t)])
    yq = torch.randint(0, n, (t, q), generator=g)
    return zs, ys, zq, yq


# ---------------------------------------------------------------------------------------------------------------
# ridge regression


@pytest.mark.parametrize("s,d", [(6, 9), (12, 4)], ids=["S<D", "S>D"])
def test_ridge_woodbury_and_primal_agree_with_normal_equations(s, d):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, s, d, generator=g, dtype=f64)
    y = torch.randn(3, s, 4, generator=g, dtype=f64)
    lam = 0.7
    ref = torch.stack([torch.linalg.solve(x[t].T @ x[t] + lam * torch.eye(d, dtype=f64), x[t].T @ y[t])
                       for t in range(3)])
    for form in ("always", "never", "auto"):
        w = ridge_solve(x, y, lam, form)
        assert w.shape == (3, d, 4)
        assert torch.allclose(w, ref, atol=1e-10, rtol=1e-9), form
    # the solution is the minimizer: the gradient of the ridge objective vanishes
    grad = x.transpose(1, 2) @ (x @ ref - y) + lam * ref
    assert grad.abs().max() < 1e-10
    with pytest.raises(ValueError, match="woodbury must be one of auto, always, never"):
        ridge_solve(x, y, lam, "sometimes")


def test_r2d2_head_matches_the_papers_formula():
    zs, ys, zq, _ = rand_task(t=2, s=7, n=3, d=5)
    lam, alpha, beta = torch.tensor(2.5, dtype=f64), 3.0, -0.4
    for normalize in (True, False):
        for form in ("always", "never"):
            logits = r2d2_logits(zq, r2d2_weights(zs, ys, 3, lam, normalize, form), alpha, beta)
            for t in range(2):
                x = torch.cat([zs[t], torch.ones(7, 1, dtype=f64)], 1)
                y = F.one_hot(ys[t], 3).to(f64)
                if normalize:  # the reference code divides both by sqrt(S)
                    x, y = x / math.sqrt(7), y / math.sqrt(7)
                w = torch.linalg.inv(x.T @ x + lam * torch.eye(6, dtype=f64)) @ x.T @ y
                ref = alpha * (zq[t] @ w[:5] + w[5]) + beta
                assert torch.allclose(logits[t], ref, atol=1e-10), (normalize, form)


def test_metaoptnet_ridge_matches_reference_formula():
    zs, ys, zq, _ = rand_task(t=2, s=6, n=3, d=8)
    out = metaoptnet_ridge_logits(zq, zs, ys, 3, 50.0)
    for t in range(2):
        k = zs[t] @ zs[t].T
        a = 2.0 * torch.linalg.inv(k + 50.0 * torch.eye(6, dtype=f64)) @ F.one_hot(ys[t], 3).to(f64)
        assert torch.allclose(out[t], zq[t] @ zs[t].T @ a, atol=1e-12)


# ---------------------------------------------------------------------------------------------------------------
# the SVM dual


def scipy_dual(kernel, y, c, rho):
    """The same QP with explicit constraints, by scipy's SLSQP: min 1/2 sum_m a_m^T (K + rho I) a_m - <Y, A>,
    A <= C Y, rows of A sum to 0."""
    s, n = y.shape
    kr = kernel + rho * np.eye(s)

    def f(a):
        m = a.reshape(s, n)
        return 0.5 * np.sum(m * (kr @ m)) - np.sum(m * y)

    def jac(a):
        return (kr @ a.reshape(s, n) - y).ravel()

    rows = np.kron(np.eye(s), np.ones((1, n)))
    cons = [{"type": "eq", "fun": lambda a: a.reshape(s, n).sum(1), "jac": lambda a: rows},
            {"type": "ineq", "fun": lambda a: (c * y).ravel() - a, "jac": lambda a: -np.eye(s * n)}]
    r = minimize(f, np.zeros(s * n), jac=jac, constraints=cons, method="SLSQP",
                 options={"ftol": 1e-15, "maxiter": 2000})
    assert r.success, r.message
    return r.x.reshape(s, n)


@pytest.mark.parametrize("t,s,n,d,scale,c", [(3, 6, 3, 4, 1.0, 0.1), (2, 9, 4, 6, 2.0, 0.1), (2, 10, 5, 3, 3.0, 1.0)])
def test_svm_dual_matches_scipy(t, s, n, d, scale, c):
    zs, ys, zq, _ = rand_task(t, s, n, d, q=5, scale=scale, seed=s)
    sol = crammer_singer_dual(zs, ys, n, c=c, rho=1.0, iters=50, tol=1e-12)
    assert sol.converged and sol.max_residual <= 1e-12 and 1 <= sol.iterations <= 50
    at_bound = free = 0
    for i in range(t):
        k = (zs[i] @ zs[i].T).numpy()
        y = np.eye(n)[ys[i].numpy()]
        ref = scipy_dual(k, y, c, 1.0)
        ours = sol.alpha[i].numpy()
        assert np.abs(ours - ref).max() < 1e-5
        # primal weights w_m = sum_i A_im x_i and query scores
        w_ref = zs[i].numpy().T @ ref
        assert np.abs(zs[i].numpy().T @ ours - w_ref).max() < 1e-5
        assert np.abs(svm_logits(zq[i:i + 1], zs[i:i + 1], sol.alpha[i:i + 1])[0].numpy() - zq[i].numpy() @ w_ref
                      ).max() < 1e-5
        # feasibility of ours, exactly
        assert np.abs(ours.sum(1)).max() < 1e-12 and (ours <= c * y + 1e-12).all()
        at_bound += int((np.abs(ours - c * y) < 1e-9).sum())
        free += int((ours < c * y - 1e-6).sum())
    assert at_bound > 0 and free > 0  # both kinds of entries occur: the active-set logic is exercised


def test_natural_residual_is_zero_only_at_the_solution():
    zs, ys, _, _ = rand_task(2, 6, 3, 4)
    sol = crammer_singer_dual(zs, ys, 3, tol=1e-12)
    k = zs @ zs.transpose(1, 2)
    y = F.one_hot(ys, 3).to(f64)
    assert cs_natural_residual(sol.alpha, k, y, 0.1, 1.0).max() < 1e-12
    bumped = sol.alpha.clone()
    bumped[:, 0, 0] += 1e-3
    bumped[:, 0, 1] -= 1e-3  # still rows summing to 0, but not optimal (or not feasible)
    assert (cs_natural_residual(bumped, k, y, 0.1, 1.0) > 1e-5).all()


def test_svm_implicit_gradient_matches_finite_differences():
    zs, ys, zq, yq = rand_task(2, 8, 4, 5, q=6, scale=1.5, seed=3)
    zs, zq = zs.requires_grad_(), zq.requires_grad_()
    scale = torch.tensor(2.0, dtype=f64, requires_grad=True)

    def loss_fn(a, b, sc):
        sol = crammer_singer_dual(a, ys, 4, c=0.1, rho=1.0, iters=60, tol=1e-13)
        assert sol.converged
        return F.cross_entropy((sc * svm_logits(b, a, sol.alpha)).reshape(-1, 4), yq.reshape(-1))

    gs, gq, gsc = torch.autograd.grad(loss_fn(zs, zq, scale), [zs, zq, scale])
    assert gs.abs().sum() > 0 and gq.abs().sum() > 0
    eps = 1e-6
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for which in ("support", "query", "scale", "all"):
            v = torch.randn(zs.shape, generator=gen, dtype=f64) if which in ("support", "all") else torch.zeros_like(zs)
            w = torch.randn(zq.shape, generator=gen, dtype=f64) if which in ("query", "all") else torch.zeros_like(zq)
            u = 1.0 if which in ("scale", "all") else 0.0
            fd = (loss_fn(zs + eps * v, zq + eps * w, scale + eps * u)
                  - loss_fn(zs - eps * v, zq - eps * w, scale - eps * u)) / (2 * eps)
            an = (gs * v).sum() + (gq * w).sum() + gsc * u
            assert float(fd) == pytest.approx(float(an), rel=1e-6, abs=1e-9), which


def test_svm_gradient_is_not_the_gradient_with_the_solution_held_fixed():
    """The meta-gradient flows through the solver: it differs from the gradient with A detached."""
    zs, ys, zq, yq = rand_task(2, 8, 4, 5, q=6, scale=1.5, seed=3)
    zs = zs.requires_grad_()
    sol = crammer_singer_dual(zs, ys, 4, tol=1e-12)
    full = torch.autograd.grad(F.cross_entropy(svm_logits(zq, zs, sol.alpha).reshape(-1, 4), yq.reshape(-1)), zs)[0]
    fixed = torch.autograd.grad(F.cross_entropy(svm_logits(zq, zs, sol.alpha.detach()).reshape(-1, 4),
                                                yq.reshape(-1)), zs)[0]
    assert (full - fixed).abs().max() > 1e-4


# ---------------------------------------------------------------------------------------------------------------
# the learners


def cfg_for(learner, ways=3, shots=2, queries=2, **model):
    return resolve({"model": {"backbone": "mlp", "hidden": [16, 8], "image_size": 8, **model},
                    "learner": learner, "tasks": {"ways": ways, "shots": shots, "queries": queries}})


def make(learner, ways=3, seed=0):
    torch.manual_seed(seed)
    split = make_split(num_classes=10, per_class=6)
    m = build_model(cfg_for(learner, ways), split.image_shape, Preprocess())
    b = sample_tasks(split, ways, 2, 2, 3, torch.Generator().manual_seed(seed)).map_images(Preprocess())
    return m, b, split


def test_r2d2_learner_logits_and_parameters():
    m, b, _ = make({"name": "r2d2", "lambda_init": 3.0, "scale_init": 2.0, "bias_init": 0.5})
    assert {k: tuple(v.shape) for k, v in m.params.items() if k.startswith("learner.")} == {
        "learner.scale": (1,), "learner.bias": (1,), "learner.lambda": (1,)}
    m.train(False)
    with torch.no_grad():
        logits = m.predict(b.support_x, b.support_y, b.query_x, 3)
        zs = m.learner.embed(m.params, m.buffers, b.support_x).double()
        zq = m.learner.embed(m.params, m.buffers, b.query_x).double()
    s = zs.shape[1]
    for t in range(b.num_tasks):
        x = torch.cat([zs[t], torch.ones(s, 1, dtype=f64)], 1) / math.sqrt(s)
        y = F.one_hot(b.support_y[t], 3).to(f64) / math.sqrt(s)
        w = torch.linalg.solve(x.T @ x + 3.0 * torch.eye(x.shape[1], dtype=f64), x.T @ y)
        ref = 2.0 * (zq[t] @ w[:-1] + w[-1]) + 0.5
        assert torch.allclose(logits[t].double(), ref, atol=1e-4, rtol=1e-4)
    # every learned scalar gets a gradient; fixed lambda is a buffer
    out = m.learner.loss(m.params, m.buffers, b)
    g = torch.autograd.grad(out.loss, [m.params[k] for k in ("learner.scale", "learner.bias", "learner.lambda")])
    assert all(float(x.abs().sum()) > 0 for x in g)
    assert float(out.metrics["lambda"]) == pytest.approx(3.0)
    fixed, _, _ = make({"name": "r2d2", "learn_lambda": False})
    assert "learner.lambda" not in fixed.params and float(fixed.buffers["learner.lambda"]) == 50.0


@pytest.mark.parametrize("head", ["svm", "ridge"])
def test_metaoptnet_learner_logits_match_direct_computation(head):
    m, b, _ = make({"name": "metaoptnet", "head": head, "scale_init": 1.7, "svm_tol": 1e-10})
    m.train(False)
    with torch.no_grad():
        logits = m.predict(b.support_x, b.support_y, b.query_x, 3)
        zs = m.learner.embed(m.params, m.buffers, b.support_x).double()
        zq = m.learner.embed(m.params, m.buffers, b.query_x).double()
    for t in range(b.num_tasks):
        k = (zs[t] @ zs[t].T).numpy()
        y = np.eye(3)[b.support_y[t].numpy()]
        if head == "svm":
            a = scipy_dual(k, y, 0.1, 1.0)
        else:
            a = 2.0 * np.linalg.solve(k + 50.0 * np.eye(len(k)), y)
        ref = 1.7 * zq[t].numpy() @ zs[t].numpy().T @ a
        assert np.abs(logits[t].double().numpy() - ref).max() < 1e-4 * max(1.0, np.abs(ref).max())


@pytest.mark.parametrize("learner", [{"name": "r2d2"}, {"name": "metaoptnet"}, {"name": "metaoptnet", "head": "ridge"}],
                         ids=["r2d2", "metaoptnet_svm", "metaoptnet_ridge"])
def test_trains_on_toy_tasks_and_evaluates_other_ways(learner):
    m, _, split = make(learner)
    m.train(True)
    opt = torch.optim.Adam(m.params.values(), lr=1e-2)
    g = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(40):
        b = sample_tasks(split, 3, 2, 2, 4, g).map_images(Preprocess())
        out = m.learner.loss(m.params, m.buffers, b)
        assert 0.0 <= float(out.metrics["accuracy"]) <= 1.0
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(out.loss.item())
    # the toy images carry their class id in pixel 0: a learner must beat its start quickly
    assert sum(losses[-8:]) / 8 < sum(losses[:8]) / 8 * 0.8
    m.train(False)
    b = sample_tasks(split, 5, 1, 2, 2).map_images(Preprocess())
    with torch.no_grad():
        assert m.predict(b.support_x, b.support_y, b.query_x, 5).shape == (2, 10, 5)


def test_label_smoothing_is_the_reference_formula():
    logits = torch.randn(6, 4, dtype=f64)
    labels = torch.tensor([0, 3, 1, 1, 2, 0])
    t = torch.full((6, 4), 0.1 / 3, dtype=f64)
    t[torch.arange(6), labels] = 0.9
    ref = -(t * F.log_softmax(logits, -1)).sum(-1).mean()
    assert float(smoothed_cross_entropy(logits, labels, 0.1)) == pytest.approx(float(ref), abs=1e-12)
    assert float(smoothed_cross_entropy(logits, labels, 0.0)) == pytest.approx(float(F.cross_entropy(logits, labels)))


# ---------------------------------------------------------------------------------------------------------------
# the SVM that does not converge is reported


def test_nonconvergence_warns_or_raises_naming_the_residual():
    m, b, _ = make({"name": "metaoptnet", "svm_iters": 1, "svm_tol": 1e-20})
    with pytest.warns(SVMConvergenceWarning, match=r"KKT residual \S+ > learner\.svm_tol=1e-20 .*learner\.svm_iters"):
        out = m.learner.loss(m.params, m.buffers, b)
    assert float(out.metrics["svm_residual"]) > 1e-20 and float(out.metrics["svm_iterations"]) == 1
    m.train(False)
    with pytest.warns(SVMConvergenceWarning, match="svm_iters=1"):
        with torch.no_grad():
            m.predict(b.support_x, b.support_y, b.query_x, 3)
    err, b, _ = make({"name": "metaoptnet", "svm_iters": 1, "svm_tol": 1e-20, "on_nonconvergence": "error"})
    with pytest.raises(SVMNotConvergedError, match=r"KKT residual \S+ > learner\.svm_tol=1e-20"):
        err.learner.loss(err.params, err.buffers, b)
    # converged: no warning, the logged residual is within the tolerance
    ok, b, _ = make({"name": "metaoptnet"})
    with warnings.catch_warnings():
        warnings.simplefilter("error", SVMConvergenceWarning)
        out = ok.learner.loss(ok.params, ok.buffers, b)
    assert 0.0 <= float(out.metrics["svm_residual"]) <= 1e-6


def test_reported_residual_is_the_residual_of_the_returned_solution():
    zs, ys, _, _ = rand_task(2, 12, 4, 6, scale=4.0, seed=5)
    sol = crammer_singer_dual(zs, ys, 4, iters=1, tol=1e-6)
    k = zs @ zs.transpose(1, 2)
    direct = cs_natural_residual(sol.alpha.detach(), k, F.one_hot(ys, 4).to(f64), 0.1, 1.0)
    assert torch.allclose(sol.residual, direct, atol=1e-14) and sol.converged == bool((direct <= 1e-6).all())


def test_bad_config_and_labels_name_the_key():
    with pytest.raises(ConfigError, match="learner.head must be one of svm, ridge"):
        cfg_for({"name": "metaoptnet", "head": "lasso"})
    with pytest.raises(ConfigError, match=r"learner.svm_c must be in \[1e-08"):
        cfg_for({"name": "metaoptnet", "svm_c": 0})
    with pytest.raises(ConfigError, match="learner.woodbury must be one of auto, always, never"):
        cfg_for({"name": "r2d2", "woodbury": "sometimes"})
    zs, ys, _, _ = rand_task(1, 6, 3, 4)
    with pytest.raises(ValueError, match=r"labels must lie in 0..1 for 2-way tasks"):
        crammer_singer_dual(zs, ys, 2)


# ---------------------------------------------------------------------------------------------------------------
# the real Trainer and evaluation on digits


def digits_cfg(learner):
    return resolve({
        "name": "t", "data": {"dataset": "digits", "train_split": "train", "val_split": None, "test_split": "test"},
        "tasks": {"ways": 3, "shots": 2, "queries": 2, "tasks_per_batch": 2},
        "model": {"backbone": "conv4", "hidden": 8, "depth": 2},
        "learner": learner, "optim": {"name": "adam", "lr": 0.003},
        "train": {"steps": 2, "log_every": 1, "val_every": 0, "checkpoint_every": 1, "progress": False,
                  "tensorboard": False, "report": False},
        "eval": {"ways": 3, "shots": [1], "queries": 3, "episodes": 10, "batch_episodes": 5}})


@pytest.mark.parametrize("learner", [{"name": "r2d2"}, {"name": "metaoptnet"}, {"name": "metaoptnet", "head": "ridge"}],
                         ids=["r2d2", "metaoptnet_svm", "metaoptnet_ridge"])
def test_trainer_two_steps_then_evaluate_run(learner, tmp_path):
    from metassl.engine.evaluate import evaluate_run
    from metassl.engine.trainer import train

    res = train(digits_cfg(learner), tmp_path / "run", echo=lambda *a: None)
    assert res.steps == 2 and math.isfinite(res.final_loss)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if "accuracy" in r and "loss" in r]
    assert len(train_rows) == 2
    if learner["name"] == "metaoptnet" and learner.get("head", "svm") == "svm":
        assert all(0.0 <= r["svm_residual"] <= 1e-6 for r in train_rows)
    _, _, results = evaluate_run(tmp_path / "run", ways=4, episodes=10, device="cpu")  # other ways than training
    assert len(results) == 1 and 0.0 <= results[0].accuracy <= 100.0 and results[0].protocol["ways"] == 4
