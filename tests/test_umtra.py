"""UMTRA: unsupervised episodes from unlabeled images, for any learner."""

import torch

from conftest import image_ids, make_split
from metassl.config import apply_overrides, resolve
from metassl.data import ClassSplit
from metassl.data.task_sources import make_task_source


def umtra(split, ways=5, shots=1, queries=3, tasks=4, seed=0):
    cfg = resolve(apply_overrides({}, ["data.dataset=omniglot", "tasks.source=umtra", f"tasks.ways={ways}",
                                       f"tasks.shots={shots}", f"tasks.queries={queries}",
                                       f"tasks.tasks_per_batch={tasks}"]))
    return make_task_source(cfg.tasks, split, torch.Generator().manual_seed(seed), config=cfg).sample()


def test_shapes_labels_and_support_are_the_original_images():
    split = make_split(num_classes=40, per_class=5, shape=(1, 16, 16))
    b = umtra(split, ways=5, shots=2, queries=3, tasks=4)
    assert b.support_x.shape == (4, 10, 1, 16, 16) and b.query_x.shape == (4, 15, 1, 16, 16)
    assert b.support_x.dtype == torch.float32 and 0 <= float(b.query_x.min()) and float(b.query_x.max()) <= 1
    for t in range(4):
        assert sorted(b.support_y[t].tolist()) == sorted(list(range(5)) * 2)
        assert sorted(b.query_y[t].tolist()) == sorted(list(range(5)) * 3)
    # first shot of each pseudo-class is an unaugmented image of the split; pseudo-classes are distinct images
    firsts = (b.support_x[:, ::2] * 255).round().to(torch.uint8)
    ids = image_ids(firsts)
    for t in range(4):
        assert len(set(ids[t].tolist())) == 5
        for j, i in enumerate(ids[t].tolist()):
            assert torch.equal(firsts[t, j], split.images[i])
    # queries are augmented views, not copies
    assert not torch.allclose(b.query_x[:, :1], b.support_x[:, :1])


def test_labels_are_never_read():
    split = make_split(num_classes=40, per_class=5, shape=(1, 16, 16))
    # same images in the same order, but a different (random) class structure
    g = torch.Generator().manual_seed(1)
    cuts = torch.sort(torch.randperm(199, generator=g)[:9] + 1).values
    counts = torch.diff(torch.cat([torch.tensor([0]), cuts, torch.tensor([200])]))
    shuffled = ClassSplit(split.images, counts, [f"x{i}" for i in range(10)], name=split.name)
    a, b = umtra(split, seed=3), umtra(shuffled, seed=3)
    assert torch.equal(a.support_x, b.support_x) and torch.equal(a.query_x, b.query_x)


def test_protonet_trains_on_umtra_tasks(tmp_path):
    from metassl.engine.trainer import train

    cfg = resolve(apply_overrides({}, [
        "data.dataset=digits", "data.train_split=all", "data.val_split=null", "data.test_split=test",
        "tasks.source=umtra", "tasks.ways=5", "tasks.shots=1", "tasks.queries=2", "tasks.tasks_per_batch=2",
        "model.backbone=conv4", "model.depth=2", "model.hidden=8", "train.steps=30", "train.log_every=10",
        "train.progress=false", "train.tensorboard=false", "train.report=false", "optim.lr=0.003"]))
    r = train(cfg, tmp_path / "run")
    assert r.steps == 30 and r.history[-1]["loss"] < r.history[0]["loss"]
