import json
import math

import mpmath
import numpy as np
import pytest
import torch
from sklearn.metrics import f1_score, precision_score, recall_score, roc_auc_score

from metassl.eval import confidence_interval, episode_metrics


def _exact_ovr_auc(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Reference one-vs-rest ROC-AUC of one episode [Q, N], [Q]: the softmax probabilities computed to 2000 digits
    (exact for these margins; terms summed in sorted order so equal probabilities come out equal), turned into ranks
    (ties share a rank) for sklearn; mean over the classes that have positives and negatives."""
    rows, y = logits.double().tolist(), labels.numpy()
    aucs = []
    with mpmath.workdps(2000):
        for c in range(len(rows[0])):
            if (y == c).all() or not (y == c).any():
                continue
            p = [1 / mpmath.fsum(sorted(mpmath.exp(mpmath.mpf(v) - mpmath.mpf(r[c])) for v in r)) for r in rows]
            ranks = [sum(u < v for u in p) + 0.5 * sum(u == v for u in p) for v in p]
            aucs.append(roc_auc_score(y == c, ranks))
    return float(np.mean(aucs))


def test_confidence_interval_formula():
    v = [50.0, 60.0, 70.0, 80.0]
    mean, ci = confidence_interval(v)
    assert mean == pytest.approx(65.0)
    assert ci == pytest.approx(1.96 * np.std(v, ddof=1) / math.sqrt(4))
    assert confidence_interval([1.0, 1.0, 1.0])[1] == 0.0


def test_metrics_match_sklearn_per_episode():
    g = torch.Generator().manual_seed(0)
    e, ways, q = 6, 5, 4
    labels = torch.arange(ways).repeat_interleave(q).expand(e, -1).clone()
    logits = torch.randn(e, ways * q, ways, generator=g) + 1.5 * torch.nn.functional.one_hot(labels, ways)
    logits[0, :, 0] += 100.0  # an episode where one class swallows every prediction
    logits[1] = torch.round(logits[1])  # ties in scores
    m = episode_metrics(logits, labels, ways)
    for i in range(e):
        y, s = labels[i].numpy(), logits[i].softmax(-1).numpy()
        pred = s.argmax(-1)
        assert float(m["accuracy"][i]) == pytest.approx((pred == y).mean())
        assert float(m["precision"][i]) == pytest.approx(precision_score(y, pred, average="macro", zero_division=0))
        assert float(m["recall"][i]) == pytest.approx(recall_score(y, pred, average="macro", zero_division=0))
        assert float(m["f1"][i]) == pytest.approx(f1_score(y, pred, average="macro", zero_division=0))
        # exact reference: float32 softmax saturates in episode 0 (margin 100), which is what the metric must not do
        assert float(m["roc_auc"][i]) == pytest.approx(_exact_ovr_auc(logits[i], labels[i]), abs=1e-6)
    assert m["confusion"].sum().item() == e * ways * q


def test_roc_auc_does_not_tie_saturated_probabilities():
    # class-0 margins 20, 40 (positives) and 30, 50 (negatives): float32 softmax gives p0 = 1.0 for all four (a
    # 4-way tie, AUC 0.5) and float64 log-softmax still ties 40 with 50; exactly, one of the 4 pairs is ordered right
    logits = torch.tensor([[[20.0, 0.0], [40.0, 0.0], [30.0, 0.0], [50.0, 0.0]]])
    labels = torch.tensor([[0, 0, 1, 1]])
    assert float(episode_metrics(logits, labels, 2)["roc_auc"][0]) == 0.25


def test_roc_auc_large_margins_match_exact():
    g = torch.Generator().manual_seed(1)
    e, ways, q = 3, 4, 12
    labels = torch.arange(ways).repeat_interleave(q // ways).expand(e, -1).clone()
    logits = torch.randn(e, q, ways, generator=g) * 300.0  # margins of ~100 to ~1000
    logits[1, :, 0] = 1000.0 + torch.randn(q, generator=g)  # class 0 wins everywhere by ~1000
    # exact ties: an equal row, and rows whose other classes are permuted (equal p_0 and p_3, or equal p_2)
    logits[2, 1], logits[2, 5], logits[2, 9] = logits[2, 0], logits[2, 0][[0, 2, 1, 3]], logits[2, 6][[1, 3, 2, 0]]
    m = episode_metrics(logits, labels, ways)
    for i in range(e):
        assert float(m["roc_auc"][i]) == pytest.approx(_exact_ovr_auc(logits[i], labels[i]), abs=1e-6)


def test_macro_counts_predicted_classes_absent_from_labels():
    # scikit-learn's average="macro" averages over the classes in labels or predictions
    g = torch.Generator().manual_seed(2)
    e, ways, q = 4, 5, 16
    labels = torch.arange(4).repeat_interleave(q // 4).expand(e, -1).clone()  # class 4 is never a true label
    logits = torch.randn(e, q, ways, generator=g) + 1.0 * torch.nn.functional.one_hot(labels, ways)
    logits[:, ::3, 4] += 10.0  # ... but is predicted for every third query
    logits[3, :, 3] -= 20.0  # episode 3: class 3 is a true label that is never predicted
    m = episode_metrics(logits, labels, ways)
    for i in range(e):
        y, pred = labels[i].numpy(), logits[i].argmax(-1).numpy()
        assert 4 in pred and 4 not in y
        assert float(m["precision"][i]) == pytest.approx(precision_score(y, pred, average="macro", zero_division=0))
        assert float(m["recall"][i]) == pytest.approx(recall_score(y, pred, average="macro", zero_division=0))
        assert float(m["f1"][i]) == pytest.approx(f1_score(y, pred, average="macro", zero_division=0))


def test_roc_auc_counts_permuted_rows_as_ties():
    # a query whose other classes' logits are a permutation of another query's has the same p_0 exactly; the score
    # must tie bit for bit (a sum of 6 exponentials in another order usually differs in the last bit)
    g = torch.Generator().manual_seed(3)
    ways, q = 7, 14
    logits = torch.randn(1, q, ways, generator=g) * 3.0
    labels = torch.arange(q).remainder(ways).unsqueeze(0)
    for i in range(0, q, 2):  # query i + 1 gets query i's logits with classes 1..6 permuted: the same p_0
        perm = torch.cat([torch.zeros(1, dtype=torch.long), torch.randperm(ways - 1, generator=g) + 1])
        logits[0, i + 1] = logits[0, i][perm]
    m = episode_metrics(logits, labels, ways)
    assert float(m["roc_auc"][0]) == pytest.approx(_exact_ovr_auc(logits[0], labels[0]), abs=1e-6)


# ---------------------------------------------------------------------------------------------------------------
# the one result type of every protocol


def test_one_result_type_for_every_protocol():
    from metassl.eval import EvalResult, Protocol

    p = Protocol("digits", "test", 4, 1, 5, 2, 0)
    fs = EvalResult(p.to_dict(), 60.0, 5.0, {"accuracy": {"mean": 60.0, "ci95": 5.0}, "f1": {"mean": 0.5, "ci95": 0.1},
                                             "roc_auc": {"mean": 0.75, "ci95": math.nan}}, 1.23456,
                    per_episode_accuracy=[50.0, 70.0])
    d = fs.to_dict()
    assert d["protocol"] == {"name": "fewshot", "dataset": "digits", "split": "test", "ways": 4, "shots": 1,
                             "queries": 5, "episodes": 2, "seed": 0}
    assert (d["accuracy"], d["ci95"], d["f1"], d["roc_auc"], d["seconds"]) == (60.0, 5.0, 0.5, 0.75, 1.235)
    assert d["metrics"]["roc_auc"]["ci95"] is None and "top1" not in d and "per_episode_accuracy" not in d
    assert fs.tag == "4w1s" and fs.line().startswith("digits/test 4-way 1-shot (2 episodes, 5 queries, seed 0)")
    knn = EvalResult({"name": "knn", "k": 5, "temperature": 0.1, "dataset": "toy", "train_split": "a",
                      "test_split": "b", "train_size": 10, "test_size": 4}, 75.0, per_class_accuracy=[100.0, math.nan])
    d = knn.to_dict()
    assert d["ci95"] is None and d["top1"] == 0.75 and d["per_class_accuracy"] == [100.0, None]
    assert math.isnan(knn.ci95) and knn.tag == "knn" and knn.line().endswith("top-1 75.00%")
    lin = EvalResult({"name": "linear", "weight_decay": 1e-4, "dataset": "toy", "train_split": "a", "test_split": "b",
                      "train_size": 10, "test_size": 4}, 50.0, metrics={"train_accuracy": {"mean": 90.0, "ci95": math.nan}})
    d = lin.to_dict()
    assert d["train_accuracy"] == 90.0 and d["top1"] == 0.5 and lin.line().endswith("top-1 50.00% (train 90.00%)")
    json.dumps(d, allow_nan=False)  # JSON without NaN tokens
