"""Semi-supervised few-shot episodes and the semi-supervised ProtoNet (Ren et al. 2018): the sampler's unlabeled
sets and distractor classes, fixed evaluation episodes, the three refinements against a direct computation, and
training / evaluation through the CLI."""

import json
import math

import numpy as np
import pytest
import scipy.stats
import torch

from conftest import class_ids, image_ids, make_split
from metassl.cli.main import main
from metassl.data.episodic import eval_episodes, sample_tasks
from metassl.learners.semi_protonet import refine_prototypes

pytestmark = pytest.mark.usefixtures("one_thread")


def test_unlabeled_sets_hold_the_task_classes_and_distractors_and_nothing_else():
    split = make_split(num_classes=12, per_class=8)
    g = torch.Generator().manual_seed(3)
    t = sample_tasks(split, 3, 2, 1, num_tasks=50, generator=g, unlabeled=2, distractors=2)
    assert t.unlabeled_x.shape == (50, (3 + 2) * 2, 1, 8, 8)
    sc, qc, uc = class_ids(t.support_x), class_ids(t.query_x), class_ids(t.unlabeled_x)
    si, qi, ui = image_ids(t.support_x), image_ids(t.query_x), image_ids(t.unlabeled_x)
    for k in range(50):
        task = set(sc[k].tolist())
        assert set(qc[k].tolist()) == task and len(task) == 3
        counts = {c: uc[k].tolist().count(c) for c in set(uc[k].tolist())}
        assert all(v == 2 for v in counts.values()) and len(counts) == 5  # M per class, N + D classes
        assert task < set(counts)  # the task's classes plus two distractor classes outside it
        assert not set(ui[k].tolist()) & (set(si[k].tolist()) | set(qi[k].tolist()))  # disjoint images
        assert len(set(ui[k].tolist())) == 10
        assert torch.equal(t.classes[k].sort().values, torch.tensor(sorted(task)))
    # the unlabeled order says nothing of the class: not sorted by class in most tasks
    assert sum(bool((uc[k][1:] >= uc[k][:-1]).all()) for k in range(50)) < 5


def test_no_unlabeled_set_gives_exactly_the_plain_tasks():
    split = make_split(num_classes=10, per_class=6, ragged=True)
    a = sample_tasks(split, 3, 1, 2, 4, torch.Generator().manual_seed(7))
    b = sample_tasks(split, 3, 1, 2, 4, torch.Generator().manual_seed(7), unlabeled=0, distractors=0)
    assert b.unlabeled_x is None
    assert torch.equal(a.support_x, b.support_x) and torch.equal(a.query_x, b.query_x)
    e1 = eval_episodes(split, 3, 1, 2, 0, 0, 3)
    e2 = eval_episodes(split, 3, 1, 2, 0, 0, 3, unlabeled=0, distractors=0)
    assert torch.equal(e1.query_x, e2.query_x) and e2.unlabeled_x is None


def test_semi_supervised_eval_episodes_are_a_pure_function_of_their_identity():
    split = make_split(num_classes=12, per_class=8)
    whole = eval_episodes(split, 3, 1, 2, 5, 0, 6, unlabeled=2, distractors=3)
    parts = [eval_episodes(split, 3, 1, 2, 5, s, 2, unlabeled=2, distractors=3) for s in (0, 2, 4)]
    assert torch.equal(whole.unlabeled_x, torch.cat([p.unlabeled_x for p in parts]))
    assert torch.equal(whole.support_x, torch.cat([p.support_x for p in parts]))
    other = eval_episodes(split, 3, 1, 2, 5, 0, 6, unlabeled=2, distractors=2)
    assert not torch.equal(other.support_x, whole.support_x)  # (M, D) are part of the episode's identity


def test_bad_semi_supervised_shapes_name_the_problem():
    split = make_split(num_classes=6, per_class=5)
    with pytest.raises(ValueError, match="distractor classes with 0 unlabeled"):
        sample_tasks(split, 3, 1, 1, unlabeled=0, distractors=2)
    with pytest.raises(ValueError, match="3-way tasks with 4 distractor classes.*only 6 classes"):
        sample_tasks(split, 3, 1, 1, unlabeled=1, distractors=4)
    with pytest.raises(ValueError, match=r"1 shots \+ 1 queries \+ 4 unlabeled = 6 images per class"):
        sample_tasks(split, 3, 1, 1, unlabeled=4)


def _feats(seed=0, t=2, ways=3, shots=2, u=7, d=4):
    g = torch.Generator().manual_seed(seed)
    zs = torch.rand(t, ways * shots, d, generator=g, dtype=torch.float64)
    sy = torch.arange(ways).repeat_interleave(shots).expand(t, -1).contiguous()
    zu = torch.rand(t, u, d, generator=g, dtype=torch.float64) * 1.5
    return zs, sy, zu


def _reference(zs, sy, zu, ways, log_r=None, mask=None):
    """One refinement step of one episode written out with numpy loops (the paper's equations)."""
    zs, sy, zu = zs.numpy(), sy.numpy(), zu.numpy()
    p = np.stack([zs[sy == c].mean(0) for c in range(ways)])
    d = np.array([[((u - p[c]) ** 2).sum() for c in range(ways)] for u in zu])  # [U, N]
    if log_r is None:
        logits = -d
    else:
        r = math.exp(log_r)
        a = lambda rr: 0.5 * math.log(2 * math.pi) + math.log(rr)  # noqa: E731  A(r)
        extra = np.array([[-(u ** 2).sum() / r ** 2 - a(r)] for u in zu])
        logits = np.concatenate([-d - a(1.0), extra], 1)
    w = np.exp(logits - logits.max(1, keepdims=True))
    w = (w / w.sum(1, keepdims=True))[:, :ways]
    if mask is not None:
        dn = d / d.mean(0, keepdims=True)
        m = np.zeros_like(dn)
        for c in range(ways):
            col = dn[:, c]
            stats = np.array([col.min(), col.max(), col.var(), scipy.stats.skew(col),
                              scipy.stats.kurtosis(col, fisher=False)])
            h = np.tanh(mask["0.weight"].numpy() @ stats + mask["0.bias"].numpy())
            beta, gamma = mask["2.weight"].numpy() @ h + mask["2.bias"].numpy()
            m[:, c] = 1.0 / (1.0 + np.exp(gamma * (col - beta)))
        w = w * m
    out = []
    for c in range(ways):
        num = zs[sy == c].sum(0) + (w[:, c:c + 1] * zu).sum(0)
        out.append(num / ((sy == c).sum() + w[:, c].sum()))
    return torch.from_numpy(np.stack(out))


def test_soft_kmeans_distractor_and_masked_refinements_match_the_paper():
    zs, sy, zu = _feats()
    g = torch.Generator().manual_seed(1)
    mask = {"0.weight": torch.randn(6, 5, generator=g, dtype=torch.float64),
            "0.bias": torch.randn(6, generator=g, dtype=torch.float64),
            "2.weight": torch.randn(2, 6, generator=g, dtype=torch.float64) * 0.5,
            "2.bias": torch.tensor([1.0, 2.0], dtype=torch.float64)}
    for kw, ref_kw in (({}, {}), ({"distractor_log_radius": 0.3}, {"log_r": 0.3}), ({"mask": mask}, {"mask": mask})):
        got = refine_prototypes(zs, sy, zu, 3, 1, **kw)
        for k in range(2):
            assert torch.allclose(got[k], _reference(zs[k], sy[k], zu[k], 3, **ref_kw), atol=1e-10), kw
    # no step: the support means; two steps differ from one
    means = torch.stack([torch.stack([zs[k][sy[k] == c].mean(0) for c in range(3)]) for k in range(2)])
    assert torch.allclose(refine_prototypes(zs, sy, zu, 3, 0), means)
    assert not torch.allclose(refine_prototypes(zs, sy, zu, 3, 2), refine_prototypes(zs, sy, zu, 3, 1))


def test_a_far_distractor_cluster_takes_the_distractors():
    """Unlabeled points near the origin (the distractor cluster's centre) barely move the prototypes when the
    cluster is on, and pull them when it is off."""
    zs = torch.tensor([[[4.0, 0.0], [0.0, 4.0]]], dtype=torch.float64)
    sy = torch.tensor([[0, 1]])
    zu = torch.tensor([[[0.1, 0.0], [0.0, 0.1], [0.05, 0.05]]], dtype=torch.float64)
    plain = refine_prototypes(zs, sy, zu, 2, 1)
    with_cluster = refine_prototypes(zs, sy, zu, 2, 1, distractor_log_radius=0.0)
    assert (with_cluster - zs).abs().max() < 0.05 < (plain - zs).abs().max()


def _learner(refine):
    from torch import nn

    from metassl.config import build
    from metassl.learners.base import EngineOptions
    from metassl.learners.semi_protonet import SemiProtoNet, SemiProtoNetConfig

    torch.manual_seed(0)
    enc = nn.Sequential(nn.Flatten(), nn.Linear(64, 6))
    learner = SemiProtoNet(build(SemiProtoNetConfig, {"refine": refine}, "learner"), enc, EngineOptions())
    params = {f"encoder.{k}": v.detach().clone().requires_grad_() for k, v in enc.named_parameters()}
    params.update({k: v.requires_grad_() for k, v in learner.init_params(6, 3).items()})
    return learner, params


@pytest.mark.parametrize("refine", ["softkmeans", "distractor", "masked"])
def test_the_learner_trains_its_own_tensors_and_ignores_the_unlabeled_order(refine):
    split = make_split(num_classes=12, per_class=8)
    tasks = sample_tasks(split, 3, 2, 2, 3, torch.Generator().manual_seed(0), unlabeled=2, distractors=2)
    tasks = tasks.map_images(lambda x: x.float() / 255)
    learner, params = _learner(refine)
    out = learner.loss(params, {}, tasks)
    grads = torch.autograd.grad(out.loss, list(params.values()))
    names = [k for k, gr in zip(params, grads) if gr.abs().sum() > 0]
    assert {k for k in params if k.startswith("learner.")} <= set(names)
    with torch.no_grad():
        a = learner.predict(params, {}, tasks.support_x, tasks.support_y, tasks.query_x, 3, tasks.unlabeled_x)
        perm = torch.randperm(tasks.unlabeled_x.shape[1], generator=torch.Generator().manual_seed(1))
        b = learner.predict(params, {}, tasks.support_x, tasks.support_y, tasks.query_x, 3,
                            tasks.unlabeled_x[:, perm])
        plain = learner.predict(params, {}, tasks.support_x, tasks.support_y, tasks.query_x, 3)
    assert torch.allclose(a, b, atol=1e-5) and not torch.allclose(a, plain, atol=1e-4)


def test_train_and_evaluate_semi_supervised_through_the_cli(tmp_path, capsys):
    run = tmp_path / "semi"
    assert main(["train", "omniglot/semi_protonet_distractor_5w1s", "data.dataset=digits", "data.train_split=train",
                 "data.test_split=test", "model.hidden=8", "model.depth=2", "tasks.ways=3", "tasks.queries=2",
                 "tasks.unlabeled=2", "tasks.distractors=2", "train.steps=3", "train.progress=false",
                 "train.tensorboard=false", "train.report=false", "eval.ways=2", "eval.queries=3",
                 "eval.unlabeled=3", "eval.distractors=2", "eval.episodes=4", "--run-dir", str(run)]) == 0
    capsys.readouterr()
    assert main(["eval", str(run), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["protocol"]["unlabeled"] == 3 and d["protocol"]["distractors"] == 2 and d["learner"] == "semi_protonet"
    # the same run, inductive episodes, and a transductive method using the episode's unlabeled images as its pool
    assert main(["eval", str(run), "--unlabeled", "0", "--distractors", "0", "--json"]) == 0
    assert "unlabeled" not in json.loads(capsys.readouterr().out)["protocol"]
    assert main(["compare", str(run), str(run), "--transductive", "none", "softkmeans", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[1]["protocol"]["unlabeled"] == 3 and rows[1]["paired_vs_first"]["episodes"] == 4
    assert main(["eval", str(run), "--distractors", "9"]) == 2
    assert "distractor classes" in capsys.readouterr().err
