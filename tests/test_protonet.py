import torch
import torch.nn.functional as F

from metassl.config import load_config, resolve
from metassl.data import Preprocess, sample_tasks
from metassl.engine.build import build_model
from metassl.learners.protonet import prototypes

from conftest import make_split


def tiny_cfg(**learner):
    return resolve({"model": {"backbone": "mlp", "hidden": [16, 8], "image_size": 8},
                    "learner": {"name": "protonet", **learner}, "tasks": {"ways": 3, "shots": 2, "queries": 2}})


def direct_logits(z_support, y_support, z_query, ways, distance="euclidean", temperature=1.0):
    """Loop-based reference: class means, then distances, one task and one query at a time."""
    out = torch.zeros(z_query.shape[0], z_query.shape[1], ways)
    for t in range(z_query.shape[0]):
        protos = [z_support[t][y_support[t] == c].mean(0) for c in range(ways)]
        for i, q in enumerate(z_query[t]):
            for c, p in enumerate(protos):
                if distance == "euclidean":  # the paper's: squared
                    out[t, i, c] = -((q - p) ** 2).sum()
                elif distance == "l2":  # plain Euclidean distance
                    out[t, i, c] = -((q - p) ** 2).sum().sqrt()
                else:
                    out[t, i, c] = F.cosine_similarity(q, p, dim=0)
    return out / temperature


def test_prototypes_with_shuffled_unequal_support():
    z = torch.randn(2, 7, 5)
    y = torch.tensor([[2, 0, 1, 0, 2, 2, 1], [1, 1, 0, 2, 0, 2, 2]])
    p = prototypes(z, y, 3)
    for t in range(2):
        for c in range(3):
            assert torch.allclose(p[t, c], z[t][y[t] == c].mean(0), atol=1e-6)


def test_logits_match_direct_computation():
    split = make_split(num_classes=10, per_class=6)
    for distance, temp in (("euclidean", 1.0), ("l2", 1.0), ("cosine", 0.1)):
        cfg = tiny_cfg(distance=distance, temperature=temp)
        m = build_model(cfg, split.image_shape, Preprocess())
        m.train(False)
        b = sample_tasks(split, 4, 2, 3, 5, torch.Generator().manual_seed(0)).map_images(Preprocess())
        logits = m.predict(b.support_x, b.support_y, b.query_x, 4)
        zs = m.learner.embed(m.params, m.buffers, b.support_x)
        zq = m.learner.embed(m.params, m.buffers, b.query_x)
        ref = direct_logits(zs, b.support_y, zq, 4, distance, temp)
        assert logits.shape == (5, 12, 4)
        assert torch.allclose(logits, ref, atol=1e-4, rtol=1e-4)


def test_loss_is_cross_entropy_and_trains():
    split = make_split(num_classes=10, per_class=6)
    cfg = tiny_cfg()
    m = build_model(cfg, split.image_shape, Preprocess())
    m.train(True)
    opt = torch.optim.Adam(m.params.values(), lr=1e-2)
    g = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(60):
        b = sample_tasks(split, 3, 2, 2, 4, g).map_images(Preprocess())
        _out = m.learner.loss(m.params, m.buffers, b)
        loss, metrics = _out.loss, {**_out.metrics, **_out.state}
        assert 0.0 <= float(metrics["accuracy"]) <= 1.0
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    # the toy images carry their class id in pixel 0, so a learner must get better than chance quickly
    assert sum(losses[-10:]) / 10 < sum(losses[:10]) / 10 * 0.7


def test_train_and_test_ways_may_differ():
    split = make_split(num_classes=12, per_class=6)
    cfg = load_config("omniglot/protonet_5w1s", ["model.backbone=mlp", "model.image_size=8", "tasks.ways=6"])
    m = build_model(cfg, split.image_shape, Preprocess())
    b = sample_tasks(split, 9, 1, 2, 2).map_images(Preprocess())
    assert m.predict(b.support_x, b.support_y, b.query_x, 9).shape == (2, 18, 9)


def test_l2_distance_equals_cdist_with_finite_gradient_at_zero():
    from metassl.learners.protonet import euclidean

    q, p = torch.randn(2, 5, 4), torch.randn(2, 3, 4)
    assert torch.allclose(euclidean(q, p), torch.cdist(q, p), atol=1e-5)
    x = torch.zeros(1, 1, 4, requires_grad=True)  # a query on its prototype: sqrt'(0) would be infinite
    euclidean(x, torch.zeros(1, 1, 4)).sum().backward()
    assert torch.isfinite(x.grad).all()


def test_separate_support_query_loss_uses_two_batchnorm_batches():
    """`separate_support_query`: the loss equals a direct computation with support and queries embedded apart (batch
    statistics of each set), and differs from the one-call loss (shared statistics)."""
    split = make_split(num_classes=10, per_class=6)
    cfg = resolve({"model": {"backbone": "conv4", "hidden": 4, "depth": 2},
                   "learner": {"name": "protonet", "separate_support_query": True},
                   "tasks": {"ways": 3, "shots": 2, "queries": 2}})
    m = build_model(cfg, split.image_shape, Preprocess())
    m.train(True)
    b = sample_tasks(split, 3, 2, 2, 1, torch.Generator().manual_seed(0)).map_images(Preprocess())
    loss = m.learner.loss(m.params, m.buffers, b).loss
    zs = m.learner.embed(m.params, m.buffers, b.support_x)
    zq = m.learner.embed(m.params, m.buffers, b.query_x)
    ref = F.cross_entropy(direct_logits(zs, b.support_y, zq, 3).flatten(0, 1), b.query_y.flatten())
    assert torch.allclose(loss, ref, atol=1e-5)
    m.learner.config.separate_support_query = False
    joint = m.learner.loss(m.params, m.buffers, b).loss
    assert not torch.allclose(joint, ref, atol=1e-4)
