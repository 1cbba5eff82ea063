"""Matching Networks, Relation Networks and FEAT: each method's probabilities / scores / losses against direct,
loop-based computations of the papers' formulas on tiny tensors, the LSTM and attention building blocks against
torch's modules or explicit equations, and a 2-step Trainer run + evaluation on digits for each method."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from metassl.config import ConfigError, apply_overrides, resolve
from metassl.data import Preprocess, TaskBatch
from metassl.engine.build import build_model
from metassl.learners import feat as featmod
from metassl.learners import matchingnet as mn
from metassl.learners import relationnet as rn

pytestmark = pytest.mark.usefixtures("one_thread")

CONV = {"backbone": "conv4", "hidden": 4, "depth": 2, "norm": "none"}  # batch-independent features: 8x8 -> 4x2x2


def make(learner, model=CONV, ways=3, shots=2, queries=2, tasks=2, size=8, seed=0):
    """A model built from a config and a random batch of `tasks` episodes (support and query shuffled)."""
    torch.manual_seed(seed)
    cfg = resolve({"model": model, "learner": learner, "tasks": {"ways": ways, "shots": shots, "queries": queries},
                   "train": {"channels_last": False}})
    m = build_model(cfg, (1, size, size), Preprocess())
    g = torch.Generator().manual_seed(seed + 1)
    sy = torch.stack([torch.randperm(ways * shots, generator=g) % ways for _ in range(tasks)])
    qy = torch.stack([torch.randperm(ways * queries, generator=g) % ways for _ in range(tasks)])
    b = TaskBatch(torch.randn(tasks, ways * shots, 1, size, size, generator=g), sy,
                  torch.randn(tasks, ways * queries, 1, size, size, generator=g), qy, ways)
    return m, b


def embeddings(m, x):
    with torch.no_grad():
        return m.learner.embed(m.params, m.buffers, x, per_task=True)


# ---------------------------------------------------------------------------------------------------------------
# Matching Networks


def direct_matching_probs(zs, ys, zq, ways, temperature=1.0):
    """P(y | x̂, S) = sum_i a(x̂, x_i) onehot(y_i) with a = softmax of cosines: one task, query, support at a time."""
    out = torch.zeros(zq.shape[0], zq.shape[1], ways, dtype=zq.dtype)
    for t in range(zq.shape[0]):
        for j in range(zq.shape[1]):
            sims = [F.cosine_similarity(zq[t, j], zs[t, i], dim=0) / temperature for i in range(zs.shape[1])]
            e = [math.exp(float(s)) for s in sims]
            for i in range(zs.shape[1]):
                out[t, j, int(ys[t, i])] += e[i] / sum(e)
    return out


@pytest.mark.parametrize("temperature", [1.0, 0.2])
def test_matching_probabilities_match_hand_loop(temperature):
    m, b = make({"name": "matchingnet", "temperature": temperature}, ways=4, shots=3)
    m.train(False)
    with torch.no_grad():
        logits = m.predict(b.support_x, b.support_y, b.query_x, 4)
    ref = direct_matching_probs(embeddings(m, b.support_x), b.support_y, embeddings(m, b.query_x), 4, temperature)
    assert logits.shape == (2, 8, 4)
    assert torch.allclose(logits.exp(), ref, atol=1e-5)
    assert torch.allclose(logits.exp().sum(-1), torch.ones(2, 8), atol=1e-5)  # log-probabilities


def test_matching_formula_float64_and_permutation_invariance():
    g = torch.Generator().manual_seed(3)
    zs, zq = torch.randn(2, 6, 5, generator=g, dtype=torch.float64), torch.randn(2, 4, 5, generator=g,
                                                                                dtype=torch.float64)
    ys = torch.tensor([[0, 1, 2, 0, 1, 2], [2, 2, 1, 0, 0, 1]])
    p = mn.label_distribution(mn.cosine_attention(zq, zs, 0.5), ys, 3)
    assert torch.allclose(p, direct_matching_probs(zs, ys, zq, 3, 0.5), atol=1e-12)
    perm = torch.tensor([4, 0, 5, 2, 1, 3])  # without FCE the support is a set
    assert torch.allclose(mn.label_distribution(mn.cosine_attention(zq, zs[:, perm], 0.5), ys[:, perm], 3), p,
                          atol=1e-12)
    # a class without support images has probability 0: the log is clamped, not -inf
    logp = mn.log_probabilities(mn.label_distribution(mn.cosine_attention(zq, zs, 0.5), ys, 4))
    assert torch.isfinite(logp).all() and torch.allclose(logp[..., 3], torch.full_like(logp[..., 3],
                                                                                       math.log(mn.PROB_FLOOR)))


def test_matching_loss_is_nll_of_attention_distribution():
    m, b = make({"name": "matchingnet"})
    m.train(True)
    out = m.learner.loss(m.params, m.buffers, b)
    z = embeddings(m, torch.cat([b.support_x, b.query_x], 1))
    p = direct_matching_probs(z[:, :6], b.support_y, z[:, 6:], 3)
    nll = -torch.stack([p[t, j, b.query_y[t, j]].log() for t in range(2) for j in range(6)]).mean()
    assert abs(float(out.loss) - float(nll)) < 1e-5
    assert 0.0 <= float(out.metrics["accuracy"]) <= 1.0
    out.loss.backward()
    assert all(v.grad is not None for k, v in m.params.items() if k.endswith("weight"))


def test_lstm_cell_and_bidirectional_support_match_torch():
    torch.manual_seed(0)
    d = 5
    params = {k: v.double() for k, v in mn.init_fce_params(d).items()}
    x = torch.randn(2, 4, d, dtype=torch.float64)
    # one cell against torch.nn.LSTMCell with the same weights (torch's two biases: ours and zero)
    cell = nn.LSTMCell(d, d).double()
    w = mn._cell(params, "g_fw")
    with torch.no_grad():
        cell.weight_ih.copy_(w[0]), cell.weight_hh.copy_(w[1]), cell.bias_ih.copy_(w[2]), cell.bias_hh.zero_()
    h0, c0 = torch.randn(2, d, dtype=torch.float64), torch.randn(2, d, dtype=torch.float64)
    h, c = mn.lstm_cell(x[:, 0], h0, c0, *w)
    th, tc = cell(x[:, 0], (h0, c0))
    assert torch.allclose(h, th, atol=1e-12) and torch.allclose(c, tc, atol=1e-12)
    # g(x_i, S) = h_fw_i + h_bw_i + g'(x_i) against torch.nn.LSTM(bidirectional=True)
    lstm = nn.LSTM(d, d, batch_first=True, bidirectional=True).double()
    fw, bw = mn._cell(params, "g_fw"), mn._cell(params, "g_bw")
    with torch.no_grad():
        for suffix, (wi, wh, bias) in (("", fw), ("_reverse", bw)):
            getattr(lstm, "weight_ih_l0" + suffix).copy_(wi)
            getattr(lstm, "weight_hh_l0" + suffix).copy_(wh)
            getattr(lstm, "bias_ih_l0" + suffix).copy_(bias)
            getattr(lstm, "bias_hh_l0" + suffix).zero_()
        out, _ = lstm(x)
    assert torch.allclose(mn.fce_support(params, x), out[..., :d] + out[..., d:] + x, atol=1e-12)


def direct_att_lstm(params, fq, g, steps):
    """The paper's attLSTM for one query [D] and g(S) [S, D], its equations written out."""
    wi, wh, bias = mn._cell(params, "f")
    h, c = fq.clone(), torch.zeros_like(fq)
    for _ in range(steps):
        a = torch.softmax(torch.stack([h @ gi for gi in g]), 0)
        r = sum(a[i] * g[i] for i in range(g.shape[0]))
        gates = wi @ fq + wh @ torch.cat([h, r]) + bias
        i, f, gg, o = gates.split(fq.shape[0])
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(gg)
        h = torch.sigmoid(o) * torch.tanh(c) + fq
    return h


def test_attention_lstm_matches_equations_and_zero_steps_is_identity():
    torch.manual_seed(1)
    d = 4
    params = {k: v.double() for k, v in mn.init_fce_params(d).items()}
    fq, g = torch.randn(2, 3, d, dtype=torch.float64), torch.randn(2, 5, d, dtype=torch.float64)
    out = mn.fce_query(params, fq, g, 3)
    ref = torch.stack([torch.stack([direct_att_lstm(params, fq[t, j], g[t], 3) for j in range(3)]) for t in range(2)])
    assert torch.allclose(out, ref, atol=1e-12)
    assert torch.allclose(mn.fce_query(params, fq, g, 0), fq)  # no processing step: f = f'
    assert torch.allclose(mn.fce_query(params, fq[:, :1], g, 3), out[:, :1], atol=1e-12)  # queries independent


def test_fce_learner_order_dependence_and_any_ways():
    m, b = make({"name": "matchingnet", "fce": True, "fce_steps": 2}, ways=3, shots=2)
    assert {k for k in m.params if k.startswith("learner.")} == {
        f"learner.fce.{c}.{w}" for c in mn.CELLS for w in ("weight_ih", "weight_hh", "bias")}
    assert m.params["learner.fce.f.weight_hh"].shape == (4 * 16, 2 * 16)  # D = 4 x 2 x 2
    m.train(False)
    with torch.no_grad():
        logits = m.predict(b.support_x, b.support_y, b.query_x, 3)
        perm = torch.tensor([5, 3, 1, 0, 2, 4])
        shuffled = m.predict(b.support_x[:, perm], b.support_y[:, perm], b.query_x, 3)
        # the bi-LSTM reads the support in order: another order gives other (valid) probabilities
        assert not torch.allclose(logits, shuffled, atol=1e-4)
        assert torch.allclose(shuffled.exp().sum(-1), torch.ones(2, 6), atol=1e-5)
        # zero processing steps: f is the encoder's embedding (only g is contextual)
        g = m.learner.support_embeddings(m.params, embeddings(m, b.support_x))
        zq = embeddings(m, b.query_x)
        assert torch.allclose(mn.fce_query(m.params, zq, g, 0), zq)
        # the same probabilities as the formula with g = bi-LSTM(S), f = attLSTM
        f = mn.fce_query(m.params, zq, g, 2)
        ref = direct_matching_probs(g, b.support_y, f, 3)
        assert torch.allclose(logits.exp(), ref, atol=1e-5)
        # more ways in evaluation than in training
        sx = torch.randn(1, 5, 1, 8, 8)
        assert m.predict(sx, torch.arange(5)[None], torch.randn(1, 7, 1, 8, 8), 5).shape == (1, 7, 5)


# ---------------------------------------------------------------------------------------------------------------
# Relation Networks


def torch_relation_module(m, in_channels, side, track):
    """The relation module as torch layers, loaded with the learner's tensors (an independent forward)."""
    params, buffers = m.params, m.buffers
    c = params["learner.relation.block0.conv.weight"].shape[0]
    layers, ch = [], 2 * in_channels
    for b in range(2):
        layers += [nn.Conv2d(ch, c, 3, padding=1), nn.BatchNorm2d(c, track_running_stats=track), nn.ReLU()]
        if side >= 2:
            layers.append(nn.MaxPool2d(2))
            side //= 2
        ch = c
    fc1, fc2 = nn.Linear(c * side * side, params["learner.relation.fc1.weight"].shape[0]), nn.Linear(
        params["learner.relation.fc1.weight"].shape[0], 1)
    convs = nn.Sequential(*layers)
    with torch.no_grad():
        for b, (conv, bn) in enumerate([(layers[i], layers[i + 1]) for i in range(len(layers))
                                        if isinstance(layers[i], nn.Conv2d)]):
            p = f"learner.relation.block{b}."
            conv.weight.copy_(params[p + "conv.weight"]), conv.bias.copy_(params[p + "conv.bias"])
            bn.weight.copy_(params[p + "bn.weight"]), bn.bias.copy_(params[p + "bn.bias"])
            if track:
                bn.running_mean.copy_(buffers[p + "bn.running_mean"])
                bn.running_var.copy_(buffers[p + "bn.running_var"])
        for lin, name in ((fc1, "fc1"), (fc2, "fc2")):
            lin.weight.copy_(params[f"learner.relation.{name}.weight"])
            lin.bias.copy_(params[f"learner.relation.{name}.bias"])

    def forward(x):
        return torch.sigmoid(fc2(torch.relu(fc1(convs(x).flatten(1))))).squeeze(-1)

    return forward, convs


def direct_relation_scores(m, b, ways, mode):
    """Each (query, class) pair built one at a time: class map = sum of its support maps, concat(class, query)."""
    c = m.params["learner.relation.block0.conv.weight"].shape[1] // 2
    zs, zq = embeddings(m, b.support_x), embeddings(m, b.query_x)
    side = int(math.isqrt(zs.shape[-1] // c))
    module, convs = torch_relation_module(m, c, side, track=(mode == "running"))
    convs.train(mode == "batch")
    out = torch.zeros(zq.shape[0], zq.shape[1], ways)
    for t in range(zq.shape[0]):
        maps_s, maps_q = zs[t].reshape(-1, c, side, side), zq[t].reshape(-1, c, side, side)
        classes = [sum(maps_s[i] for i in range(maps_s.shape[0]) if int(b.support_y[t, i]) == n)
                   for n in range(ways)]
        pairs = [torch.cat([classes[n], maps_q[j]], 0) for j in range(maps_q.shape[0]) for n in range(ways)]
        with torch.no_grad():
            if mode == "running":  # inductive: each pair on its own
                scores = torch.stack([module(p[None])[0] for p in pairs])
            else:  # the episode's pairs share BatchNorm statistics
                scores = module(torch.stack(pairs))
        out[t] = scores.reshape(maps_q.shape[0], ways)
    return out


@pytest.mark.parametrize("mode", ["running", "batch"])
def test_relation_scores_match_explicit_pairs(mode):
    m, b = make({"name": "relationnet", "relation_channels": 6, "relation_hidden": 5, "relation_bn": mode},
                ways=3, shots=2)
    with torch.no_grad():  # non-trivial running statistics and BN affine parameters
        for k, v in m.buffers.items():
            if k.startswith("learner.relation."):
                v.copy_(torch.rand_like(v) + (0.5 if k.endswith("var") else 0.0))
        for k, v in m.params.items():
            if ".bn." in k:
                v.add_(0.3 * torch.randn_like(v))
    before = {k: v.clone() for k, v in m.buffers.items()}
    m.train(False)
    with torch.no_grad():
        logits = m.predict(b.support_x, b.support_y, b.query_x, 3)
    assert logits.shape == (2, 6, 3)
    assert torch.allclose(torch.sigmoid(logits), direct_relation_scores(m, b, 3, mode), atol=1e-5)
    assert all(torch.equal(v, before[k]) for k, v in m.buffers.items())  # evaluation updates nothing


def test_relation_loss_is_mse_to_one_hot_and_running_stats_update():
    m, b = make({"name": "relationnet", "relation_channels": 6, "relation_hidden": 5, "bn_momentum": 0.5})
    m.train(True)
    before = {k: v.clone() for k, v in m.buffers.items()}
    out = m.learner.loss(m.params, m.buffers, b)
    scores = direct_relation_scores(m, b, 3, "batch")  # training: each episode's batch statistics
    target = torch.zeros_like(scores)
    for t in range(2):
        for j in range(6):
            target[t, j, int(b.query_y[t, j])] = 1.0
    mse = sum(float((scores[t, j, n] - target[t, j, n]) ** 2) for t in range(2) for j in range(6)
              for n in range(3)) / 36
    assert abs(float(out.loss) - mse) < 1e-6
    assert abs(float(rn.relation_loss(torch.logit(scores.double()), b.query_y)) - mse) < 1e-6
    # training updated the relation module's running statistics (in place), one update per episode
    changed = [k for k in m.buffers if not torch.equal(m.buffers[k], before[k])]
    assert sorted(changed) == sorted(k for k in m.buffers if k.startswith("learner.relation."))
    out.loss.backward()
    assert m.params["learner.relation.fc2.weight"].grad.abs().sum() > 0
    assert m.params["encoder.features.0.weight"].grad.abs().sum() > 0


def test_relation_paper_shapes_and_bad_configs():
    # the paper's Omniglot maps: 28x28 -> 64 x 7 x 7 (two pooled blocks); relation module 7 -> 3 -> 1, FC 64 -> 8 -> 1
    cfg = resolve({"model": {"backbone": "conv4", "hidden": 64, "depth": 2}, "learner": {"name": "relationnet"},
                   "tasks": {"ways": 5, "shots": 1, "queries": 2}})
    m = build_model(cfg, (1, 28, 28), Preprocess())
    assert m.params["learner.relation.block0.conv.weight"].shape == (64, 128, 3, 3)
    assert m.params["learner.relation.fc1.weight"].shape == (8, 64)
    assert m.params["learner.relation.fc2.weight"].shape == (1, 8)
    assert rn.map_shape(64 * 49, 64) == (64, 7, 7)
    m.train(False)
    with torch.no_grad():  # any number of ways in evaluation
        assert m.predict(torch.randn(1, 14, 1, 28, 28), torch.arange(7).repeat(2)[None],
                         torch.randn(1, 3, 1, 28, 28), 7).shape == (1, 3, 7)
    with pytest.raises(ConfigError, match="map_channels"):
        rn.map_shape(64 * 6, 64)  # 64 x 6: not square
    with pytest.raises(ConfigError, match="convolutional backbone"):
        build_model(resolve({"model": {"backbone": "mlp", "hidden": [8], "image_size": 4},
                             "learner": {"name": "relationnet"}}), (1, 4, 4), Preprocess())
    # K-shot class maps: the sum of the class's support maps (mean on request), any label order
    maps = torch.randn(1, 4, 2, 3, 3)
    y = torch.tensor([[1, 0, 1, 0]])
    assert torch.allclose(rn.class_maps(maps, y, 2)[0, 1], maps[0, 0] + maps[0, 2])
    assert torch.allclose(rn.class_maps(maps, y, 2, "mean")[0, 0], (maps[0, 1] + maps[0, 3]) / 2)


# ---------------------------------------------------------------------------------------------------------------
# FEAT


def direct_set_function(params, x):
    """softmax(Q Kᵀ / sqrt(d)) V, output layer, residual, LayerNorm: one set [L, D] at a time, LayerNorm by hand."""
    p = {k[len(featmod.ATTN):]: v for k, v in params.items() if k.startswith(featmod.ATTN)}
    outs = []
    for s in x:
        q, k, v = s @ p["w_q"].T, s @ p["w_k"].T, s @ p["w_v"].T
        d = s.shape[-1]
        scores = torch.stack([torch.stack([q[i] @ k[j] / math.sqrt(d) for j in range(len(s))]) for i in range(len(s))])
        a = scores.exp() / scores.exp().sum(1, keepdim=True)
        h = (a @ v) @ p["fc.weight"].T + p["fc.bias"] + s
        mean, var = h.mean(-1, keepdim=True), ((h - h.mean(-1, keepdim=True)) ** 2).mean(-1, keepdim=True)
        outs.append((h - mean) / torch.sqrt(var + 1e-5) * p["norm.weight"] + p["norm.bias"])
    return torch.stack(outs)


def test_set_function_matches_explicit_attention():
    torch.manual_seed(0)
    params = {k: v.double() for k, v in featmod.init_attention_params(6).items()}
    params[featmod.ATTN + "norm.weight"] = torch.rand(6, dtype=torch.float64) + 0.5
    params[featmod.ATTN + "norm.bias"] = torch.randn(6, dtype=torch.float64)
    x = torch.randn(3, 4, 6, dtype=torch.float64)
    out = featmod.set_function(params, x)
    assert torch.allclose(out, direct_set_function(params, x), atol=1e-10)
    # permutation-equivariant (a set function), and dropout only while training
    perm = torch.tensor([2, 0, 3, 1])
    assert torch.allclose(featmod.set_function(params, x[:, perm]), out[:, perm], atol=1e-10)
    assert torch.equal(featmod.set_function(params, x, 0.5, 0.5, training=False), out)
    assert not torch.allclose(featmod.set_function(params, x, 0.5, 0.1, training=True), out)


@pytest.mark.parametrize("distance", ["euclidean", "cosine"])
def test_feat_regularizer_matches_direct_computation(distance):
    torch.manual_seed(2)
    params = {k: v.double() for k, v in featmod.init_attention_params(5).items()}
    z = torch.randn(2, 9, 5, dtype=torch.float64)
    labels = torch.stack([torch.randperm(9) % 3 for _ in range(2)])  # 3 classes x 3 instances, shuffled
    logits = featmod.regularizer_logits(params, z, labels, 3, distance, 4.0)
    ref = torch.zeros(2, 9, 3, dtype=torch.float64)
    for t in range(2):
        centers = []
        for n in range(3):
            members = z[t][labels[t] == n]  # support and query instances of class n
            centers.append(direct_set_function(params, members[None])[0].mean(0))
        for i in range(9):
            for n in range(3):
                if distance == "euclidean":
                    ref[t, i, n] = -((z[t, i] - centers[n]) ** 2).sum() / 4.0
                else:
                    ref[t, i, n] = (z[t, i] @ centers[n]) / centers[n].norm() / 4.0
    assert torch.allclose(logits, ref, atol=1e-10)
    with pytest.raises(ValueError, match="same number of support"):
        featmod.regularizer_logits(params, z, torch.tensor([[0, 0, 0, 0, 1, 1, 1, 2, 2]] * 2), 3, distance, 4.0)


def test_feat_logits_and_loss_match_formula():
    m, b = make({"name": "feat", "temperature": 2.0, "temperature2": 3.0, "balance": 0.7}, ways=3, shots=2,
                queries=2)
    m.train(False)  # no dropout: deterministic
    zs, zq = embeddings(m, b.support_x), embeddings(m, b.query_x)
    p = {k: v.detach() for k, v in m.params.items()}
    with torch.no_grad():
        logits = m.predict(b.support_x, b.support_y, b.query_x, 3)
        out = m.learner.loss(m.params, m.buffers, b)
    ref_logits = torch.zeros(2, 6, 3)
    ce, reg = 0.0, 0.0
    for t in range(2):
        protos = torch.stack([zs[t][b.support_y[t] == n].mean(0) for n in range(3)])
        adapted = direct_set_function(p, protos[None])[0]
        for j in range(6):
            ref_logits[t, j] = -((zq[t, j] - adapted) ** 2).sum(-1) / 2.0
            ce -= float(ref_logits[t, j].log_softmax(-1)[b.query_y[t, j]]) / 12
        allz, ally = torch.cat([zs[t], zq[t]]), torch.cat([b.support_y[t], b.query_y[t]])
        centers = torch.stack([direct_set_function(p, allz[ally == n][None])[0].mean(0) for n in range(3)])
        for i in range(12):
            reg -= float((-((allz[i] - centers) ** 2).sum(-1) / 3.0).log_softmax(-1)[ally[i]]) / 24
    assert torch.allclose(logits, ref_logits, atol=1e-4)
    assert abs(float(out.metrics["query_loss"]) - ce) < 1e-4
    assert abs(float(out.metrics["regularizer"]) - reg) < 1e-4
    assert abs(float(out.loss) - (ce + 0.7 * reg)) < 1e-4
    with torch.no_grad():  # any number of ways in evaluation
        assert m.predict(torch.randn(1, 5, 1, 8, 8), torch.arange(5)[None], torch.randn(1, 4, 1, 8, 8),
                         5).shape == (1, 4, 5)


# ---------------------------------------------------------------------------------------------------------------
# the real Trainer and evaluation


@pytest.mark.parametrize("learner", [["learner.name=matchingnet"], ["learner.name=matchingnet", "learner.fce=true"],
                                     ["learner.name=relationnet"], ["learner.name=feat", "learner.temperature=1"]],
                         ids=["matchingnet", "matchingnet_fce", "relationnet", "feat"])
def test_trainer_two_steps_then_evaluate(learner, tmp_path):
    from metassl.engine.evaluate import evaluate_run
    from metassl.engine.trainer import train

    cfg = resolve(apply_overrides({}, learner + [
        "data.dataset=digits", "data.train_split=train", "data.val_split=null", "data.test_split=test",
        "model.backbone=conv4", "model.hidden=8", "model.depth=2", "tasks.ways=3", "tasks.shots=2",
        "tasks.queries=2", "tasks.tasks_per_batch=2", "train.steps=2", "train.progress=false",
        "train.tensorboard=false", "train.report=false", "optim.name=adam", "eval.episodes=10"]))
    r = train(cfg, tmp_path / "run")
    assert r.steps == 2 and all(math.isfinite(h["loss"]) for h in r.history)
    # evaluated on more ways than trained on: 4-way 1-shot on the digits test split
    _, _, (res,) = evaluate_run(str(tmp_path / "run"), "digits", "test", 4, 1, 5, 10, 0, progress=False)
    assert 0.0 <= res.accuracy <= 100.0 and res.tag == "4w1s"
    assert len(res.per_episode_accuracy) == 10


@pytest.mark.parametrize("learner", [{"name": "matchingnet"}, {"name": "matchingnet", "fce": True},
                                     {"name": "relationnet", "relation_channels": 4, "relation_bn": "running"},
                                     {"name": "relationnet", "relation_channels": 4, "relation_bn": "batch"},
                                     {"name": "feat"}],
                         ids=["matchingnet", "matchingnet_fce", "relationnet_running", "relationnet_batch", "feat"])
def test_evaluation_does_not_depend_on_how_episodes_are_batched(learner):
    from conftest import make_split
    from metassl.eval.episodes import Protocol, evaluate

    model = {"backbone": "conv4", "hidden": 4, "depth": 2, "track_running_stats": False}  # batch statistics
    m, _ = make(learner, model=model)
    m.train(False)
    split = make_split(num_classes=8, per_class=6, shape=(1, 8, 8), name="toy/test")
    p = Protocol("toy", "test", 3, 1, 2, 12, 0)
    results = [evaluate(m.predict, split, p, Preprocess(), batch_episodes=b) for b in (1, 5, 12)]
    for r in results[1:]:
        assert r.per_episode_accuracy == results[0].per_episode_accuracy
        assert r.metrics["roc_auc"]["mean"] == pytest.approx(results[0].metrics["roc_auc"]["mean"], abs=1e-12)
