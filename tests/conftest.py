import os
from pathlib import Path

import pytest
import torch

from metassl.data import ClassSplit

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    # decoded-data caches go to a per-session temp folder, never the user's home or the data root
    monkeypatch.setenv("METASSL_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models: one thread is faster than two fighting over a shared 2-core machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def make_split(num_classes=12, per_class=8, shape=(1, 8, 8), ragged=False, name="toy/train", seed=0):
    """A split whose image pixels encode (class, image index) so tests can tell images apart."""
    g = torch.Generator().manual_seed(seed)
    counts = torch.full((num_classes,), per_class)
    if ragged:
        counts = torch.randint(2, per_class + 1, (num_classes,), generator=g)
        counts[0] = per_class
    total = int(counts.sum())
    images = torch.randint(0, 256, (total, *shape), generator=g, dtype=torch.uint8)
    # first two pixels: class id and a global image id (unique for < 65536 images)
    labels = torch.repeat_interleave(torch.arange(num_classes), counts)
    flat = images.view(total, -1)
    flat[:, 0] = labels.to(torch.uint8)
    flat[:, 1] = (torch.arange(total) % 256).to(torch.uint8)
    flat[:, 2] = (torch.arange(total) // 256).to(torch.uint8)
    return ClassSplit(images, counts, [f"class{i:02d}" for i in range(num_classes)], name=name)


def image_ids(x):
    f = x.reshape(*x.shape[:2], -1).long()
    return f[..., 1] + 256 * f[..., 2]


def class_ids(x):
    return x.reshape(*x.shape[:2], -1)[..., 0].long()


@pytest.fixture
def toy_split():
    return make_split()


os.environ.setdefault("MPLBACKEND", "Agg")


def apply_update(model, state, step, total_steps):
    """What the trainer does after an optimizer step: the learner's new buffer values, stored in the model."""
    with torch.no_grad():
        for k, v in model.learner.update(model.params, model.buffers, state, step, total_steps).items():
            model.buffers[k].copy_(v)
