"""CACTUs: k-means clusters of unsupervised embeddings as classes."""

import pytest
import torch

from conftest import image_ids, make_split
from metassl.config import ConfigError, apply_overrides, resolve
from metassl.data import ClassSplit
from metassl.data.cactus import kmeans
from metassl.data.task_sources import make_task_source


def blobs(n_per=30, k=6, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(k, d, generator=g) * 5
    x = torch.cat([centers[i] + 0.3 * torch.randn(n_per, d, generator=g) for i in range(k)])
    return x, torch.arange(k).repeat_interleave(n_per)


def test_kmeans_recovers_separated_blobs_and_is_deterministic():
    x, truth = blobs()
    a = kmeans(x, 6, 20, torch.Generator().manual_seed(1))
    b = kmeans(x, 6, 20, torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    for c in range(6):  # every true blob maps to a single cluster
        assert a[truth == c].unique().numel() == 1
    assert a.unique().numel() == 6


def source(split, emb, **kw):
    over = [f"tasks.{k}={v}" for k, v in {"source": "cactus", "ways": 3, "shots": 2, "queries": 3, "clusters": 6,
                                          "partitions": 2, "tasks_per_batch": 4, **kw}.items()]
    cfg = resolve(apply_overrides({}, over))
    return make_task_source(cfg.tasks, split, torch.Generator().manual_seed(0), config=cfg, embeddings=emb)


def test_tasks_come_from_clusters_and_labels_are_never_read():
    split = make_split(num_classes=6, per_class=30, shape=(1, 8, 8))
    emb, _ = blobs()
    s = source(split, emb)
    b = s.sample()
    assert b.support_x.shape == (4, 6, 1, 8, 8) and b.query_x.shape == (4, 9, 1, 8, 8)
    ids = torch.cat([image_ids(b.support_x), image_ids(b.query_x)], 1)
    for t in range(4):
        assert len(set(ids[t].tolist())) == ids.shape[1]  # support and query disjoint
    # same images, a different class structure: identical tasks
    shuffled = ClassSplit(split.images, torch.tensor([90, 45, 45]), ["a", "b", "c"], name=split.name)
    b2 = source(shuffled, emb).sample()
    assert torch.equal(b.support_x, b2.support_x) and torch.equal(b.query_x, b2.query_x)
    # each pseudo-label within a task is one cluster of one partition
    sizes = s.cluster_sizes()
    assert len(sizes) == 2 and all(int(c.sum()) == 180 for c in sizes)


def test_too_few_cluster_members_is_a_clear_error():
    split = make_split(num_classes=6, per_class=30, shape=(1, 8, 8))
    emb, _ = blobs()
    with pytest.raises(ConfigError, match=r"clusters have the 31 images"):
        source(split, emb, shots=1, queries=30)
    with pytest.raises(ConfigError, match="needs tasks.embed_from"):
        source(split, None)


def test_end_to_end_with_an_encoder_from_another_run(tmp_path):
    from metassl.engine.trainer import train

    common = ["data.dataset=digits", "data.train_split=all", "data.val_split=null", "data.test_split=test",
              "model.backbone=conv4", "model.depth=2", "model.hidden=8", "train.progress=false",
              "train.tensorboard=false", "train.report=false", "tasks.ways=3", "tasks.shots=1", "tasks.queries=2"]
    train(resolve(apply_overrides({}, common + ["train.steps=3"])), tmp_path / "embedder")
    cfg = resolve(apply_overrides({}, common + ["train.steps=4", "tasks.source=cactus", "tasks.clusters=20",
                                                 f"tasks.embed_from={tmp_path / 'embedder'}", "tasks.partitions=2"]))
    r = train(cfg, tmp_path / "cactus")
    assert r.steps == 4
