"""MAE, MoCo v3 and jigsaw (ssl/mae.py, ssl/mocov3.py, ssl/jigsaw.py, aux.jigsaw): each formula against a direct
computation on tiny tensors (loops, written from the papers), the frozen patch projection, bad input, and short runs
through the CLI on scikit-learn's digits (2 steps each, resume, init_from, predict). CPU, tiny."""

import itertools
import json
import math

import numpy as np
import pytest
import torch
from torch.func import functional_call

from conftest import apply_update
from metassl.cli.main import main
from metassl.config import ConfigError, apply_overrides, load_config, resolve
from metassl.data import Preprocess, ViewBatch
from metassl.engine.build import build_model, load_model
from metassl.engine.checkpoint import find_checkpoint, load_checkpoint
from metassl.ssl.base import momentum_cosine, target_name
from metassl.ssl.jigsaw import (hamming_permutation_set, jigsaw_geometry, jigsaw_loss, jigsaw_views,
                                make_jigsaw_tiles, min_hamming_distance)
from metassl.ssl.mae import mae_loss, patch_targets, random_masking, unshuffle
from metassl.ssl.mocov3 import mocov3_loss

TINY_VIT = {"backbone": "vit", "dim": 16, "depth": 1, "heads": 2, "patch_size": 2, "image_size": 8,
            "pos_embed": "sincos"}
VIT_KEYS = ["model.dim=16", "model.depth=1", "model.heads=2", "model.patch_size=2", "model.image_size=8"]
DIGITS = ["data.dataset=digits", "data.train_split=train", "data.val_split=null", "data.test_split=test",
          "tasks.batch_size=32", "train.progress=false", "train.tensorboard=false", "train.report=false",
          "train.val_every=0", "train.log_every=1", "eval.ways=3", "eval.shots=[1]", "eval.episodes=10",
          "eval.queries=3"]
CONV = ["model.hidden=8", "model.depth=2"]
HEADS = ["learner.proj_hidden=16", "learner.proj_dim=8"]
MAE_DEC = ["learner.decoder_dim=8", "learner.decoder_depth=1", "learner.decoder_heads=2"]


def cos(a, b):
    return float(torch.dot(a, b) / (a.norm() * b.norm()))


def model(learner, backbone=None, shape=(1, 8, 8), views=2):
    cfg = resolve({"model": backbone or {"backbone": "mlp", "hidden": [16, 8], "image_size": shape[-1]},
                   "learner": learner, "tasks": {"views": views}})
    torch.manual_seed(0)
    return build_model(cfg, shape, Preprocess())


# ---------------------------------------------------------------------------------------------------------------
# MAE


def test_masking_keeps_exactly_the_ratio_and_restore_inverts_the_shuffle():
    g = torch.Generator().manual_seed(0)
    noise = torch.rand(3, 16, generator=g)
    keep, restore, mask = random_masking(noise, 0.75)
    assert keep.shape == (3, 4) and mask.shape == (3, 16)
    assert mask.sum(1).tolist() == [12.0, 12.0, 12.0]  # exactly 75% masked in every image
    for b in range(3):
        lowest = sorted(range(16), key=lambda i: float(noise[b, i]))[:4]  # the 4 smallest noises are visible
        assert keep[b].tolist() == lowest
        assert all(mask[b, i] == (0 if i in lowest else 1) for i in range(16))
        shuffle = sorted(range(16), key=lambda i: float(noise[b, i]))
        assert [shuffle[int(restore[b, i])] for i in range(16)] == list(range(16))
    assert random_masking(noise, 0.99)[0].shape == (3, 1)  # never zero visible patches


def test_unshuffle_puts_visible_tokens_back_in_image_order():
    noise = torch.tensor([[0.5, 0.1, 0.9, 0.3], [0.2, 0.8, 0.4, 0.6]])
    keep, restore, mask = random_masking(noise, 0.5)  # keeps patches [1, 3] and [0, 2]
    assert keep.tolist() == [[1, 3], [0, 2]]
    tokens = torch.arange(4, dtype=torch.float32).view(1, 4, 1).expand(2, 4, 3)  # token i holds value i
    visible = torch.gather(tokens, 1, keep.unsqueeze(-1).expand(-1, -1, 3))
    full = unshuffle(visible, torch.full((1, 1, 3), -1.0), restore)
    assert full[0, :, 0].tolist() == [-1.0, 1.0, -1.0, 3.0]
    assert full[1, :, 0].tolist() == [0.0, -1.0, 2.0, -1.0]


def test_normalized_pixel_target_matches_the_formula():
    g = torch.Generator().manual_seed(1)
    patches = torch.rand(2, 3, 5, generator=g)
    t = patch_targets(patches, True)
    for b in range(2):
        for i in range(3):
            x = [float(v) for v in patches[b, i]]
            mu = sum(x) / 5
            var = sum((v - mu) ** 2 for v in x) / 4  # unbiased, as the authors' code
            ref = [(v - mu) / math.sqrt(var + 1e-6) for v in x]
            assert np.allclose(t[b, i].numpy(), ref, atol=1e-5)
    assert torch.equal(patch_targets(patches, False), patches)


def test_mae_loss_reads_only_the_masked_patches():
    g = torch.Generator().manual_seed(2)
    pred, target = torch.randn(2, 4, 3, generator=g), torch.randn(2, 4, 3, generator=g)
    mask = torch.tensor([[1.0, 0, 1, 0], [0, 1, 1, 1]])
    loss = mae_loss(pred, target, mask)
    ref = [sum((float(pred[b, i, j]) - float(target[b, i, j])) ** 2 for j in range(3)) / 3
           for b in range(2) for i in range(4) if mask[b, i] == 1]
    assert abs(float(loss) - sum(ref) / len(ref)) < 1e-6
    visible = target.clone()
    visible[0, 1] += 10.0  # a visible patch
    visible[1, 0] -= 3.0
    assert float(mae_loss(pred, visible, mask)) == pytest.approx(float(loss), abs=1e-7)
    masked = target.clone()
    masked[1, 2] += 1.0
    assert abs(float(mae_loss(pred, masked, mask)) - float(loss)) > 1e-3


def test_mae_learner_loss_against_a_direct_computation():
    m = model({"name": "mae", "decoder_dim": 8, "decoder_depth": 1, "decoder_heads": 2}, TINY_VIT, views=1)
    enc, dec = m.encoder, m.learner.heads["decoder"]
    x = torch.rand(1, 3, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    torch.manual_seed(7)
    out = m.learner.loss(m.params, m.buffers, ViewBatch(x))
    assert float(out.metrics["visible_patches"]) == 4  # 16 patches of 2x2, 25% visible
    torch.manual_seed(7)  # the same noise, drawn as the learner does
    noise = torch.rand(3, 16)
    keep, restore, mask = random_masking(noise, 0.75)
    imgs = x[0]
    p = {k[len("encoder."):]: v for k, v in {**m.params, **m.buffers}.items() if k.startswith("encoder.")}
    d = {k[len("learner.decoder."):]: v for k, v in m.params.items() if k.startswith("learner.decoder.")}
    with torch.no_grad():
        tokens = functional_call(enc, p, (imgs,), {"keep_index": keep, "tokens": True})  # [3, 1 + 4, 16]
        total, count = 0.0, 0
        for b in range(3):
            e = tokens[b] @ d["embed.weight"].t() + d["embed.bias"]  # [5, 8]
            seq = [e[0]] + [None] * 16
            for j, patch in enumerate(keep[b].tolist()):
                seq[1 + patch] = e[1 + j]
            pos = {}
            for r in range(4):
                for c in range(4):  # sine-cosine of row then column, 2 frequencies each for width 8
                    pos[r * 4 + c] = torch.tensor([math.sin(r), math.sin(r / 100), math.cos(r), math.cos(r / 100),
                                                   math.sin(c), math.sin(c / 100), math.cos(c), math.cos(c / 100)])
            for i in range(16):
                tok = seq[1 + i] if seq[1 + i] is not None else d["mask_token"][0, 0]
                seq[1 + i] = tok + pos[i]
            h = functional_call(dec.blocks, {k[len("blocks."):]: v for k, v in d.items() if k.startswith("blocks.")},
                                (torch.stack(seq)[None],))[0]
            h = torch.nn.functional.layer_norm(h, (8,), d["norm.weight"], d["norm.bias"], 1e-6)
            pred = h[1:] @ d["pred.weight"].t() + d["pred.bias"]  # [16, 4]
            for i in range(16):
                if mask[b, i] == 0:
                    continue
                r, c = divmod(i, 4)
                pix = [float(imgs[b, 0, 2 * r + u, 2 * c + v]) for u in range(2) for v in range(2)]
                mu = sum(pix) / 4
                sd = math.sqrt(sum((q - mu) ** 2 for q in pix) / 3 + 1e-6)
                total += sum((float(pred[i, k]) - (pix[k] - mu) / sd) ** 2 for k in range(4)) / 4
                count += 1
    assert count == 3 * 12
    assert abs(float(out.loss) - total / count) < 1e-4


def test_mae_needs_a_vit():
    with pytest.raises(ConfigError, match="learner mae masks the patches of a Vision Transformer: set "
                                          "model.backbone=vit"):
        model({"name": "mae"}, views=1)


# ---------------------------------------------------------------------------------------------------------------
# MoCo v3


def test_mocov3_contrastive_loss_matches_the_formula():
    g = torch.Generator().manual_seed(4)
    q, k = torch.randn(5, 3, generator=g), torch.randn(5, 3, generator=g)
    t = 0.2
    ref = 0.0
    for i in range(5):  # -log exp(q_i.k_i / t) / sum_j exp(q_i.k_j / t), L2-normalized, then x 2t
        ref += -math.log(math.exp(cos(q[i], k[i]) / t) / sum(math.exp(cos(q[i], k[j]) / t) for j in range(5)))
    loss, acc = mocov3_loss(q, k, t)
    assert abs(float(loss) - 2 * t * ref / 5) < 1e-5 and 0.0 <= float(acc) <= 1.0
    qg = q.clone().requires_grad_()
    kg = k.clone().requires_grad_()
    mocov3_loss(qg, kg, t)[0].backward()
    assert qg.grad is not None and kg.grad is None  # no gradient into the keys


def test_mocov3_learner_loss_is_the_symmetric_sum():
    m = model({"name": "mocov3", "proj_hidden": 16, "proj_dim": 8, "temperature": 0.3})
    lr = m.learner
    assert len([k for k in m.params if k.startswith("learner.projector.") and k.endswith("weight")]) == 2 + 1
    x = torch.rand(2, 6, 1, 8, 8, generator=torch.Generator().manual_seed(5))
    out = lr.loss(m.params, m.buffers, ViewBatch(x))
    t = {**m.params, **m.buffers}
    with torch.no_grad():
        h = lr.embed(m.params, m.buffers, x).reshape(12, -1)
        p = lr.head("predictor", t, lr.head("projector", t, h)).reshape(2, 6, -1)
        kt = lr.target_forward(m.buffers, x)
    ref = 0.0
    for a, b in ((0, 1), (1, 0)):  # ctr(q1, k2) + ctr(q2, k1)
        for i in range(6):
            ref += 2 * 0.3 * -math.log(math.exp(cos(p[a, i], kt[b, i]) / 0.3) /
                                       sum(math.exp(cos(p[a, i], kt[b, j]) / 0.3) for j in range(6))) / 6
    assert abs(float(out.loss) - ref) < 1e-4
    out.loss.backward()
    assert m.params["learner.predictor.layers.0.weight"].grad is not None


def test_mocov3_momentum_follows_the_cosine_schedule():
    m = model({"name": "mocov3", "proj_hidden": 16, "proj_dim": 8, "momentum": 0.9})
    names = [k for k in m.params if target_name(k) in m.buffers]
    assert names and not any(k.startswith("learner.predictor.") for k in names)  # no target predictor
    with torch.no_grad():
        for k in names:
            m.params[k].add_(torch.randn_like(m.params[k]))
    before = {k: m.buffers[target_name(k)].clone() for k in names}
    apply_update(m, {}, 30, 100)
    tau = 1 - (1 - 0.9) * (math.cos(math.pi * 30 / 100) + 1) / 2
    assert tau == pytest.approx(momentum_cosine(0.9, 30, 100))
    for k in names:
        assert torch.allclose(m.buffers[target_name(k)], tau * before[k] + (1 - tau) * m.params[k].detach(),
                              atol=1e-6)


def test_mocov3_freezes_the_vit_patch_projection():
    m = model({"name": "mocov3", "proj_hidden": 16, "proj_dim": 8}, TINY_VIT)
    assert m.learner.freeze and m.learner.proj_layers == 3  # the ViT defaults of the paper
    assert len([k for k in m.params if k.startswith("learner.projector.") and k.endswith("weight")]) == 3 + 2
    out = m.learner.loss(m.params, m.buffers, ViewBatch(torch.rand(2, 4, 1, 8, 8)))
    out.loss.backward()
    assert m.params["encoder.patch_embed.weight"].grad is None and m.params["encoder.patch_embed.bias"].grad is None
    assert float(m.params["encoder.blocks.0.attn.qkv.weight"].grad.abs().sum()) > 0
    free = model({"name": "mocov3", "proj_hidden": 16, "proj_dim": 8, "freeze_patch_embed": False}, TINY_VIT)
    free.learner.loss(free.params, free.buffers, ViewBatch(torch.rand(2, 4, 1, 8, 8))).loss.backward()
    assert free.params["encoder.patch_embed.weight"].grad is not None
    with pytest.raises(ConfigError, match="learner.freeze_patch_embed=true freezes a ViT's patch projection"):
        model({"name": "mocov3", "freeze_patch_embed": True})


# ---------------------------------------------------------------------------------------------------------------
# jigsaw


def _greedy_by_hand(n, count, first, selection):
    """Noroozi & Favaro's Algorithm 1 over all n! permutations with Python lists (ties: lexicographically first)."""
    pool = list(itertools.permutations(range(n)))
    chosen = [first]
    while len(chosen) < count:
        def score(p):
            d = [sum(a != b for a, b in zip(p, pool[c])) for c in chosen]
            return sum(d) if selection == "mean" else min(d)
        rest = [i for i in range(len(pool)) if i not in chosen]
        chosen.append(max(rest, key=lambda i: (score(pool[i]), -i)))
    return [list(pool[i]) for i in chosen]


@pytest.mark.parametrize("selection", ["mean", "min"])
def test_permutation_set_is_the_greedy_maximal_hamming_set(selection):
    got = hamming_permutation_set(7, seed=3, n=4, selection=selection)
    pool = [list(p) for p in itertools.permutations(range(4))]
    first = pool.index(got[0].tolist())
    assert got.tolist() == _greedy_by_hand(4, 7, first, selection)
    brute = min(sum(a != b for a, b in zip(p, q)) for p, q in itertools.combinations(got.tolist(), 2))
    assert min_hamming_distance(got) == brute
    assert torch.equal(hamming_permutation_set(7, seed=3, n=4, selection=selection), got)  # deterministic


def test_permutation_set_of_nine_tiles_and_its_limits():
    perms = hamming_permutation_set(12, seed=0, selection="min")
    assert perms.shape == (12, 9) and all(sorted(p) == list(range(9)) for p in perms.tolist())
    assert len({tuple(p) for p in perms.tolist()}) == 12
    brute = min(sum(a != b for a, b in zip(p, q)) for p, q in itertools.combinations(perms.tolist(), 2))
    assert min_hamming_distance(perms) == brute >= 6
    with pytest.raises(ValueError, match="there are only 24"):
        hamming_permutation_set(25, n=4)
    with pytest.raises(ConfigError, match=r"learner.permutations must be in \[2, 362880\], got 362881"):
        resolve({"learner": {"name": "jigsaw", "permutations": 362881}})
    with pytest.raises(ConfigError, match=r"learner.permutations=30 \(with learner.min_distance=9.*minimal pairwise "
                                          r"distance of \d, below the required 9"):
        model({"name": "jigsaw", "permutations": 30, "min_distance": 9}, views=1)


def test_tiles_are_cut_in_permutation_order_and_reassemble():
    img = torch.arange(2 * 2 * 9 * 9, dtype=torch.float32).reshape(2, 2, 9, 9)  # 2 images, 2 channels, 9x9
    perms = hamming_permutation_set(5, n=9)
    labels = torch.tensor([3, 1])
    zero = torch.zeros(2, 9, 2, dtype=torch.long)
    tiles = make_jigsaw_tiles(img, perms, labels, zero, gap=0.0)
    assert tiles.shape == (2, 9, 2, 3, 3)
    for b in range(2):
        back = torch.zeros(2, 9, 9)
        for slot in range(9):
            cell = int(perms[labels[b], slot])
            r, c = divmod(cell, 3)
            back[:, 3 * r:3 * r + 3, 3 * c:3 * c + 3] = tiles[b, slot]
        assert torch.equal(back, img[b])
    # with a gap: 10x10 -> cells of 3 px (border 1 px split as 0 top-left), tiles of 2 px at per-cell offsets
    big = torch.rand(1, 1, 10, 10)
    assert jigsaw_geometry(10, 10, 0.2) == (3, 3, 2, 2, 0, 0)
    assert jigsaw_geometry(28, 28, 0.15) == (9, 9, 8, 8, 0, 0) and jigsaw_geometry(32, 32, 0.15)[2:] == (9, 9, 1, 1)
    assert jigsaw_geometry(225, 225, 0.15)[2] == 64  # the paper's 64 px tiles in 75 px cells
    off = torch.randint(0, 2, (1, 9, 2))
    tiles = make_jigsaw_tiles(big, perms, torch.tensor([2]), off, gap=0.2)
    for slot in range(9):
        cell = int(perms[2, slot])
        y = (cell // 3) * 3 + int(off[0, cell, 0])
        x = (cell % 3) * 3 + int(off[0, cell, 1])
        assert torch.equal(tiles[0, slot, 0], big[0, 0, y:y + 2, x:x + 2])


def test_jigsaw_views_normalize_each_tile_and_resize_to_the_image():
    img = torch.rand(3, 1, 12, 12)
    perms = hamming_permutation_set(4)
    torch.manual_seed(0)
    tiles, labels = jigsaw_views(img, perms, gap=0.0, normalize=True)
    assert tiles.shape == (3, 9, 1, 12, 12) and labels.shape == (3,) and int(labels.max()) < 4
    raw = make_jigsaw_tiles(img, perms, labels, torch.zeros(3, 9, 2, dtype=torch.long), 0.0)
    t = raw[1, 4].flatten()
    norm = (t - t.mean()) / torch.sqrt(((t - t.mean()) ** 2).mean() + 1e-6)
    ref = torch.nn.functional.interpolate(norm.view(1, 1, 4, 4), size=(12, 12), mode="bilinear",
                                          align_corners=False)
    assert torch.allclose(tiles[1, 4], ref[0], atol=1e-5)


def test_jigsaw_loss_is_the_cross_entropy_over_permutations():
    g = torch.Generator().manual_seed(6)
    logits, labels = torch.randn(4, 5, generator=g), torch.tensor([0, 4, 2, 2])
    ref = sum(-float(logits[i, labels[i]]) + math.log(sum(math.exp(float(v)) for v in logits[i])) for i in range(4))
    loss, acc = jigsaw_loss(logits, labels)
    assert abs(float(loss) - ref / 4) < 1e-5
    assert float(acc) == sum(int(logits[i].argmax()) == int(labels[i]) for i in range(4)) / 4


def test_jigsaw_learner_embeds_each_tile_and_classifies_the_concatenation():
    m = model({"name": "jigsaw", "permutations": 6, "hidden": 12, "gap": 0.0}, shape=(1, 9, 9), views=1)
    assert m.params["learner.classifier.layers.0.weight"].shape == (12, 9 * 8)
    assert m.buffers["learner.permutations"].shape == (6, 9)
    x = torch.rand(1, 4, 1, 9, 9)
    out = m.learner.loss(m.params, m.buffers, ViewBatch(x))
    out.loss.backward()
    assert torch.isfinite(out.loss) and "accuracy" in out.metrics
    assert m.params["encoder.net.1.weight"].grad is not None
    with pytest.raises(ConfigError, match=r"images of 5x5 are too small for 3x3 tiles of at least 2 pixels with "
                                          r"learner.gap=0.0"):
        m.learner.loss(m.params, m.buffers, ViewBatch(torch.rand(1, 2, 1, 5, 5)))


def test_aux_jigsaw_adds_its_head_and_term():
    from metassl.data import TaskBatch

    cfg = resolve(apply_overrides({}, ["learner.name=protonet", "model.backbone=conv4", "model.hidden=8",
                                       "model.depth=2", "aux.jigsaw=0.5", "aux.jigsaw_permutations=10"]))
    m = build_model(cfg, (1, 12, 12), Preprocess())
    heads = sorted(k for k in m.params if k.startswith("learner.aux_jigsaw."))
    assert heads == ["learner.aux_jigsaw.0.bias", "learner.aux_jigsaw.0.weight", "learner.aux_jigsaw.1.bias",
                     "learner.aux_jigsaw.1.weight"]
    assert m.params["learner.aux_jigsaw.0.weight"].shape == (512, 9 * 8 * 3 * 3)
    assert m.params["learner.aux_jigsaw.1.weight"].shape == (10, 512)
    sx, qx = torch.rand(1, 3, 1, 12, 12), torch.rand(1, 3, 1, 12, 12)
    y = torch.arange(3).view(1, 3)
    batch = TaskBatch(sx, y, qx, y, 3)
    out = m.learner.loss(m.params, m.buffers, batch)
    plain = m.learner.inner.loss(m.params, m.buffers, batch)
    assert float(out.loss) == pytest.approx(float(plain.loss) + 0.5 * float(out.metrics["aux_jigsaw_loss"]), rel=1e-5)
    out.loss.backward()
    assert m.params["learner.aux_jigsaw.1.weight"].grad is not None
    preset = load_config("omniglot/protonet_jigaux_5w1s")
    assert preset.aux.jigsaw == 1.0 and preset.learner.name == "protonet"


# ---------------------------------------------------------------------------------------------------------------
# runs through the CLI (digits, 8x8)


def train_cli(preset, run, *extra):
    assert main(["train", preset, *DIGITS, *extra, "train.steps=2", "--run-dir", str(run)]) == 0, preset
    return run


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("ssl16")
    return {
        "mocov3": train_cli("omniglot/mocov3", root / "mocov3", *CONV, *HEADS),
        "mocov3_vit": train_cli("omniglot/mocov3_vit", root / "mocov3_vit", *VIT_KEYS, *HEADS),
        "jigsaw": train_cli("omniglot/jigsaw", root / "jigsaw", *CONV, "learner.permutations=10",
                            "learner.hidden=16", "learner.gap=0"),
        "mae": train_cli("omniglot/mae", root / "mae", *VIT_KEYS, *MAE_DEC),
    }


def test_every_method_trains_from_its_preset_and_evaluates(runs, capsys):
    rows = {name: [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
            for name, run in runs.items()}
    for name, r in rows.items():
        train = [x for x in r if x.get("kind") == "train"]
        assert len(train) == 2 and all(math.isfinite(x["loss"]) for x in train), name
    assert all("contrastive_acc" in x for x in rows["mocov3"] if x.get("kind") == "train")
    m, _ = load_model(runs["mocov3_vit"])
    assert torch.equal(m.params["encoder.patch_embed.weight"], m.buffers["learner.target.encoder.patch_embed.weight"])
    j, _ = load_model(runs["jigsaw"])
    assert torch.equal(j.buffers["learner.permutations"], hamming_permutation_set(10))
    for name in ("mae", "jigsaw"):
        capsys.readouterr()
        assert main(["eval", str(runs[name]), "--json", "--device", "cpu", "--episodes", "10"]) == 0
        assert 0.0 <= json.loads(capsys.readouterr().out)["accuracy"] <= 100.0


@pytest.mark.parametrize("name", ["mocov3", "mocov3_vit", "jigsaw", "mae"])
@pytest.mark.parametrize("protocol", ["knn", "linear"])
def test_frozen_encoder_protocols_evaluate_every_method(runs, name, protocol, capsys):
    # digits' `all` split holds the ten classes: bank / probe on it, tested on it (a smoke check of the path)
    capsys.readouterr()
    assert main(["eval", str(runs[name]), "--protocol", protocol, "--dataset", "digits", "--train-split", "all",
                 "--split", "all", "--max-train", "300", "--json", "--device", "cpu"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["protocol"]["name"] == protocol and 10.0 <= out["accuracy"] <= 100.0


def test_resumed_mocov3_run_equals_the_uninterrupted_one(tmp_path):
    from metassl.engine.trainer import load_run_config, train

    def cfg(steps):  # constant lr and momentum: a cosine schedule depends on the total number of steps
        return resolve(apply_overrides({}, ["learner.name=mocov3", "model.backbone=conv4", *CONV, *HEADS[:2],
                                            "learner.momentum=0.9", "learner.momentum_schedule=constant",
                                            "optim.name=sgd", "optim.lr=0.1", "train.checkpoint_every=2",
                                            *DIGITS, f"train.steps={steps}"]))

    train(cfg(4), tmp_path / "full", echo=lambda *a: None)
    train(cfg(2), tmp_path / "half", echo=lambda *a: None)
    train(load_run_config(tmp_path / "half", ["train.steps=4"]), tmp_path / "half", resume=True,
          echo=lambda *a: None)
    a, _ = load_model(tmp_path / "full")
    b, _ = load_model(tmp_path / "half")
    assert any(k.startswith("learner.target.") for k in a.buffers)
    for k, v in a.state_tensors().items():  # encoder, heads and the momentum target
        assert torch.equal(v, b.state_tensors()[k]), k


def test_resumed_mae_run_draws_the_same_masks(tmp_path):
    from metassl.engine.trainer import load_run_config, train

    def cfg(steps):
        return resolve(apply_overrides({}, ["learner.name=mae", "model.backbone=vit", *VIT_KEYS, *MAE_DEC,
                                            "tasks.views=1", "optim.name=adamw", "optim.lr=0.001",
                                            "train.checkpoint_every=1", *DIGITS, f"train.steps={steps}"]))

    train(cfg(2), tmp_path / "full", echo=lambda *a: None)
    train(cfg(1), tmp_path / "half", echo=lambda *a: None)
    train(load_run_config(tmp_path / "half", ["train.steps=2"]), tmp_path / "half", resume=True,
          echo=lambda *a: None)
    a, _ = load_model(tmp_path / "full")
    b, _ = load_model(tmp_path / "half")
    for k, v in a.state_tensors().items():
        assert torch.equal(v, b.state_tensors()[k]), k


@pytest.mark.parametrize("source", ["mocov3_vit", "mae"])
def test_init_from_a_vit_run_into_protonet_then_predict(runs, source, tmp_path):
    from metassl.api import FewShotClassifier
    from metassl.data import load_dataset
    from metassl.engine.trainer import load_run_config, train

    # ProtoNet with the source run's model section (a ViT), starting from its encoder
    model_keys = [f"model.{k}={v}" for k, v in load_run_config(runs[source]).to_dict()["model"].items()]
    episodic = [o for o in DIGITS if not o.startswith("tasks.batch_size")]
    cfg = resolve(apply_overrides({}, ["learner.name=protonet", *model_keys, *episodic, "tasks.ways=3",
                                       "tasks.shots=1", "tasks.queries=2", "train.steps=0",
                                       f"init_from={runs[source]}"]))
    dst = tmp_path / "protonet"
    train(cfg, dst, echo=lambda *a: None)
    a, _, _ = load_checkpoint(find_checkpoint(runs[source]))
    b, _, _ = load_checkpoint(find_checkpoint(dst))
    enc = [k for k in b if k.startswith("encoder.")]
    assert "encoder.patch_embed.weight" in enc and all(torch.equal(a[k], b[k]) for k in enc)
    clf = FewShotClassifier.load(dst)
    split = load_dataset("digits", "test")
    xs = [split.images[int(split.offsets[c]) + j, 0].numpy() for c in range(3) for j in range(3)]
    ys = [c for c in range(3) for _ in range(3)]
    clf.fit(xs[::3] + xs[1::3], ys[::3] + ys[1::3])
    p = clf.predict_proba(xs[2::3])
    assert p.shape == (3, 3) and np.allclose(p.sum(1), 1, atol=1e-4)


def test_a_vit_run_is_a_cactus_embedding_and_has_a_report(runs, tmp_path, capsys):
    from metassl.engine.trainer import train

    # CACTUs clusters the MAE encoder's features (a ViT) into pseudo-classes; ProtoNet (an MLP) trains on them
    cfg = resolve(apply_overrides({}, [*[o for o in DIGITS if not o.startswith("tasks.")], "learner.name=protonet",
                                       "model.backbone=mlp", "model.hidden=[16,8]", "tasks.ways=3", "tasks.shots=1",
                                       "tasks.queries=2", "train.steps=2", "tasks.source=cactus",
                                       "tasks.clusters=12", "tasks.partitions=1",
                                       f"tasks.embed_from={runs['mae']}"]))
    r = train(cfg, tmp_path / "cactus", echo=lambda *a: None)
    assert r.steps == 2
    capsys.readouterr()
    assert main(["report", str(runs["mae"]), "--episodes", "10"]) == 0
    page = (runs["mae"] / "report" / "report.html").read_text()
    assert "accuracy_vs_shots.png" in page and "tsne.png" in page
