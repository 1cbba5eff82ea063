"""Augmentation on the device (metassl.data.augment) and the `views` task source: shapes, ranges, determinism by
seed, independence across images and views, each operation against its definition, presets and overrides."""

import colorsys
import math
from dataclasses import replace

import pytest
import torch

from metassl.config import ConfigError, resolve
from metassl.data import ClassSplit, Preprocess, ViewBatch
from metassl.data.augment import PRESETS, AugmentSpec, _crop_boxes, augment, hsv_to_rgb, resolve_augment, rgb_to_hsv
from metassl.data.task_sources import make_task_source

from conftest import make_split


def images(b=6, c=3, h=12, w=12, seed=0):
    return torch.randint(0, 256, (b, c, h, w), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("preset", sorted(PRESETS))
@pytest.mark.parametrize("channels", [1, 3])
def test_every_preset_gives_views_in_range(preset, channels):
    x = images(c=channels)
    v = augment(x, PRESETS[preset], 3, gen())
    assert v.shape == (3, 6, channels, 12, 12) and v.dtype == torch.float32
    assert float(v.min()) >= 0.0 and float(v.max()) <= 1.0 and torch.isfinite(v).all()


def test_same_seed_same_views_other_seed_other_views():
    x = images()
    spec = replace(PRESETS["generic"], solarize=(0.3,), rotate90=0.3)
    a = augment(x, spec, 2, gen(1))
    b = augment(x, spec, 2, gen(1))
    c = augment(x, spec, 2, gen(2))
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_parameters_are_independent_across_images_and_views():
    x = images(b=1).expand(16, 3, 12, 12).contiguous()  # the same image 16 times
    v = augment(x, PRESETS["cifar10"], 2, gen()).reshape(32, -1)
    d = torch.cdist(v, v)
    off = d[~torch.eye(32, dtype=torch.bool)]
    assert float(off.min()) > 1e-3  # all 32 views of one image differ from each other


def test_no_augmentation_is_the_identity():
    x = images()
    assert torch.equal(augment(x, PRESETS["none"], 2, gen())[1], x.float() / 255)
    full_crop = AugmentSpec(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0))
    assert torch.allclose(augment(x, full_crop, 1, gen())[0], x.float() / 255, atol=1e-5)


def test_flip_and_quarter_turns_are_exact():
    x = images()
    flipped = augment(x, AugmentSpec(flip=1.0), 1, gen())[0]
    assert torch.allclose(flipped, torch.flip(x.float() / 255, dims=[-1]), atol=1e-5)
    rot = augment(x, AugmentSpec(rotate90=1.0), 1, gen())[0]
    xf = x.float() / 255
    for i in range(x.shape[0]):
        errs = [float((rot[i] - torch.rot90(xf[i], k, dims=(-2, -1))).abs().max()) for k in (1, 2, 3)]
        assert min(errs) < 1e-5, errs
    with pytest.raises(ValueError, match="square"):
        augment(images(h=8, w=12), AugmentSpec(rotate90=1.0), 1, gen())


def test_crop_boxes_follow_random_resized_crop():
    g = gen()
    rand = lambda *s: torch.rand(*s, generator=g)  # noqa: E731
    cw, ch, x0, y0 = _crop_boxes(4000, 32, 48, (0.08, 1.0), (3 / 4, 4 / 3), rand)
    area = cw * ch / (32 * 48)
    assert float(area.min()) >= 0.08 - 1e-6 and float(area.max()) <= 1.0 + 1e-6
    assert float((cw / ch).min()) >= 0.75 - 1e-5 and float((cw / ch).max()) <= 4 / 3 + 1e-5
    assert float(x0.min()) >= 0 and float((x0 + cw).max()) <= 48 + 1e-4
    assert float(y0.min()) >= 0 and float((y0 + ch).max()) <= 32 + 1e-4
    # a crop that zooms 2x into a horizontal ramp doubles its slope
    ramp = torch.linspace(0, 1, 33)[:-1].view(1, 1, 1, 32).expand(2, 3, 32, 32).contiguous()
    out = augment(ramp, AugmentSpec(crop_scale=(0.25, 0.25), crop_ratio=(1.0, 1.0)), 1, gen())[0]
    slope = (out[..., 20] - out[..., 10]) / 10
    assert torch.allclose(slope, torch.full_like(slope, 0.5 / 32), atol=1e-4)


def test_colour_operations_match_their_definitions():
    x = images(b=8)
    xf = x.float() / 255
    b = augment(x, AugmentSpec(jitter=1.0, jitter_strength=(0.5, 0.0, 0.0, 0.0)), 1, gen())[0]
    ratio = b.sum((1, 2, 3)) / xf.clamp(0, 1).sum((1, 2, 3))  # brightness: one factor per image
    unclamped = b < 1.0
    per_pixel = torch.where(unclamped & (xf > 0.05), b / xf.clamp_min(1e-6), torch.nan)
    f = torch.nanmedian(per_pixel.view(8, -1), 1).values
    assert float(f.min()) >= 0.5 - 1e-4 and float(f.max()) <= 1.5 + 1e-4 and len(set(ratio.round(decimals=3).tolist())) > 1
    g = augment(x, AugmentSpec(grayscale=1.0), 1, gen())[0]
    luma = 0.299 * xf[:, 0] + 0.587 * xf[:, 1] + 0.114 * xf[:, 2]
    for ch in range(3):
        assert torch.allclose(g[:, ch], luma, atol=1e-6)
    s = augment(x, AugmentSpec(solarize=(1.0,)), 1, gen())[0]
    assert torch.allclose(s, torch.where(xf >= 0.5, 1 - xf, xf))
    # hue: RGB -> HSV against colorsys, the round trip, and a half-turn of pure red is cyan
    y = torch.rand(40, 3, 1, 1, generator=gen())
    hsv = rgb_to_hsv(y)
    for i in range(40):
        ref = colorsys.rgb_to_hsv(*y[i, :, 0, 0].tolist())
        assert max(abs(a - b) for a, b in zip(ref, hsv[i, :, 0, 0].tolist())) < 1e-5
    assert torch.allclose(hsv_to_rgb(hsv), y, atol=1e-5)
    red = torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1).expand(1, 3, 4, 4)
    cyan = augment(red, AugmentSpec(jitter=1.0, jitter_strength=(0.0, 0.0, 0.0, 0.5)), 1, gen())[0]
    assert cyan.shape == (1, 3, 4, 4)  # hue shift ~ U(-0.5, 0.5): the red channel only decreases
    assert float(cyan[:, 0].max()) <= 1.0 and float(cyan.sum(1).max()) <= 2.0 + 1e-5


def test_jitter_order_random_and_fixed_are_both_valid_and_differ():
    x = images(b=16)
    spec = replace(PRESETS["cifar10"], crop_scale=None, flip=0.0, grayscale=0.0, jitter=1.0)
    a = augment(x, spec, 1, gen())
    b = augment(x, replace(spec, jitter_order="fixed"), 1, gen())
    assert a.shape == b.shape and not torch.allclose(a, b)


def test_blur_is_normalized_per_image_and_per_view():
    const = torch.full((4, 3, 16, 16), 0.3)
    out = augment(const, AugmentSpec(blur=(1.0,), blur_kernel=0.3), 1, gen())[0]
    assert torch.allclose(out, const, atol=1e-6)  # kernels sum to 1
    delta = torch.zeros(6, 1, 17, 17)
    delta[:, :, 8, 8] = 1.0
    spec = AugmentSpec(blur=(1.0, 0.0), blur_sigma=(0.5, 2.0), blur_kernel=0.5)  # BYOL-style: view 1 never blurred
    v = augment(delta, spec, 2, gen())
    assert torch.allclose(v[0].sum((1, 2, 3)), torch.ones(6), atol=1e-5)
    assert float(v[0][:, 0, 8, 8].max()) < 1.0 and len(set(v[0][:, 0, 8, 8].round(decimals=4).tolist())) > 1
    assert torch.equal(v[1], delta)


def test_presets_overrides_and_bad_values():
    def cfg(dataset, learner="simclr", **augment):
        return resolve({"data": {"dataset": dataset}, "learner": {"name": learner}, "augment": augment})

    assert resolve_augment(cfg("cifar10").augment, "cifar10").name == "cifar10"
    assert resolve_augment(cfg("omniglot").augment, "omniglot").name == "omniglot"
    assert resolve_augment(cfg("digits").augment, "digits").name == "mnist"
    assert resolve_augment(cfg("folder").augment, "folder").blur == (0.5,)
    byol = resolve_augment(cfg("cifar10", "byol").augment, "cifar10", "byol")
    assert byol.solarize == (0.0, 0.2) and byol.blur == (0.0,) and byol.jitter_strength[2] == 0.2
    over = resolve_augment(cfg("cifar10", crop_scale=[0.2, 1.0], flip=0.0, blur=0.5).augment, "cifar10")
    assert over.crop_scale == (0.2, 1.0) and over.flip == 0.0 and over.blur == (0.5,) and over.grayscale == 0.2
    with pytest.raises(ConfigError, match="augment.crop_scale"):
        resolve_augment(cfg("cifar10", crop_scale=[0.9, 0.1]).augment, "cifar10")
    with pytest.raises(ConfigError, match="augment.jitter_strength"):
        resolve_augment(cfg("cifar10", jitter_strength=[0.4, 0.4]).augment, "cifar10")


def test_view_source_never_reads_labels():
    split = make_split(num_classes=6, per_class=10, shape=(3, 8, 8))
    shuffled = ClassSplit(split.images, torch.tensor([1, 2, 3, 4, 5, 45]), [f"x{i}" for i in range(6)])
    one_class = ClassSplit(split.images, torch.tensor([60]), ["all"])
    cfg = resolve({"data": {"dataset": "cifar10"}, "learner": {"name": "simclr"}, "tasks": {"batch_size": 16}})
    batches = []
    for s in (split, shuffled, one_class):
        src = make_task_source(cfg.tasks, s, gen(5), "views", config=cfg)
        batches.append(src.sample())
    for b in batches[1:]:
        assert torch.equal(b.views, batches[0].views) and torch.equal(b.indices, batches[0].indices)
    b = batches[0]
    assert isinstance(b, ViewBatch) and b.views.shape == (2, 16, 3, 8, 8) and b.indices.unique().numel() == 16
    normed = b.map_images(Preprocess(mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25)))
    assert torch.allclose(normed.views, (b.views - 0.5) / 0.25)
    with pytest.raises(ConfigError, match="tasks.batch_size=100 is larger than the 60 images"):
        make_task_source(replace(cfg.tasks, batch_size=100), split, gen(), "views", config=cfg)


def test_augment_runs_on_the_generator_device_in_one_call():
    # the whole pipeline is tensor ops: no Python loop over images (timing-free check: 64 images, one call)
    x = images(b=64, h=16, w=16)
    v = augment(x, PRESETS["generic"], 2, gen())
    assert v.shape[:2] == (2, 64) and math.isfinite(float(v.sum()))
