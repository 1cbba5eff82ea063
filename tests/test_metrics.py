import math

import numpy as np
import pytest
import torch
from sklearn.metrics import f1_score, precision_score, recall_score, roc_auc_score

from metassl.eval import confidence_interval, episode_metrics


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
        ovr = np.mean([roc_auc_score(y == c, s[:, c]) for c in range(ways)])
        assert float(m["roc_auc"][i]) == pytest.approx(ovr, abs=1e-6)
    assert m["confusion"].sum().item() == e * ways * q
