"""Reptile's inner Adam state (`learner.inner_state`): `carry` is the reference code's one TensorFlow Adam
(beta1 = 0) whose moments and step count run on across the tasks of a meta-batch, sequentially, and across
meta-steps (openai/supervised-reptile: `Reptile.train_step` restores only the trainable variables around a task);
evaluation starts each episode from that state and keeps nothing (`Reptile.evaluate` restores all variables);
`reset` is a fresh Adam per task. Hand-written references on tiny models, the engine, and a resumed training run."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from metassl.config import ConfigError, resolve
from metassl.data import Preprocess, TaskBatch
from metassl.engine.build import build_model, load_model
from metassl.engine.meta import StepRunner
from metassl.learners.base import sub

ADAM = "learner.inner_adam."
B2, EPS = 0.999, 1e-8
# no BatchNorm in the tiny model: it makes the gradient of the bias before it zero in theory, i.e. rounding noise in
# practice, which Adam's normalization turns into steps of either sign
MLP = {"backbone": "mlp", "hidden": [12, 6], "image_size": 4, "norm": "none", "track_running_stats": False}
LR, STEPS, WAYS = 0.01, 3, 3


pytestmark = pytest.mark.usefixtures("one_thread")


def make(learner=None, tasks=2, batches=1, seed=0):
    """A tiny Reptile model (Adam inner loop; `inner_state` as given, the default otherwise) and `batches` batches
    of `tasks` random 3-way tasks."""
    torch.manual_seed(seed)
    cfg = resolve({"model": MLP, "learner": {"name": "reptile", "head_init": "linear", "inner_optimizer": "adam",
                                             "inner_lr": LR, "inner_steps": STEPS, **(learner or {})},
                   "tasks": {"ways": WAYS, "shots": 2, "queries": 2}, "train": {"channels_last": False}})
    m = build_model(cfg, (1, 4, 4), Preprocess())
    g = torch.Generator().manual_seed(seed + 1)
    n = WAYS * 2
    y = torch.arange(WAYS).repeat(2).expand(tasks, n)
    out = [TaskBatch(torch.randn(tasks, n, 1, 4, 4, generator=g), y, torch.randn(tasks, n, 1, 4, 4, generator=g), y,
                     WAYS) for _ in range(batches)]
    return m, out


def forward(m, p, x):
    z = functional_call(m.encoder, sub(p, "encoder."), (x,))
    return F.linear(z, p["learner.head.weight"], p["learner.head.bias"])


def zero_state(theta):
    return {k: torch.zeros_like(v) for k, v in theta.items()}, 0


def tf_adam(m, theta, sx, sy, steps, lr, v, t):
    """`steps` steps of tf.train.AdamOptimizer(lr, beta1=0) on one task's support loss, from the second moments `v`
    and step count `t` (with beta1 = 0 the first moment is the gradient itself); returns (phi, v, t)."""
    p, v = dict(theta), dict(v)
    for _ in range(steps):
        leaves = {k: x.detach().requires_grad_() for k, x in p.items()}
        gs = torch.autograd.grad(F.cross_entropy(forward(m, leaves, sx), sy), list(leaves.values()))
        t += 1
        lr_t = lr * math.sqrt(1 - B2 ** t) / (1 - 0.0 ** t)  # TF: lr * sqrt(1 - beta2^t) / (1 - beta1^t)
        new = {}
        for (k, x), g in zip(leaves.items(), gs):
            v[k] = B2 * v[k] + (1 - B2) * g * g
            new[k] = x.detach() - lr_t * g / (v[k].sqrt() + EPS)  # m_t = g
        p = new
    return p, v, t


def theta_of(m):
    return {k: x.detach().clone() for k, x in m.params.items()}


def surrogate_grad(m, b):
    """(theta - mean phi as the engine's backward gives it, LossOutput)."""
    for p in m.params.values():
        p.grad = None
    out = StepRunner(m, "cpu", info=lambda *a: None)(b)
    return {k: p.grad.clone() for k, p in m.params.items()}, out


def store(m, out, step=0):
    with torch.no_grad():
        for k, v in m.learner.update(m.params, m.buffers, out.state, step, 10).items():
            m.buffers[k].copy_(v)


def close(a, b, atol=1e-6):
    return all(torch.allclose(a[k], b[k], atol=atol, rtol=0) for k in b)


# ---------------------------------------------------------------------------------------------------------------


def test_carried_state_is_one_tf_adam_run_over_the_tasks_in_order_and_over_meta_steps():
    m, batches = make(tasks=2, batches=2)
    assert m.learner.config.inner_state == "carry"  # the default: the reference's behaviour
    eps_outer = 0.5
    theta = theta_of(m)
    v, t = zero_state(theta)
    names = list(theta)
    for s, b in enumerate(batches):
        phis = []
        for i in range(b.num_tasks):  # task i starts from the state task i - 1 left
            phi, v, t = tf_adam(m, theta, b.support_x[i], b.support_y[i], STEPS, LR, v, t)
            phis.append(phi)
        mean_phi = {k: torch.stack([p[k] for p in phis]).mean(0) for k in names}
        # the learner's own fast weights, task by task, from the buffers' state
        state = m.learner.adam_state(m.params, m.buffers)
        for i in range(b.num_tasks):
            fast, state = m.learner.adapt_with_state(theta, m.buffers, b.support_x[i], b.support_y[i], True, state)
            assert close(fast, phis[i]), (s, i)
        # the engine's backward: theta - mean phi; the end state in LossOutput.state, stored by update
        grad, out = surrogate_grad(m, b)
        assert close(grad, {k: theta[k] - mean_phi[k] for k in names}), s
        store(m, out, s)
        assert int(m.buffers[ADAM + "t"]) == t == (s + 1) * b.num_tasks * STEPS
        for k in names:
            assert torch.allclose(m.buffers[f"{ADAM}v.{k}"], v[k], rtol=1e-5, atol=1e-12), (s, k)
        # the meta-update of the engine (plain SGD on the surrogate) = theta + eps (mean phi - theta)
        with torch.no_grad():
            for k, p in m.params.items():
                p -= eps_outer * grad[k]
        theta = {k: theta[k] + eps_outer * (mean_phi[k] - theta[k]) for k in names}
        assert close(theta_of(m), theta), s
    assert t == 12


def test_first_moment_buffer_is_the_last_inner_gradient():
    m, (b,) = make(tasks=2)
    theta = theta_of(m)
    v, t = zero_state(theta)
    phi, v, t = tf_adam(m, theta, b.support_x[0], b.support_y[0], STEPS, LR, v, t)
    phi2, _, _ = tf_adam(m, theta, b.support_x[1], b.support_y[1], STEPS - 1, LR, v, t)  # up to the last step
    leaves = {k: x.requires_grad_() for k, x in phi2.items()}
    g = torch.autograd.grad(F.cross_entropy(forward(m, leaves, b.support_x[1]), b.support_y[1]),
                            list(leaves.values()))
    _, out = surrogate_grad(m, b)
    store(m, out)
    for k, gk in zip(leaves, g):
        assert torch.allclose(m.buffers[f"{ADAM}m.{k}"], gk, atol=1e-6), k


def second_task_first_step(m, b):
    """theta - phi_2 after one inner step per task (phi_1 from a fresh TF Adam, phi_2 = 2 mean phi - phi_1), and
    the two tasks' gradients at theta."""
    theta = theta_of(m)
    grad, _ = surrogate_grad(m, b)
    v, t = zero_state(theta)
    phi1, _, _ = tf_adam(m, theta, b.support_x[0], b.support_y[0], 1, LR, v, t)
    step2 = {k: theta[k] - (2 * (theta[k] - grad[k]) - phi1[k]) for k in theta}
    gs = []
    for i in range(2):
        leaves = {k: x.clone().requires_grad_() for k, x in theta.items()}
        gs.append(dict(zip(leaves, torch.autograd.grad(
            F.cross_entropy(forward(m, leaves, b.support_x[i]), b.support_y[i]), list(leaves.values())))))
    return step2, gs


def test_with_carry_the_second_tasks_first_step_is_not_lr_times_sign_of_the_gradient():
    # the issue: with a fresh Adam per task, each element's first inner step of every task is exactly lr*sign(g)
    m, (b,) = make({"inner_steps": 1}, tasks=2)  # the default inner_state
    step2, (g1, g2) = second_task_first_step(m, b)
    big = {k: g2[k].abs() > 1e-3 for k in g2}  # eps plays no part there
    ratio = torch.cat([(step2[k] / (LR * g2[k].sign()))[big[k]] for k in g2])
    assert ratio.numel() > 50
    assert (ratio - 1).abs().max() > 0.1  # not lr*sign(g) ...
    assert (ratio > 0).all()  # ... but Adam's step with the second moment carried from the first task:
    for k in g2:  # lr sqrt(1 - b2^2) g2 / (sqrt(b2 (1 - b2) g1^2 + (1 - b2) g2^2) + eps)
        v = B2 * (1 - B2) * g1[k] ** 2 + (1 - B2) * g2[k] ** 2
        expected = LR * math.sqrt(1 - B2 ** 2) * g2[k] / (v.sqrt() + EPS)
        assert torch.allclose(step2[k], expected, atol=1e-6), k


def test_with_reset_the_second_tasks_first_step_is_lr_times_sign_of_the_gradient():
    m, (b,) = make({"inner_steps": 1, "inner_state": "reset"}, tasks=2)
    step2, (_, g2) = second_task_first_step(m, b)
    for k in g2:
        big = g2[k].abs() > 1e-3
        assert torch.allclose(step2[k][big], LR * g2[k][big].sign(), rtol=1e-3, atol=1e-6), k


def test_update_returns_the_end_state_and_a_resumed_run_equals_the_uninterrupted_one(tmp_path):
    from metassl.engine.trainer import load_run_config, train

    m, (b,) = make(tasks=2)
    adam = {k for k in m.buffers if k.startswith(ADAM)}
    assert adam == {ADAM + "t"} | {f"{ADAM}{p}.{k}" for p in "mv" for k in m.params}
    assert all(not m.buffers[k].any() for k in adam)  # zeros at the start
    _, out = surrogate_grad(m, b)
    new = m.learner.update(m.params, m.buffers, out.state, 0, 10)
    assert set(new) == adam and all(new[k].shape == m.buffers[k].shape for k in adam)
    assert int(new[ADAM + "t"]) == 2 * STEPS and all(new[f"{ADAM}v.{k}"].abs().sum() > 0 for k in m.params)

    # the trainer: 2 + 2 steps with a checkpoint in between equal 4 steps straight (constant outer lr)
    def cfg(steps):
        return resolve({
            "name": "t", "data": {"dataset": "digits", "train_split": "train", "val_split": None,
                                  "test_split": "test"},
            "tasks": {"ways": 3, "shots": 1, "queries": 3, "tasks_per_batch": 3},
            "model": {"backbone": "mlp", "hidden": [32, 16], "image_size": 8, "norm": "batch",
                      "track_running_stats": False},
            "learner": {"name": "reptile", "inner_steps": 2, "eval_inner_steps": 3, "inner_lr": 0.01},
            "optim": {"name": "sgd", "lr": 0.5, "momentum": 0.0, "schedule": "constant"},
            "train": {"steps": steps, "log_every": 1, "val_every": 0, "checkpoint_every": 2, "progress": False,
                      "tensorboard": False, "report": False}})

    quiet = lambda *a: None  # noqa: E731
    train(cfg(4), tmp_path / "full", echo=quiet)
    train(cfg(2), tmp_path / "half", echo=quiet)
    half, _ = load_model(tmp_path / "half")
    assert int(half.buffers[ADAM + "t"]) == 2 * 3 * 2  # 2 steps x 3 tasks x 2 inner steps, saved
    train(load_run_config(tmp_path / "half", ["train.steps=4"]), tmp_path / "half", resume=True, echo=quiet)
    a, _ = load_model(tmp_path / "full")
    b2, _ = load_model(tmp_path / "half")
    assert int(a.buffers[ADAM + "t"]) == 4 * 3 * 2
    for k, v in a.state_tensors().items():  # parameters and the Adam buffers
        assert torch.equal(v, b2.state_tensors()[k]), k


@pytest.mark.parametrize("path", ["vmap", "loop"])
def test_evaluation_starts_each_episode_from_the_carried_state_and_leaves_it_unchanged(path):
    m, (b, e) = make({"eval_inner_steps": 4, "eval_inner_lr": 0.02, "path": path}, tasks=3, batches=2)
    _, out = surrogate_grad(m, b)
    store(m, out)  # a non-zero state: one meta-step's
    before = {k: v.clone() for k, v in m.buffers.items()}
    with torch.no_grad():
        fast = m.learner.adapt(m.params, m.buffers, e.support_x, e.support_y, WAYS)
        logits = m.predict(e.support_x, e.support_y, e.query_x, WAYS)
        again = m.predict(e.support_x, e.support_y, e.query_x, WAYS)
    assert all(torch.equal(m.buffers[k], before[k]) for k in before)
    assert torch.allclose(logits, again, atol=0)
    theta = theta_of(m)
    v0 = {k: m.buffers[f"{ADAM}v.{k}"].clone() for k in theta}
    t0 = int(m.buffers[ADAM + "t"])
    for i in range(e.num_tasks):  # every episode from the same (training) state, not from the previous episode's
        phi, _, _ = tf_adam(m, theta, e.support_x[i], e.support_y[i], 4, 0.02, v0, t0)
        assert close({k: fast[k][i] for k in phi}, phi), i
        fresh, _, _ = tf_adam(m, theta, e.support_x[i], e.support_y[i], 4, 0.02, *zero_state(theta))
        assert not close({k: fast[k][i] for k in phi}, fresh, atol=1e-4)  # the state matters


def old_per_task_adam(m, theta, sx, sy, steps, lr, tf_eps=False):
    """The inner loop before inner_state existed (a fresh textbook Adam per task, `(m/c1) / (sqrt(v/c2) + eps)`),
    copied; `tf_eps`: with eps moved to TensorFlow's place (x - lr sqrt(c2)/c1 m / (sqrt(v) + eps), i.e. the
    textbook form with eps / sqrt(c2)), the only other change."""
    b1, b2, eps = 0.0, 0.999, 1e-8
    fast = dict(theta)
    v = {k: torch.zeros_like(x) for k, x in fast.items()}
    mm = {k: torch.zeros_like(x) for k, x in fast.items()}
    for t in range(1, steps + 1):
        leaves = {k: x.detach().requires_grad_() for k, x in fast.items()}
        gs = torch.autograd.grad(F.cross_entropy(forward(m, leaves, sx), sy), list(leaves.values()))
        g = {k: x.detach() for k, x in zip(leaves, gs)}
        mm = {k: b1 * mm[k] + (1 - b1) * g[k] for k in fast}
        v = {k: b2 * v[k] + (1 - b2) * g[k] * g[k] for k in fast}
        c1, c2 = 1 - b1 ** t, 1 - b2 ** t
        e = eps / math.sqrt(c2) if tf_eps else eps
        fast = {k: fast[k].detach() - lr * (mm[k] / c1) / ((v[k] / c2).sqrt() + e) for k in fast}
    return fast


def test_reset_reproduces_the_old_per_task_adam():
    m, batches = make({"inner_state": "reset"}, tasks=3, batches=2)
    assert not any(k.startswith(ADAM) for k in m.buffers)  # no state to keep
    for b in batches:  # two meta-steps: nothing carries over either
        theta = theta_of(m)
        grad, out = surrogate_grad(m, b)
        assert m.learner.update(m.params, m.buffers, out.state, 0, 10) == {}
        for tf_eps, atol in ((True, 1e-6), (False, 1e-3)):  # verbatim: eps matters for tiny gradients
            phis = [old_per_task_adam(m, theta, b.support_x[i], b.support_y[i], STEPS, LR, tf_eps)
                    for i in range(b.num_tasks)]
            expected = {k: theta[k] - torch.stack([p[k] for p in phis]).mean(0) for k in theta}
            assert close(grad, expected, atol), tf_eps
        with torch.no_grad():
            for k, p in m.params.items():
                p -= 0.5 * grad[k]


def test_carry_runs_the_whole_meta_batch_in_one_call_on_every_path():
    results = []
    for path in ("vmap", "loop", "auto"):  # the loop path would otherwise be split one task per call
        m, (b,) = make({"path": path}, tasks=3)
        grad, out = surrogate_grad(m, b)
        results.append((grad, out.state))
        assert out.state[ADAM + "t"].shape == (1,) and int(out.state[ADAM + "t"][0]) == 3 * STEPS
    for grad, state in results[1:]:
        assert close(grad, results[0][0], atol=0)
        assert all(torch.equal(state[k], results[0][1][k]) for k in state)
    with pytest.raises(ConfigError, match="tasks_per_chunk=2 does not apply to reptile with inner_state=carry"):
        make({"tasks_per_chunk": 2})
    m, _ = make({"inner_state": "reset", "tasks_per_chunk": 2})  # fine without a state
    m, _ = make({"inner_optimizer": "sgd", "tasks_per_chunk": 2})  # SGD has no state: carry = reset
    assert not any(k.startswith(ADAM) for k in m.buffers)
