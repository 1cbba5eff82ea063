"""Frozen-encoder evaluation (metassl.eval.features / knn / linear): kNN against brute force, bad splits, the
batched embedding, the one result type, the linear probe."""

import math

import pytest
import torch

from metassl.data import ClassSplit

from metassl.eval.knn import knn_evaluate, knn_predict
from metassl.eval.linear import fit_linear_probe, predict_linear

from conftest import make_split
from test_ssl import cos, tiny_model



def test_knn_matches_brute_force():
    g = torch.Generator().manual_seed(5)
    bank, labels, queries = torch.randn(40, 5, generator=g), torch.randint(0, 3, (40,), generator=g), \
        torch.randn(12, 5, generator=g)
    k, t = 7, 0.1
    pred = knn_predict(bank, labels, queries, 3, k, t, chunk=5)
    for i in range(12):
        sims = sorted(((cos(queries[i], bank[j]), int(labels[j])) for j in range(40)), reverse=True)[:k]
        votes = [sum(math.exp(s / t) for s, c in sims if c == cls) for cls in range(3)]
        assert int(pred[i]) == max(range(3), key=lambda c: votes[c])
    assert knn_predict(bank, labels, queries, 3, k=1000).shape == (12,)  # k larger than the bank: all of it


def test_knn_needs_two_classes_and_matching_splits():
    m = tiny_model("simclr")
    one = ClassSplit(torch.zeros(5, 1, 8, 8, dtype=torch.uint8), torch.tensor([5]), ["only"], name="x/train")
    with pytest.raises(ValueError, match="at least 2 classes; x/train has 1"):
        knn_evaluate(m, one, one, "x")
    a, b = make_split(num_classes=3, per_class=4), make_split(num_classes=4, per_class=4, name="toy/test")
    with pytest.raises(ValueError, match="same classes"):
        knn_evaluate(m, a, b, "toy")
    r = knn_evaluate(m, a, make_split(num_classes=3, per_class=2, name="toy/test", seed=1), "toy", k=5,
                     max_train=10, max_test=4, seed=3)
    assert r.protocol["train_size"] == 10 and r.protocol["test_size"] == 4 and r.protocol["k"] == 5
    assert 0.0 <= r.accuracy <= 100.0


def test_embed_images_batches_in_eval_mode_and_restores_the_mode():
    from metassl.eval.features import embed_images

    m = tiny_model("simclr")
    x = make_split(num_classes=3, per_class=5).images
    m.train(True)
    z = embed_images(m, x, batch_size=4)
    assert m.encoder.training and z.shape[0] == 15 and z.dtype == torch.float32
    m.train(False)
    with torch.no_grad():
        ref = m.learner.embed(m.params, m.buffers, m.preprocess(x))
    assert torch.allclose(z, ref, atol=1e-6) and embed_images(m, x[:0]).shape == (0, 0)


def test_frozen_protocols_return_the_one_result_type():
    from metassl.eval import EvalResult
    from metassl.eval.linear import linear_evaluate

    m = tiny_model("simclr")
    a, b = make_split(num_classes=3, per_class=4), make_split(num_classes=3, per_class=2, name="toy/test", seed=1)
    k = knn_evaluate(m, a, b, "toy", k=5)
    lin = linear_evaluate(m, a, b, "toy", max_iter=20)
    assert isinstance(k, EvalResult) and isinstance(lin, EvalResult)
    assert k.protocol["name"] == "knn" and len(k.per_class_accuracy) == 3 and math.isnan(k.ci95)
    assert lin.protocol["name"] == "linear" and 0.0 <= lin.metrics["train_accuracy"]["mean"] <= 100.0
    assert set(k.to_dict()) >= {"protocol", "accuracy", "top1", "per_class_accuracy", "seconds"}
    assert set(lin.to_dict()) >= {"protocol", "accuracy", "top1", "train_accuracy", "seconds"}


def test_linear_probe_beats_chance_on_separable_features():
    g = torch.Generator().manual_seed(6)
    centers = torch.randn(4, 16, generator=g) * 3
    y = torch.arange(4).repeat_interleave(50)
    x = centers[y] + torch.randn(200, 16, generator=g)
    probe = fit_linear_probe(x[::2], y[::2], 4, max_iter=100)
    acc = float((predict_linear(x[1::2], probe) == y[1::2]).float().mean())
    assert acc > 0.9
