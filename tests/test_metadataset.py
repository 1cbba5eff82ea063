"""Issue 19: Meta-Dataset's variable-way variable-shot sampler, masks, multi-domain splits, Double-/Triple-MNIST,
the Meta-Dataset evaluation protocol and ranks."""

import math

import numpy as np
import pytest
import torch

from conftest import class_ids, image_ids, make_split
from metassl.config import ConfigError
from metassl.data.episodic import ClassSplit, Preprocess
from metassl.data.metadataset import (MetaDatasetTaskConfig, assemble, class_groups, draw_episodes,
                                      metadataset_episodes, sample_metadataset, MetaDatasetTasks)
from metassl.data.multidomain import Domains, check_datasets, common_shape, to_common
from metassl.eval.metadataset import MetaDatasetProtocol, average_ranks, evaluate_metadataset, ranks


def _cfg(**kw):
    return MetaDatasetTaskConfig(source="metadataset", **kw)


def test_ways_and_shots_follow_the_papers_definitions(one_thread):
    """Many draws: ways uniform on [5, min(50, C)], q = min(10, min_c |c| // 2), support size and per-class shots
    as sampling.py defines them (recomputed here from the drawn uniforms' consequences)."""
    split = make_split(num_classes=30, per_class=40, ragged=True, seed=3)
    cfg = _cfg(max_ways=12, max_support=60, max_support_per_class=7)
    g = torch.Generator().manual_seed(1)
    group, prob = class_groups(split, False, False)
    d = draw_episodes(split.counts, group, prob, cfg, 4000, g, torch.device("cpu"), split.max_count)
    ways = d.ways
    hist = torch.bincount(ways, minlength=13)[5:13].float()
    assert int(ways.min()) == 5 and int(ways.max()) == 12
    expected = 4000 / 8
    chi2 = float(((hist - expected) ** 2 / expected).sum())
    assert chi2 < 24.3  # chi-square, 7 degrees of freedom, p = 0.001
    for t in range(300):
        n = int(ways[t])
        cls = d.classes[t, :n]
        assert len(set(cls.tolist())) == n
        cnt = split.counts[cls]
        q = int(d.queries[t])
        assert q == min(10, int((cnt // 2).min()))
        shots = d.shots[t, :n]
        assert bool((shots >= 1).all()) and bool((shots <= cnt - q).all()) and int(d.shots[t, n:].sum()) == 0
        remaining = cnt - q
        contrib = torch.clamp(remaining, max=7)
        # |S| = min(sum floor(beta * contrib + 1), 60) for some beta in [0, 1): it lies in [N, min(sum contrib, 60)]
        total = int(shots.sum())
        assert total <= 60
        # each class's desired shots is floor(p_c (|S| - N)) + 1 <= |S| - N + 1 with p_c >= 0
        assert total >= n
        assert total <= min(int(contrib.sum()), 60)


def test_support_shots_are_imbalanced_by_class_size_as_defined():
    """p_c proportional to |c| exp(U[log .5, log 2]): with one class 4x larger, its mean share of the support set is
    larger, and with min_log_weight = max_log_weight = 0 the shares follow |c| exactly (before the floor)."""
    counts = torch.tensor([80, 20, 20, 20, 20])
    images = torch.zeros(int(counts.sum()), 1, 4, 4, dtype=torch.uint8)
    split = ClassSplit(images, counts, [f"c{i}" for i in range(5)], name="toy/train")
    cfg = _cfg(max_ways=5, max_support=500, max_support_per_class=100, min_log_weight=0.0, max_log_weight=0.0)
    g = torch.Generator().manual_seed(0)
    group, prob = class_groups(split, False, False)
    d = draw_episodes(split.counts, group, prob, cfg, 200, g, torch.device("cpu"), split.max_count)
    for t in range(200):
        cnt = counts[d.classes[t]]
        size = None
        n = 5
        q = int(d.queries[t])
        assert q == 10
        s = d.shots[t]
        # recover |S| bounds: shots = min(floor(cnt/sum * (|S| - 5)) + 1, cnt - q)
        for S in range(5, 501):
            want = torch.minimum(torch.floor(cnt.double() / cnt.sum() * (S - n)).long() + 1, cnt - q)
            if torch.equal(want, s):
                size = S
                break
        assert size is not None, (cnt.tolist(), s.tolist())


def test_padded_batch_is_consistent_and_disjoint(one_thread):
    split = make_split(num_classes=12, per_class=20, ragged=True)
    b = sample_metadataset(split, _cfg(min_ways=3, max_ways=8, max_support=40), 6, torch.Generator().manual_seed(0))
    assert b.padded and b.ways == int(b.task_ways.max())
    for t in range(6):
        s, q = b.support_mask[t], b.query_mask[t]
        n = int(b.task_ways[t])
        for x, y, m in ((b.support_x, b.support_y, s), (b.query_x, b.query_y, q)):
            assert torch.equal(b.classes[t][y[t][m]], class_ids(x)[t][m])
        assert set(b.support_y[t][s].tolist()) == set(range(n)) == set(b.query_y[t][q].tolist())
        si, qi = image_ids(b.support_x)[t][s].tolist(), image_ids(b.query_x)[t][q].tolist()
        assert len(set(si)) == len(si) and len(set(qi)) == len(qi) and not set(si) & set(qi)


def _protonet(**kw):
    from metassl.config import resolve
    from metassl.engine.build import build_model

    model = {"backbone": "conv4", "hidden": 8, **({"track_running_stats": False} if kw.get("name") == "protomaml"
                                                  else {})}
    cfg = resolve({"model": model, "learner": {"name": "protonet", **kw}})
    return build_model(cfg, (1, 16, 16), Preprocess(), "cpu")


@pytest.mark.parametrize("learner", ["protonet", "matchingnet"])
def test_masks_never_let_padding_change_logits_or_losses(one_thread, learner):
    """Garbage in the padded slots (images and labels) and extra padding change nothing; the padded batch's loss is
    the mean of the per-task losses of the unpadded tasks."""
    from metassl.data.metadataset import unpad

    torch.manual_seed(0)
    model = _protonet(name=learner)
    model.train(True)
    split = make_split(num_classes=10, per_class=12, ragged=True, shape=(1, 16, 16))
    b = sample_metadataset(split, _cfg(min_ways=3, max_ways=6, max_support=30), 3,
                           torch.Generator().manual_seed(2)).map_images(Preprocess())
    learner = model.learner
    out = learner.loss(model.params, model.buffers, b)
    garbage = b.__class__(**{**b.__dict__})
    garbage.support_x = b.support_x.clone()
    garbage.support_x[~b.support_mask] = 1e3
    garbage.query_x = b.query_x.clone()
    garbage.query_x[~b.query_mask] = -1e3
    garbage.support_y = b.support_y.masked_fill(~b.support_mask, 2)
    pad = 5  # more padding at the end of the support and query sets
    garbage.support_x = torch.cat([garbage.support_x, torch.randn(3, pad, *b.support_x.shape[2:])], 1)
    garbage.support_y = torch.cat([garbage.support_y, torch.ones(3, pad, dtype=torch.int64)], 1)
    garbage.support_mask = torch.cat([b.support_mask, torch.zeros(3, pad, dtype=torch.bool)], 1)
    garbage.query_x = torch.cat([garbage.query_x, torch.randn(3, pad, *b.query_x.shape[2:])], 1)
    garbage.query_y = torch.cat([b.query_y, torch.ones(3, pad, dtype=torch.int64)], 1)
    garbage.query_mask = torch.cat([b.query_mask, torch.zeros(3, pad, dtype=torch.bool)], 1)
    out2 = learner.loss(model.params, model.buffers, garbage)
    assert torch.allclose(out.loss, out2.loss, atol=1e-6) and torch.allclose(out.metrics["accuracy"],
                                                                             out2.metrics["accuracy"])
    # eval mode (running statistics): each task alone, unpadded, through the plain N-way path gives the same loss
    model.train(False)
    padded = learner.loss(model.params, model.buffers, b).loss
    singles = [learner.loss(model.params, model.buffers, unpad(b.select(t, t + 1))).loss for t in range(3)]
    assert torch.allclose(padded, torch.stack(singles).mean(), atol=1e-5)
    # gradients flow only from real entries: none to padded images
    x = b.support_x.clone().requires_grad_(True)
    b2 = b.__class__(**{**b.__dict__})
    b2.support_x = x
    learner.loss(model.params, model.buffers, b2).loss.backward()
    assert float(x.grad[~b.support_mask].abs().sum()) == 0.0 and float(x.grad[b.support_mask].abs().sum()) > 0


def test_evaluation_episodes_are_a_pure_function_of_their_identity():
    split = make_split(num_classes=15, per_class=14, ragged=True, name="toy/test")
    cfg = _cfg()
    a = metadataset_episodes(split, cfg, 0, 0, 6)
    b = metadataset_episodes(split, cfg, 0, 3, 3)  # another batching
    c = metadataset_episodes(split.to("cpu"), cfg, 1, 0, 2)
    for x, y in zip(a[3:], b):
        assert torch.equal(x.support_x, y.support_x) and torch.equal(x.query_y, y.query_y)
    assert not torch.equal(a[0].support_x, c[0].support_x) or a[0].ways != c[0].ways
    assert not a[0].padded and a[0].support_x.shape[0] == 1


def test_hierarchy_draws_classes_from_one_alphabet():
    names = [f"Alpha{a}/character{c:02d}/rot000" for a in range(3) for c in range(6)]
    counts = torch.full((18,), 4)
    split = ClassSplit(torch.zeros(72, 1, 4, 4, dtype=torch.uint8), counts, names, name="omniglot/test")
    group, prob = class_groups(split, True, False)
    assert group.tolist() == [0] * 6 + [1] * 6 + [2] * 6 and torch.allclose(prob, torch.full((3,), 1 / 3))
    d = draw_episodes(split.counts, group, prob, _cfg(), 50, torch.Generator().manual_seed(0),
                      torch.device("cpu"), split.max_count)
    for t in range(50):
        alph = {names[c].split("/")[0] for c in d.classes[t, :int(d.ways[t])].tolist()}
        assert len(alph) == 1 and 5 <= int(d.ways[t]) <= 6


def test_domains_weights_and_too_few_classes():
    a = make_split(num_classes=8, per_class=6, name="a/train")
    b = make_split(num_classes=4, per_class=6, name="b/train")
    images = torch.cat([a.images, b.images])
    doms = Domains(["a", "b"], [3.0, 1.0], torch.tensor([0] * 8 + [1] * 4))
    split = ClassSplit(images, torch.cat([a.counts, b.counts]), [f"a:{n}" for n in a.class_names] +
                       [f"b:{n}" for n in b.class_names], name="a+b/train", domains=doms)
    group, prob = class_groups(split, False, False)
    assert torch.allclose(prob, torch.tensor([0.75, 0.25]))
    with pytest.raises(ConfigError, match=r"data set b has 4 classes, fewer than tasks.min_ways=5"):
        MetaDatasetTasks(_cfg(), split, torch.Generator())
    ok = MetaDatasetTasks(_cfg(min_ways=3, max_ways=8), split, torch.Generator().manual_seed(0))
    doms_drawn = []
    for _ in range(200):
        batch = ok.sample()
        doms_drawn.append(int(batch.classes[0, 0]) >= 8)
        assert len({int(c) >= 8 for c in batch.classes[0, :int(batch.task_ways[0])]}) == 1  # one domain per episode
    assert 0.15 < sum(doms_drawn) / 200 < 0.35
    mixed = class_groups(split, False, True)
    assert mixed[0].unique().tolist() == [0]


def test_protomaml_on_padded_tasks_is_the_mean_of_its_unpadded_tasks(one_thread):
    from metassl.data.metadataset import unpad

    torch.manual_seed(0)
    model = _protonet(name="protomaml", inner_steps=1)
    model.train(True)
    split = make_split(num_classes=10, per_class=12, ragged=True, shape=(1, 16, 16))
    b = sample_metadataset(split, _cfg(min_ways=3, max_ways=5, max_support=15), 2,
                           torch.Generator().manual_seed(4)).map_images(Preprocess())
    learner = model.learner
    padded = learner.loss(model.params, model.buffers, b)
    singles = [learner.loss(model.params, model.buffers, unpad(b.select(t, t + 1))) for t in range(2)]
    assert torch.allclose(padded.loss, torch.stack([o.loss for o in singles]).mean(), atol=1e-6)
    garbage = b.__class__(**{**b.__dict__})
    garbage.support_x = b.support_x.masked_fill(~b.support_mask.view(2, -1, 1, 1, 1), 7.0)
    assert torch.allclose(learner.loss(model.params, model.buffers, garbage).loss, padded.loss, atol=1e-6)


def test_learners_without_variable_ways_are_refused():
    from metassl.config import resolve

    split = make_split(num_classes=8, per_class=6)
    cfg = resolve({"learner": {"name": "maml"}, "tasks": {"source": "metadataset"}})
    with pytest.raises(ConfigError, match=r"learner.name=maml trains on fixed N-way K-shot episodes.*protonet"):
        MetaDatasetTasks(cfg.tasks, split, torch.Generator(), config=cfg)


def test_bad_dataset_lists():
    with pytest.raises(ConfigError, match=r"unknown data set 'omniglott'.*Did you mean omniglot"):
        check_datasets(["omniglott", "mnist"])
    with pytest.raises(ConfigError, match=r"data.domain_weights has 1 values for 2"):
        check_datasets(["omniglot", "mnist"], [1.0])
    with pytest.raises(ConfigError, match=r"mixes channel counts.*data.channels"):
        common_shape(["omniglot", "cifar10"], 28, None)
    assert common_shape(["omniglot", "cifar10"], 28, 3) == (3, 28)


def test_to_common_inverts_converts_and_records():
    x = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    s = ClassSplit(x, torch.tensor([2, 2]), ["a", "b"], name="rgb/test", preprocess=Preprocess(invert=True))
    out, rec = to_common(s, 1, 4)
    assert out.image_shape == (1, 4, 4) and rec == {"dataset": "rgb", "split": "test", "from": [3, 8, 8],
                                                     "to": [1, 4, 4], "inverted": True}
    inv = 255 - x.to(torch.int64)
    gray = ((inv[:, 0] * 19595 + inv[:, 1] * 38470 + inv[:, 2] * 7471 + 0x8000) >> 16)
    assert torch.allclose(out.images[:, 0].float(), torch.nn.functional.interpolate(
        gray[:, None].float(), size=(4, 4), mode="bilinear", antialias=True)[:, 0].round(), atol=1)
    assert out.preprocess.invert is False


def test_ranks_and_average_rank():
    assert ranks([50.0, 70.0, 60.0]) == [3.0, 1.0, 2.0]
    assert ranks([70.0, 70.0, 60.0]) == [1.5, 1.5, 3.0]
    assert average_ranks([[50.0, 70.0], [80.0, 60.0], [10.0, 20.0]]) == [pytest.approx(5 / 3), pytest.approx(4 / 3)]


def test_evaluate_metadataset_matches_a_direct_count(one_thread):
    split = make_split(num_classes=10, per_class=10, ragged=True, name="toy/test")

    def predict(sx, sy, qx, ways):  # "classifier" reading the class id pixel of the first support image per label
        first = torch.stack([class_ids(sx)[0][sy[0] == k][0] for k in range(ways)])
        return (class_ids(qx)[0].unsqueeze(-1) == first).float().unsqueeze(0) + torch.rand(1, qx.shape[1], ways) * 0.1

    p = MetaDatasetProtocol("toy", "test", 7, 0)
    r = evaluate_metadataset(predict, split, p, lambda x: x)  # keep the id pixels
    assert r.accuracy == pytest.approx(100.0) and len(r.per_episode_accuracy) == 7
    assert r.protocol["name"] == "metadataset" and r.protocol["max_ways"] == 50 and "Meta-Dataset" in r.line()


def test_double_mnist_builder_is_deterministic_and_splits_disjoint():
    from metassl.data.loaders.multimnist import compose_class, split_classes

    for name, n, sizes in (("double_mnist", 2, (64, 16, 20)), ("triple_mnist", 3, (640, 160, 200))):
        parts = [split_classes(name, s) for s in ("train", "val", "test")]
        assert tuple(map(len, parts)) == sizes
        union = set().union(*map(set, parts))
        assert len(union) == sum(sizes) == 10 ** n and all(len(c) == n for c in union)
    rng = np.random.default_rng(0)
    pools = [rng.integers(0, 256, (5, 28, 28), dtype=np.uint8) for _ in range(10)]
    a = compose_class("double_mnist", "07", pools, 6, 64)
    b = compose_class("double_mnist", "07", pools, 6, 64)
    c = compose_class("double_mnist", "70", pools, 6, 64)
    assert a.shape == (6, 64, 64) and np.array_equal(a, b) and not np.array_equal(a, c)
    # every pixel is the max of the pasted digits: a digit "0" image appears somewhere in the left half
    assert a.max() > 0


def test_double_mnist_from_idx_files(tmp_path, monkeypatch):
    """The data set built from tiny synthetic MNIST IDX files: classes, counts, cache and determinism."""
    import gzip

    from metassl.data import load_dataset

    root = tmp_path / "data" / "mnist"
    root.mkdir(parents=True)
    g = np.random.default_rng(0)
    for prefix, n in (("train", 40), ("t10k", 30)):
        imgs = g.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labs = np.arange(n, dtype=np.uint8) % 10
        (root / f"{prefix}-images-idx3-ubyte.gz").write_bytes(gzip.compress(
            (2051).to_bytes(4, "big") + n.to_bytes(4, "big") + (28).to_bytes(4, "big") * 2 + imgs.tobytes()))
        (root / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(
            (2049).to_bytes(4, "big") + n.to_bytes(4, "big") + labs.tobytes()))
    s1 = load_dataset("double_mnist", "test", tmp_path / "data", 32, options={"images_per_class": 3})
    s2 = load_dataset("double_mnist", "test", tmp_path / "data", 32, options={"images_per_class": 3})
    assert s1.num_classes == 20 and s1.images.shape == (60, 1, 32, 32) and torch.equal(s1.images, s2.images)
    assert s1.class_names[0] == "02"
    with pytest.raises(ValueError, match="images_per_class"):
        load_dataset("double_mnist", "test", tmp_path / "data", 32, options={"images_per_class": 1})


def _tiny_mnist(root, n_train=40, n_test=30):
    import gzip

    d = root / "mnist"
    d.mkdir(parents=True, exist_ok=True)
    g = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        imgs = g.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labs = np.arange(n, dtype=np.uint8) % 10
        (d / f"{prefix}-images-idx3-ubyte.gz").write_bytes(gzip.compress(
            (2051).to_bytes(4, "big") + n.to_bytes(4, "big") + (28).to_bytes(4, "big") * 2 + imgs.tobytes()))
        (d / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(
            (2049).to_bytes(4, "big") + n.to_bytes(4, "big") + labs.tobytes()))


def test_cli_multidomain_train_and_metadataset_eval(tmp_path, capsys, one_thread):
    import json

    from metassl.cli.main import main

    _tiny_mnist(tmp_path / "data")
    run = tmp_path / "run"
    common = ["data.datasets=[mnist,double_mnist]", "data.dataset=mnist", "data.image_size=16",
              "data.options={images_per_class: 4}", "model.hidden=8", "tasks.max_support=20",
              "train.progress=false", "train.report=false", "train.tensorboard=false", "--data-root",
              str(tmp_path / "data")]
    code = main(["train", "multidomain/protonet_omniglot_double_mnist", *common, "train.steps=2", "--run-dir",
                 str(run)])
    assert code == 0, capsys.readouterr().err
    state = json.loads((run / "checkpoints" / (run / "checkpoints" / "latest").read_text().strip() /
                        "state.json").read_text())
    assert state["domains"]["names"] == ["mnist", "double_mnist"] and state["domains"]["classes"] == [10, 64]
    assert state["domains"]["conversions"][1] == {"dataset": "double_mnist", "split": "train", "from": [1, 64, 64],
                                                  "to": [1, 16, 16], "inverted": False}
    capsys.readouterr()
    code = main(["eval", str(run), "--protocol", "metadataset", "--datasets", "mnist,double_mnist", "--episodes",
                 "3", "--runs", str(run), "--json", "--data-root", str(tmp_path / "data")])
    out = capsys.readouterr()
    assert code == 0, out.err
    rows = json.loads(out.out)
    assert [r["average_rank"] for r in rows] == [1.5, 1.5]
    assert [x["protocol"]["dataset"] for x in rows[0]["results"]] == ["mnist", "double_mnist"]
    assert rows[0]["results"][1]["accuracy"] == rows[1]["results"][1]["accuracy"]  # same episodes, same model
    code = main(["eval", str(run), "--protocol", "metadataset", "--datasets", "mnist,dobule_mnist",
                 "--data-root", str(tmp_path / "data")])
    assert code == 2 and "Did you mean double_mnist" in capsys.readouterr().err
    code = main(["train", "multidomain/base", *common, "learner.name=maml", "model.track_running_stats=false",
                 "train.steps=1", "--run-dir", str(tmp_path / "maml")])
    assert code == 2 and "trains on fixed N-way K-shot episodes" in capsys.readouterr().err
