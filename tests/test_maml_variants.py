"""MAML variants (BOIL, Proto-MAML, MAML++): each meta-gradient against an independent per-task torch.autograd
reference (a freshly built encoder with torch's own BatchNorm, no torch.func), the per-method identities and
schedules, the vmap and loop paths, and two training steps + evaluation through the real Trainer on digits."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from metassl.config import ConfigError, load_config, resolve
from metassl.data import Preprocess, TaskBatch
from metassl.engine.build import build_model, load_model
from metassl.engine.meta import StepRunner
from metassl.learners.base import sub
from metassl.learners.inner import BatchStatNorm
from metassl.learners.mamlpp import msl_weights
from metassl.learners.protomaml import prototype_head
from metassl.models import build_backbone

from conftest import apply_update

pytestmark = pytest.mark.usefixtures("one_thread")

MLP = {"backbone": "mlp", "hidden": [12, 6], "image_size": 4, "norm": "batch", "track_running_stats": False}
CONV = {"backbone": "conv4", "hidden": 4, "depth": 2, "pool": "stride", "flatten": "avg", "track_running_stats": False}
HW, HB = "learner.head.weight", "learner.head.bias"


def make(learner, model=MLP, ways=3, tasks=4, double=False, seed=0):
    torch.manual_seed(seed)
    cfg = resolve({"model": model, "learner": learner, "tasks": {"ways": ways, "shots": 2, "queries": 2},
                   "train": {"channels_last": False}})
    m = build_model(cfg, (1, 4, 4), Preprocess())
    g = torch.Generator().manual_seed(seed + 1)
    n = ways * 2
    labels = torch.arange(ways).repeat(2).expand(tasks, n)
    b = TaskBatch(torch.randn(tasks, n, 1, 4, 4, generator=g), labels, torch.randn(tasks, n, 1, 4, 4, generator=g),
                  labels, ways)
    if double:
        m.params = {k: v.detach().double().requires_grad_() for k, v in m.params.items()}
        b = b.map_images(lambda x: x.double())
    return m, b


def grads_of(m, loss):
    names = list(m.params)
    gs = torch.autograd.grad(loss, [m.params[k] for k in names], allow_unused=True)
    return {k: (torch.zeros_like(m.params[k]) if g is None else g) for k, g in zip(names, gs)}


def assert_close(ours, ref, atol=1e-6, rtol=1e-5):
    assert ours.keys() == ref.keys()
    for k in ours:
        assert torch.allclose(ours[k], ref[k], atol=atol, rtol=rtol), (k, (ours[k] - ref[k]).abs().max())


def max_diff(a, b):
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def reference_net(m):
    """An independent forward: a fresh encoder of the same config (torch's BatchNorm) called functionally."""
    encoder = build_backbone(m.config.model, 1)
    assert not any(isinstance(x, BatchStatNorm) for x in encoder.modules())

    def embed(p, x):
        return functional_call(encoder, sub(p, "encoder."), (x,))

    def forward(p, x):
        return F.linear(embed(p, x), p[HW], p[HB])

    return encoder, embed, forward


def sgd_steps(loss_fn, fast, names, steps, lr, first_order):
    """`steps` plain gradient steps on loss_fn(fast) over `names` (torch.autograd.grad, create_graph unless
    first order); lr: a number, or a function (name, step) -> step size."""
    fast = {k: v if v.requires_grad or k not in names else v.detach().requires_grad_() for k, v in fast.items()}
    for s in range(steps):
        gs = torch.autograd.grad(loss_fn(fast, s), [fast[k] for k in names], create_graph=not first_order)
        for k, g in zip(names, gs):
            rate = lr(k, s) if callable(lr) else lr
            fast[k] = fast[k] - rate * (g.detach() if first_order else g)
    return fast


# ---------------------------------------------------------------------------------------------------------------
# BOIL


def reference_boil(m, params, b, steps, lr, first_order):
    _, _, forward = reference_net(m)
    body = [k for k in params if k.startswith("encoder.")]
    total = 0.0
    for t in range(b.num_tasks):
        fast = sgd_steps(lambda f, s: F.cross_entropy(forward(f, b.support_x[t]), b.support_y[t]), params, body,
                         steps, lr, first_order)
        total = total + F.cross_entropy(forward(fast, b.query_x[t]), b.query_y[t])
    return total / b.num_tasks


def test_boil_adapt_leaves_the_head_exactly_unchanged_and_moves_the_body():
    m, b = make({"name": "boil", "inner_steps": 2, "inner_lr": 0.5})
    for train in (True, False):
        fast = m.learner.adapt_one(m.params, m.buffers, b.support_x[0], b.support_y[0], train)
        assert torch.equal(fast[HW], m.params[HW]) and torch.equal(fast[HB], m.params[HB])
        body = [k for k in m.params if k.startswith("encoder.")]
        assert min(float((fast[k] - m.params[k]).abs().max()) for k in body if k.endswith("weight")) > 1e-4
    with torch.no_grad():
        state = m.learner.adapt(m.params, m.buffers, b.support_x, b.support_y, 3)
    assert set(state) == {k for k in m.params if k.startswith("encoder.")}  # the head is not even per task


@pytest.mark.parametrize("model", [MLP, CONV], ids=["mlp", "conv"])
@pytest.mark.parametrize("first_order", [False, True])
def test_boil_meta_gradient_matches_autograd_reference(model, first_order):
    m, b = make({"name": "boil", "inner_steps": 2, "inner_lr": 0.5, "first_order": first_order}, model)
    ours = grads_of(m, m.learner.loss(m.params, m.buffers, b).loss)
    assert_close(ours, grads_of(m, reference_boil(m, m.params, b, 2, 0.5, first_order)), atol=1e-5, rtol=1e-4)
    assert ours[HW].abs().sum() > 0  # the head is meta-learned in the outer loop
    maml, _ = make({"name": "maml", "inner_steps": 2, "inner_lr": 0.5, "first_order": first_order,
                    "head_init": "linear"}, model)
    assert max_diff(ours, grads_of(maml, maml.learner.loss(maml.params, maml.buffers, b).loss)) > 1e-4


def test_boil_refuses_a_zero_head():
    with pytest.raises(ConfigError, match="learner.head_init must be one of"):
        resolve({"learner": {"name": "boil", "head_init": "zero"}})


# ---------------------------------------------------------------------------------------------------------------
# Proto-MAML


def test_prototype_head_gives_negative_squared_distances_up_to_the_query_norm():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(7, 5, generator=g, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 0, 1, 2, 2])
    q = torch.randn(4, 5, generator=g, dtype=torch.float64)
    w, bias = prototype_head(z, y, 3)
    protos = torch.stack([z[y == k].mean(0) for k in range(3)])
    logits = q @ w.T + bias
    dist = ((q[:, None, :] - protos[None]) ** 2).sum(-1)
    # logits_k = 2 c_k.f - ||c_k||^2 = -||f - c_k||^2 + ||f||^2 exactly
    assert torch.allclose(logits - (q * q).sum(-1, keepdim=True), -dist, atol=1e-12)
    assert torch.allclose(logits.softmax(-1), (-dist).softmax(-1), atol=1e-12)


def test_protomaml_before_adaptation_is_protonet():
    # a zero evaluation step size leaves the prototype head as initialized
    m, b = make({"name": "protomaml", "inner_steps": 1, "eval_inner_lr": 0.0}, CONV)
    assert not any(k.startswith("learner.") for k in m.params)  # no meta-learned head at all
    with torch.no_grad():
        logits = m.predict(b.support_x, b.support_y, b.query_x, 3)
        _, embed, _ = reference_net(m)
        for t in range(b.num_tasks):
            zs, zq = embed(m.params, b.support_x[t]), embed(m.params, b.query_x[t])
            protos = torch.stack([zs[b.support_y[t] == k].mean(0) for k in range(3)])
            neg_dist = -torch.cdist(zq, protos) ** 2
            assert torch.allclose(logits[t] - (zq * zq).sum(-1, keepdim=True), neg_dist, atol=1e-4)
            assert torch.allclose(logits[t].softmax(-1), neg_dist.softmax(-1), atol=1e-5)


def reference_protomaml(m, params, b, steps, lr, first_order, adapt, through_prototypes):
    _, embed, forward = reference_net(m)
    total = 0.0
    for t in range(b.num_tasks):
        sx, sy = b.support_x[t], b.support_y[t]
        z = embed(params, sx)
        protos = torch.stack([z[sy == k].mean(0) for k in range(b.ways)])
        w, bias = 2 * protos, -(protos ** 2).sum(1)
        if not through_prototypes:
            w, bias = w.detach(), bias.detach()
        # the inner loop's variables are the encoder tensors and the head, separately: the support loss is
        # differentiated with respect to fresh aliases of the encoder tensors (on which the head does not depend)
        start = {**{k: v * 1.0 for k, v in params.items()}, HW: w, HB: bias}
        if adapt == "all":
            names = [k for k in params if k.startswith("encoder.")] + [HW, HB]
            fast = sgd_steps(lambda f, s: F.cross_entropy(forward(f, sx), sy), start, names, steps, lr, first_order)
        else:  # the head on the support features computed once
            fast = sgd_steps(lambda f, s: F.cross_entropy(F.linear(z, f[HW], f[HB]), sy), start, [HW, HB], steps,
                             lr, first_order)
        total = total + F.cross_entropy(forward(fast, b.query_x[t]), b.query_y[t])
    return total / b.num_tasks


@pytest.mark.parametrize("adapt,first_order,prototype_grad,through", [
    ("all", False, "follow", True),
    ("all", True, "follow", False),
    ("all", True, "always", True),
    ("all", False, "never", False),
    ("head", False, "follow", True),
])
def test_protomaml_meta_gradient_matches_autograd_reference(adapt, first_order, prototype_grad, through):
    learner = {"name": "protomaml", "inner_steps": 2, "inner_lr": 0.3, "adapt": adapt, "first_order": first_order,
               "prototype_grad": prototype_grad}
    m, b = make(learner, CONV)
    ours = grads_of(m, m.learner.loss(m.params, m.buffers, b).loss)
    ref = grads_of(m, reference_protomaml(m, m.params, b, 2, 0.3, first_order, adapt, through))
    assert_close(ours, ref, atol=1e-5, rtol=1e-4)
    other = grads_of(m, reference_protomaml(m, m.params, b, 2, 0.3, first_order, adapt, not through))
    assert max_diff(ref, other) > 1e-5  # whether the prototypes are differentiated really matters


@pytest.mark.parametrize("path", ["vmap", "loop"])
def test_protomaml_second_order_meta_gradient_matches_finite_differences(path):
    m, b = make({"name": "protomaml", "inner_steps": 2, "inner_lr": 0.3, "path": path}, CONV, double=True)
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
        assert fd == pytest.approx(float(sum((g[k] * v[k]).sum() for k in g)), rel=1e-5, abs=1e-8)


def test_protomaml_predicts_any_number_of_ways():
    m, b = make({"name": "protomaml", "inner_steps": 2}, ways=2)
    g = torch.Generator().manual_seed(5)
    for ways in (2, 3, 5):
        sy = torch.arange(ways).repeat(2).expand(3, 2 * ways)
        sx, qx = torch.randn(3, 2 * ways, 1, 4, 4, generator=g), torch.randn(3, 7, 1, 4, 4, generator=g)
        with torch.no_grad():
            logits = m.predict(sx, sy, qx, ways)
        assert logits.shape == (3, 7, ways) and torch.isfinite(logits).all()


# ---------------------------------------------------------------------------------------------------------------
# MAML++


def reference_msl(steps, epoch, msl_epochs):
    """The reference code's get_per_step_loss_importance_vector, written out with numpy as it is there."""
    loss_weights = np.ones(shape=(steps,)) * (1.0 / steps)
    decay_rate = 1.0 / steps / msl_epochs
    min_value_for_non_final_losses = 0.03 / steps
    for i in range(len(loss_weights) - 1):
        loss_weights[i] = np.maximum(loss_weights[i] - (epoch * decay_rate), min_value_for_non_final_losses)
    loss_weights[-1] = np.minimum(loss_weights[-1] + (epoch * (steps - 1) * decay_rate),
                                  1.0 - ((steps - 1) * min_value_for_non_final_losses))
    return loss_weights


@pytest.mark.parametrize("steps,msl_epochs", [(1, 10), (2, 3), (5, 10)])
def test_msl_weights_follow_the_reference_schedule(steps, msl_epochs):
    for epoch in (0, 1, 2, 3, 7, 9, 10, 30):
        ours = msl_weights(steps, epoch, msl_epochs)
        assert ours == pytest.approx(list(reference_msl(steps, epoch, msl_epochs)), abs=1e-12), epoch
        assert sum(ours) == pytest.approx(1.0, abs=1e-12)
    if (steps, msl_epochs) == (5, 10):  # the paper's setting, by hand: decay 0.02 per epoch, floor 0.006
        assert msl_weights(5, 0, 10) == pytest.approx([0.2] * 5)
        assert msl_weights(5, 3, 10) == pytest.approx([0.14] * 4 + [0.44])
        assert msl_weights(5, 10, 10) == pytest.approx([0.006] * 4 + [0.976])


def mamlpp(model=MLP, double=True, **learner):
    return make({"name": "mamlpp", "inner_steps": 3, "inner_lr": 0.3, "msl_epochs": 2, "first_order_epochs": 1,
                 "iterations_per_epoch": 2, **learner}, model, double=double)


def reference_mamlpp(m, params, b, steps, weights, first_order, query_step=None):
    """MAML++ per task: step s uses BatchNorm copy s (the encoder's own for the last training step) and rates
    lr[s]; the objective is sum_s w_s L_query(after s), or the last step's loss (weights None)."""
    encoder, _, forward = reference_net(m)
    bn = [f"encoder.{n}.{p}" for n, mod in encoder.named_modules() if isinstance(mod, nn.modules.batchnorm._BatchNorm)
          for p in ("weight", "bias")]
    last = m.config.learner.inner_steps - 1

    def at_step(p, s):
        return p if s >= last else {**p, **{k: params[f"learner.bn.{s}.{k}"] for k in bn}}

    names = [k for k in params if (k.startswith("encoder.") and k not in bn) or k in (HW, HB)]
    total = 0.0
    for t in range(b.num_tasks):
        sx, sy, qx, qy = b.support_x[t], b.support_y[t], b.query_x[t], b.query_y[t]
        fast, losses = {k: params[k] for k in names}, []
        for s in range(steps):
            fast = sgd_steps(lambda f, _: F.cross_entropy(forward(at_step({**params, **f}, s), sx), sy), fast, names,
                             1, lambda k, _: params[f"learner.lr.{k}"][s], first_order)
            losses.append(F.cross_entropy(forward(at_step({**params, **fast}, s), qx), qy))
        total = total + (losses[-1] if weights is None else sum(w * l for w, l in zip(weights, losses)))
    return total / b.num_tasks


@pytest.mark.parametrize("model", [MLP, CONV], ids=["mlp", "conv"])
@pytest.mark.parametrize("path", ["vmap", "loop"])
def test_mamlpp_meta_gradient_matches_reference_through_the_schedules(model, path):
    m, b = mamlpp(model, path=path)
    cases = [  # (optimizer steps taken, MSL weights or None, first order?)  2 steps per epoch
        (0, list(reference_msl(3, 0, 2)), True),  # epoch 0: uniform MSL, first order (DA)
        (3, list(reference_msl(3, 1, 2)), False),  # epoch 1: annealed MSL, second order
        (5, None, False),  # epoch 2: MSL over, last step only
    ]
    for step, weights, first_order in cases:
        m.buffers["learner.step"].fill_(step)
        ours = grads_of(m, m.learner.loss(m.params, m.buffers, b).loss)
        same = grads_of(m, reference_mamlpp(m, m.params, b, 3, weights, first_order))
        other = grads_of(m, reference_mamlpp(m, m.params, b, 3, weights, not first_order))
        assert_close(ours, same, atol=1e-9, rtol=1e-7)
        assert max_diff(same, other) > 1e-6, step  # the derivative order really differs
    # the DA switch: first order before epoch 1 (step < 2), second order from it
    assert [m.learner.schedule(s)[1] for s in range(5)] == [True, True, False, False, False]
    assert m.learner.schedule(3)[0] == pytest.approx(msl_weights(3, 1, 2)) and m.learner.schedule(4)[0] is None


def test_mamlpp_per_step_rates_and_batchnorm_copies_get_gradients():
    m, b = mamlpp(CONV, double=False, first_order_epochs=0)
    lrs = [k for k in m.params if k.startswith("learner.lr.")]
    bns = [k for k in m.params if k.startswith("learner.bn.")]
    adapted = [k for k in m.params if not k.startswith("learner.") and ".1." not in k and ".4." not in k] + [HW, HB]
    assert sorted(lrs) == sorted(f"learner.lr.{k}" for k in adapted)  # conv weights, biases, head: not BatchNorm
    assert all(m.params[k].shape == (3,) and torch.all(m.params[k] == 0.3) for k in lrs)
    # copies for steps 0 and 1 of both BatchNorms' weight and bias (step 2 uses the encoder's own)
    assert sorted(bns) == sorted(f"learner.bn.{s}.encoder.features.{i}.{p}" for s in (0, 1) for i in (1, 4)
                                 for p in ("weight", "bias"))
    assert all(torch.equal(m.params[k], m.params[k.split(".", 3)[3]]) for k in bns)  # initialized from the encoder
    g = grads_of(m, m.learner.loss(m.params, m.buffers, b).loss)
    for k in lrs:  # every step's rate of every adapted tensor
        assert torch.isfinite(g[k]).all() and g[k].abs().min() > 0, k
    for k in bns + ["encoder.features.1.weight", "encoder.features.1.bias"]:  # every step's BatchNorm copy
        assert torch.isfinite(g[k]).all() and g[k].abs().sum() > 0, k


def test_mamlpp_evaluates_with_the_weights_after_the_last_evaluation_step():
    m, b = mamlpp(eval_inner_steps=2)  # fewer than the 3 training steps: BatchNorm copy 1 for the queries
    with torch.no_grad():
        logits = m.predict(b.support_x, b.support_y, b.query_x, 3)
    p = {k: v.detach().requires_grad_() for k, v in m.params.items()}
    for t in range(b.num_tasks):
        one = TaskBatch(b.support_x[t:t + 1], b.support_y[t:t + 1], b.query_x[t:t + 1], b.query_y[t:t + 1], 3)
        ref = reference_mamlpp(m, p, one, 2, None, True)
        assert float(F.cross_entropy(logits[t], b.query_y[t])) == pytest.approx(float(ref), abs=1e-9)
    with pytest.raises(ConfigError, match=r"eval_inner_steps \(6\) must be <= learner.inner_steps \(5\)"):
        resolve({"learner": {"name": "mamlpp", "inner_steps": 5, "eval_inner_steps": 6}})


def test_mamlpp_update_advances_the_step_buffer_without_mutating_it():
    m, b = mamlpp(double=False)
    before = m.buffers["learner.step"]
    assert before.dtype == torch.int64 and before.dim() == 0 and int(before) == 0
    new = m.learner.update(m.params, m.buffers, {}, 0, 10)
    assert int(new["learner.step"]) == 1 and int(before) == 0
    apply_update(m, {}, 0, 10)
    apply_update(m, {}, 1, 10)
    assert int(m.buffers["learner.step"]) == 2


@pytest.mark.parametrize("name", ["boil", "protomaml", "mamlpp"])
def test_vmap_and_loop_paths_give_the_same_meta_gradient(name):
    learner = {"name": name, "inner_steps": 2, "inner_lr": 0.3}
    if name == "mamlpp":
        learner.update(msl_epochs=1, iterations_per_epoch=10)
    results = {}
    for path in ("vmap", "loop"):
        m, b = make({**learner, "path": path}, CONV, tasks=3)
        out = StepRunner(m, "cpu", info=lambda *a: None)(b)
        results[path] = ({k: p.grad.clone() for k, p in m.params.items() if p.grad is not None}, float(out.loss))
    (gv, lv), (gl, ll) = results["vmap"], results["loop"]
    assert lv == pytest.approx(ll, abs=1e-5) and gv.keys() == gl.keys()
    assert_close(gv, gl, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", ["boil", "protomaml", "mamlpp"])
def test_evaluation_does_not_depend_on_how_episodes_are_batched(name):
    from conftest import make_split
    from metassl.eval.episodes import Protocol, evaluate

    torch.manual_seed(0)
    cfg = resolve({"model": {**MLP, "image_size": 8}, "learner": {"name": name, "inner_steps": 2},
                   "tasks": {"ways": 3, "shots": 1, "queries": 2}, "train": {"channels_last": False}})
    m = build_model(cfg, (1, 8, 8), Preprocess())
    split = make_split(num_classes=8, per_class=6, shape=(1, 8, 8), name="toy/test")
    p = Protocol("toy", "test", 3, 1, 2, 8, 0)
    results = [evaluate(m.predict, split, p, Preprocess(), batch_episodes=n) for n in (1, 3, 8)]
    for r in results[1:]:
        assert r.per_episode_accuracy == pytest.approx(results[0].per_episode_accuracy, abs=1e-9)


# ---------------------------------------------------------------------------------------------------------------
# the real Trainer and evaluation, on scikit-learn's digits


def digits_cfg(learner, steps=2, ways=3):
    return resolve({
        "name": "t", "data": {"dataset": "digits", "train_split": "train", "val_split": None, "test_split": "test"},
        "tasks": {"ways": ways, "shots": 1, "queries": 3, "tasks_per_batch": 3},
        "model": {"backbone": "mlp", "hidden": [32, 16], "image_size": 8, "norm": "batch",
                  "track_running_stats": False},
        "learner": learner, "optim": {"name": "adam", "lr": 0.003},
        "train": {"steps": steps, "log_every": 1, "val_every": 0, "checkpoint_every": 1, "progress": False,
                  "tensorboard": False, "report": False},
        "eval": {"ways": 3, "shots": [1], "queries": 3, "episodes": 10, "batch_episodes": 5}})


@pytest.mark.parametrize("learner,train_ways", [
    ({"name": "boil", "inner_lr": 0.5}, 3),
    ({"name": "protomaml", "inner_steps": 2, "inner_lr": 0.1}, 2),  # trained 2-way, evaluated 3-way
    ({"name": "mamlpp", "inner_steps": 2, "inner_lr": 0.1, "iterations_per_epoch": 1, "msl_epochs": 1,
      "first_order_epochs": 1}, 3),
], ids=lambda v: v["name"] if isinstance(v, dict) else str(v))
def test_each_variant_trains_and_evaluates(learner, train_ways, tmp_path):
    from metassl.engine.evaluate import evaluate_run
    from metassl.engine.trainer import train

    res = train(digits_cfg(learner, ways=train_ways), tmp_path / "run", echo=lambda *a: None)
    assert res.steps == 2 and res.final_loss == res.final_loss
    _, _, results = evaluate_run(tmp_path / "run", ways=3, episodes=10, device="cpu")
    assert len(results) == 1 and 0.0 <= results[0].accuracy <= 100.0
    assert results[0].protocol["ways"] == 3


def test_mamlpp_step_buffer_is_checkpointed_and_resumed(tmp_path):
    from metassl.engine.trainer import train

    learner = {"name": "mamlpp", "inner_steps": 2, "iterations_per_epoch": 1, "msl_epochs": 2}
    run = tmp_path / "run"
    train(digits_cfg(learner, steps=2), run, echo=lambda *a: None)
    model, state = load_model(run)
    assert int(state["step"]) == 2 and int(model.buffers["learner.step"]) == 2
    train(digits_cfg(learner, steps=3), run, resume=True, echo=lambda *a: None)
    model, state = load_model(run)
    assert int(state["step"]) == 3 and int(model.buffers["learner.step"]) == 3  # restored (2), then advanced


def test_presets_load_with_matching_ways_and_paper_numbers():
    expected = {"mamlpp_5w1s": {"5w1s": 99.47}, "mamlpp_20w1s": {"20w1s": 97.65}, "boil_5w1s": {}, "boil_20w1s": {},
                "protomaml_5w1s": {}, "protomaml_20w1s": {}}
    for name, paper in expected.items():
        cfg = load_config(f"omniglot/{name}")
        assert cfg.learner.name == name.split("_")[0] and cfg.eval.paper == paper, name
        assert cfg.tasks.ways == cfg.eval.ways == (20 if "20w" in name else 5), name
        assert cfg.model.track_running_stats is False and cfg.description, name
    assert load_config("omniglot/mamlpp_5w1s").optim.schedule == "cosine"
