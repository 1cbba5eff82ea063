"""Multi-crop views (SwAV, DINO): `tasks.local_crops` local crops at `tasks.local_size` beside the global views, in
one augment call per size; with no local crops the batches are exactly those of the plain `views` source; the
local crop geometry against a direct resize / ramp computation; ViewBatch's select/chunks/map_images/to; errors."""

import math

import pytest
import torch
import torch.nn.functional as F

from metassl.config import ConfigError, resolve
from metassl.data import ViewBatch
from metassl.data.augment import AugmentSpec, _per_view, augment, local_crops, resolve_augment
from metassl.data.views import ViewSource, ViewsTaskConfig

from conftest import make_split


def source(split, seed=0, spec=None, **task):
    cfg = ViewsTaskConfig(batch_size=task.pop("batch_size", 5), **task)
    spec = spec or resolve_augment(None, split.name.split("/")[0], None)
    return ViewSource(cfg, split, torch.Generator().manual_seed(seed), spec=spec)


def test_global_views_and_local_crops_have_their_sizes():
    split = make_split(shape=(3, 12, 12), name="cifar10/train")
    b = source(split, views=2, local_crops=3, local_size=5).sample()
    assert b.views.shape == (2, 5, 3, 12, 12) and b.local_views.shape == (3, 5, 3, 5, 5)
    assert b.local_views.dtype == torch.float32 and 0 <= float(b.local_views.min()) <= float(b.local_views.max()) <= 1
    assert source(split, local_crops=2).sample().local_views.shape[-2:] == (6, 6)  # 0: half the side
    # the same seed gives the same crops; the local crops differ from one another
    again = source(split, views=2, local_crops=3, local_size=5).sample()
    assert torch.equal(b.local_views, again.local_views) and torch.equal(b.views, again.views)
    assert not torch.equal(b.local_views[0], b.local_views[1])


def test_no_local_crops_is_the_plain_views_source_bit_for_bit():
    split = make_split(shape=(3, 10, 10), name="cifar10/train")
    spec = resolve_augment(None, "cifar10", None)
    src = source(split, seed=4, views=2, local_crops=0)
    b = src.sample()
    assert b.local_views is None
    # by hand: one randperm, one augment call, from the same generator; and the generator ends in the same state
    g = torch.Generator().manual_seed(4)
    idx = torch.randperm(split.images.shape[0], generator=g)[:5]
    assert torch.equal(b.indices, idx)
    assert torch.equal(b.views, augment(split.images[idx], spec, 2, g))
    assert torch.equal(src.generator.get_state(), g.get_state())
    # an explicit output size equal to the image's is the default path
    x = split.images[:4]
    assert torch.equal(augment(x, spec, 2, torch.Generator().manual_seed(1)),
                       augment(x, spec, 2, torch.Generator().manual_seed(1), size=(10, 10), first_view=0))


def test_a_whole_image_local_crop_is_a_bilinear_resize():
    x = torch.rand(3, 1, 9, 9, generator=torch.Generator().manual_seed(0))
    spec = AugmentSpec(local_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0))
    out = local_crops(x, spec, 2, (5, 5), 2, torch.Generator().manual_seed(0))
    want = F.interpolate(x, size=(5, 5), mode="bilinear", align_corners=False)
    assert out.shape == (2, 3, 1, 5, 5)
    assert torch.allclose(out[0], want, atol=1e-5) and torch.allclose(out[1], want, atol=1e-5)


def test_local_crops_cover_their_area_fraction():
    w = 40
    ramp = (torch.arange(w, dtype=torch.float32) / (w - 1)).expand(w, w)  # value = x / (W - 1)
    x = ramp.reshape(1, 1, w, w).repeat(6, 1, 1, 1)
    a, s = 0.09, 8
    out = local_crops(x, AugmentSpec(local_scale=(a, a), crop_ratio=(1.0, 1.0)), 2, (s, s), 2,
                      torch.Generator().manual_seed(0))
    span = out[..., 0, :].amax(-1) - out[..., 0, :].amin(-1)  # along x of each crop's first row
    # a square crop of side sqrt(a) W sampled at s points spaced side/s apart spans side (s - 1) / s pixels
    want = math.sqrt(a) * w * (s - 1) / s / (w - 1)
    assert torch.allclose(span, torch.full_like(span, want), atol=1e-4)


def test_per_view_probabilities_continue_over_the_local_crops():
    dev = torch.device("cpu")
    assert _per_view((1.0, 0.1), 2, 1, dev).tolist() == pytest.approx([1.0, 0.1])
    assert _per_view((1.0, 0.1, 0.5), 2, 1, dev).tolist() == pytest.approx([1.0, 0.1])
    assert _per_view((1.0, 0.1, 0.5), 3, 2, dev, first=2).tolist() == pytest.approx([0.5] * 6)  # DINO's locals
    assert _per_view((1.0, 0.1), 3, 1, dev, first=2).tolist() == pytest.approx([1.0, 0.1, 1.0])  # plain cycle
    # blur probability 1 for the local crops only: every local crop is smoothed, the global views are not
    x = torch.rand(4, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    spec = AugmentSpec(blur=(0.0, 0.0, 1.0), blur_sigma=(2.0, 2.0), blur_kernel=0.5, local_scale=(1.0, 1.0),
                       crop_ratio=(1.0, 1.0))
    sharp = local_crops(x, AugmentSpec(local_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0)), 1, (16, 16), 2)
    blurred = local_crops(x, spec, 1, (16, 16), 2)
    assert torch.allclose(sharp[0], x, atol=1e-5) and float((blurred[0] - x).abs().mean()) > 0.05
    assert torch.equal(augment(x, spec, 2), x.expand(2, *x.shape))


def test_view_batch_select_chunks_map_and_to_keep_the_local_crops():
    b = ViewBatch(torch.rand(2, 5, 1, 6, 6), torch.arange(5), torch.rand(3, 5, 1, 3, 3))
    part = b.select(1, 4)
    assert torch.equal(part.local_views, b.local_views[:, 1:4]) and torch.equal(part.views, b.views[:, 1:4])
    chunks = b.chunks(2)
    assert [c.local_views.shape[1] for c in chunks] == [2, 2, 1]
    assert torch.equal(torch.cat([c.local_views for c in chunks], 1), b.local_views)
    m = b.map_images(lambda t: 1 - t)
    assert torch.equal(m.local_views, 1 - b.local_views) and torch.equal(m.views, 1 - b.views)
    assert torch.equal(b.to("cpu").local_views, b.local_views)
    plain = ViewBatch(torch.rand(2, 3, 1, 4, 4))
    assert plain.select(0, 2).local_views is None and plain.map_images(lambda t: t).local_views is None


def test_bad_multicrop_settings_are_config_errors():
    split = make_split(shape=(1, 28, 28), name="omniglot/train")
    with pytest.raises(ConfigError, match=r"tasks.local_size=30 is larger than the 28x28 images"):
        source(split, local_crops=2, local_size=30)
    with pytest.raises(ConfigError, match="augment.local_scale"):
        AugmentSpec(local_scale=(0.5, 0.2)).validate()
    # a learner that reads only the global views refuses local crops instead of ignoring them
    cfg = resolve({"learner": {"name": "simclr"}, "tasks": {"local_crops": 2, "local_size": 14, "batch_size": 8}})
    with pytest.raises(ConfigError, match="learner simclr does not use local crops; set tasks.local_crops=0"):
        ViewSource(cfg.tasks, split, torch.Generator(), config=cfg)
    cfg = resolve({"learner": {"name": "dino"}, "tasks": {"local_crops": 2, "local_size": 14, "batch_size": 8},
                   "data": {"dataset": "omniglot"}})
    assert ViewSource(cfg.tasks, split, torch.Generator(), config=cfg).sample().local_views.shape[-1] == 14
