"""The ViT backbone (models/vit.py): widths, pooling, sine-cosine and interpolated position embeddings against direct
computations, functional_call / vmap, MAML on it, ONNX and TorchScript export, the patch-size error. CPU, tiny."""

import json
import math
import warnings

import numpy as np
import pytest
import torch
from torch.func import functional_call, vmap

from metassl.config import ConfigError, resolve
from metassl.models import build_backbone
from metassl.models.vit import ViT, sincos_2d

TRAIN = ["data.dataset=digits", "data.train_split=train", "data.val_split=null", "data.test_split=test",
         "model.backbone=vit", "model.dim=16", "model.depth=1", "model.heads=2", "model.patch_size=4",
         "model.image_size=8", "train.progress=false", "train.tensorboard=false", "train.report=false"]


def vit(**model):
    cfg = resolve({"model": {"backbone": "vit", "dim": 16, "depth": 2, "heads": 2, "patch_size": 4, "image_size": 8,
                             **model}})
    torch.manual_seed(0)
    return build_backbone(cfg.model, 1).eval()


def test_widths_and_shapes(one_thread):
    for size, (dim, heads) in {"tiny": (192, 3), "small": (384, 6)}.items():
        cfg = resolve({"model": {"backbone": "vit", "size": size, "depth": 1, "image_size": 8}})
        m = build_backbone(cfg.model, 3)
        assert m.dim == dim and m.blocks[0].attn.heads == heads and len(m.blocks) == 1
        assert m(torch.rand(2, 3, 8, 8)).shape == (2, dim)
    assert len(build_backbone(resolve({"model": {"backbone": "vit", "image_size": 8}}).model, 1).blocks) == 12
    m = vit()
    assert m(torch.rand(5, 1, 8, 8)).shape == (5, 16)
    tokens = m(torch.rand(5, 1, 8, 8), tokens=True)
    assert tokens.shape == (5, 1 + 4, 16)  # class token + (8 / 4)^2 patches
    keep = torch.tensor([[3, 0], [1, 2], [0, 1], [2, 3], [1, 3]])
    assert m(torch.rand(5, 1, 8, 8), keep_index=keep, tokens=True).shape == (5, 3, 16)


def test_cls_and_mean_pooling_read_the_final_tokens():
    a, b = vit(pool="cls"), vit(pool="mean")
    b.load_state_dict(a.state_dict())
    x = torch.rand(4, 1, 8, 8)
    with torch.no_grad():
        tokens = a(x, tokens=True)
        assert torch.allclose(a(x), tokens[:, 0]) and torch.allclose(b(x), tokens[:, 1:].mean(1), atol=1e-6)
        # the final LayerNorm is applied to every token
        assert torch.allclose(tokens.mean(-1), torch.zeros(4, 5), atol=1e-5)


def test_keep_index_runs_the_encoder_on_those_patches_only():
    m = vit(depth=1)
    x = torch.rand(2, 1, 8, 8)
    keep = torch.tensor([[2, 0], [3, 1]])
    with torch.no_grad():
        got = m(x, keep_index=keep, tokens=True)
        t = m.embed_patches(x)
        ref = torch.stack([torch.cat([m.cls_token[0], t[i, keep[i]]]) for i in range(2)])
        assert torch.allclose(got, m.norm(m.blocks(ref)), atol=1e-6)
        x2 = x.clone()
        x2[0, :, :4, 4:] = 5.0  # patch 1 of image 0 is not kept: no effect on image 0's tokens
        assert torch.allclose(m(x2, keep_index=keep, tokens=True)[0], got[0], atol=1e-6)


def test_patchify_is_row_major_and_unpatchify_inverts_it():
    m = vit()
    x = torch.arange(2 * 1 * 8 * 8, dtype=torch.float32).reshape(2, 1, 8, 8)
    p = m.patchify(x)
    assert p.shape == (2, 4, 16)
    for i in range(2):
        for r in range(2):
            for c in range(2):
                assert torch.equal(p[i, r * 2 + c], x[i, 0, 4 * r:4 * r + 4, 4 * c:4 * c + 4].reshape(-1))
    assert torch.equal(m.unpatchify(p, 8, 8), x)


def test_sincos_embedding_matches_the_formula():
    gh, gw, d = 3, 2, 8
    e = sincos_2d(gh, gw, d)
    q = d // 4
    for r in range(gh):
        for c in range(gw):
            row = [math.sin(r / 10000 ** (i / q)) for i in range(q)] + [math.cos(r / 10000 ** (i / q)) for i in range(q)]
            col = [math.sin(c / 10000 ** (i / q)) for i in range(q)] + [math.cos(c / 10000 ** (i / q)) for i in range(q)]
            assert np.allclose(e[r * gw + c].numpy(), row + col, atol=1e-6)
    fixed = vit(pos_embed="sincos")
    assert "pos_embed" in dict(fixed.named_buffers()) and "pos_embed" not in dict(fixed.named_parameters())


def _bicubic_1d(n_in, n_out):
    """The [n_out, n_in] matrix of bicubic resampling (Keys' kernel, a = -0.75, half-pixel centres, edges clamped),
    written from the definition."""
    a = -0.75

    def k(t):
        t = abs(t)
        if t <= 1:
            return (a + 2) * t ** 3 - (a + 3) * t ** 2 + 1
        if t < 2:
            return a * t ** 3 - 5 * a * t ** 2 + 8 * a * t - 4 * a
        return 0.0

    w = np.zeros((n_out, n_in))
    for i in range(n_out):
        src = (i + 0.5) * n_in / n_out - 0.5
        f = math.floor(src)
        for j in range(f - 1, f + 3):
            w[i, min(max(j, 0), n_in - 1)] += k(src - j)
    return w


def test_position_embeddings_are_interpolated_bicubically_for_another_size():
    m = vit()  # built for 8x8: a 2x2 grid
    pos = m.pos_embed.detach()[0].numpy().reshape(2, 2, 16)
    wr, wc = _bicubic_1d(2, 3), _bicubic_1d(2, 3)
    ref = np.einsum("ri,cj,ijd->rcd", wr, wc, pos).reshape(9, 16)
    got = m.position_embedding(3, 3).detach()[0].numpy()
    assert np.abs(got - ref).max() < 1e-5
    assert m.position_embedding(2, 2) is m.pos_embed  # the built grid: no interpolation
    # a 12x12 image through the 8x8 model == a 12x12 model holding the interpolated embeddings
    big = vit(image_size=12)
    state = {k: v for k, v in m.state_dict().items()}
    state["pos_embed"] = m.position_embedding(3, 3).detach()
    big.load_state_dict(state)
    x = torch.rand(3, 1, 12, 12)
    with torch.no_grad():
        assert torch.allclose(m(x), big(x), atol=1e-5)


def test_functional_call_and_vmap_equal_the_module():
    m = vit(depth=2)
    params = {k: v.detach() for k, v in m.named_parameters()}
    x = torch.rand(3, 1, 8, 8)
    with torch.no_grad():
        assert torch.allclose(functional_call(m, params, (x,)), m(x), atol=1e-6)
    # per-task parameters (as the MAML family's inner loop): task t uses params scaled by (1 + t / 10)
    batched = {k: torch.stack([v * (1 + t / 10) for t in range(2)]) for k, v in params.items()}
    xs = torch.rand(2, 3, 1, 8, 8)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's vmap fallback for the fused CPU attention kernel
        out = vmap(lambda p, xx: functional_call(m, p, (xx,)))(batched, xs)
    for t in range(2):
        with torch.no_grad():
            ref = functional_call(m, {k: v[t] for k, v in batched.items()}, (xs[t],))
        assert torch.allclose(out[t], ref, atol=1e-5)
    # gradients through functional_call reach every parameter
    p = {k: v.clone().requires_grad_() for k, v in params.items()}
    functional_call(m, p, (x,)).pow(2).sum().backward()
    assert all(v.grad is not None and float(v.grad.abs().sum()) > 0 for k, v in p.items()), \
        [k for k, v in p.items() if v.grad is None or float(v.grad.abs().sum()) == 0]


def test_patch_size_that_does_not_divide_the_image_is_a_config_error():
    with pytest.raises(ConfigError, match=r"model.patch_size=5 does not divide the image size 32x32"):
        resolve({"model": {"backbone": "vit", "patch_size": 5, "image_size": 32}})
    m = vit()
    with pytest.raises(ConfigError, match=r"model.patch_size=4 does not divide the image size 10x10"):
        m(torch.rand(1, 1, 10, 10))
    with pytest.raises(ConfigError, match=r"model.dim=10 must be a multiple of model.heads=3"):
        resolve({"model": {"backbone": "vit", "dim": 10, "heads": 3, "image_size": 8}})


@pytest.fixture(scope="module")
def vit_run(tmp_path_factory):
    """A 2-step ProtoNet on a tiny ViT (digits, 8x8)."""
    from metassl.config import apply_overrides
    from metassl.engine.trainer import train

    run = tmp_path_factory.mktemp("vit") / "run"
    train(resolve(apply_overrides({}, ["learner.name=protonet", *TRAIN, "tasks.ways=3", "tasks.shots=1",
                                       "tasks.queries=2", "train.steps=2"])), run, echo=lambda *a: None)
    return run


def test_onnx_and_torchscript_export_match_pytorch(vit_run, tmp_path):
    import onnxruntime as ort

    from metassl.engine.build import load_model
    from metassl.export import export

    onnx_path = export(vit_run, "onnx", tmp_path / "v.onnx")
    ts_path = export(vit_run, "torchscript", tmp_path / "v.pt")
    assert json.loads((tmp_path / "v.onnx.json").read_text())["backbone"] == "vit"
    m, _ = load_model(vit_run)
    assert isinstance(m.encoder, ViT)
    x = torch.rand(5, *m.image_shape)  # another batch size than the export example
    with torch.no_grad():
        ref = m.learner.embed(m.params, m.buffers, m.preprocess(x)).numpy()
        ts = torch.jit.load(str(ts_path))(x).numpy()
    onnx_out = ort.InferenceSession(str(onnx_path)).run(None, {"images": x.numpy()})[0]
    assert ref.shape == (5, 16)
    assert np.abs(ts - ref).max() < 1e-4 and np.abs(onnx_out - ref).max() < 1e-4


def test_maml_trains_on_a_vit(tmp_path):
    from metassl.config import apply_overrides
    from metassl.engine.build import load_model
    from metassl.engine.trainer import train

    cfg = resolve(apply_overrides({}, ["learner.name=maml", "learner.path=vmap", *TRAIN, "tasks.ways=3",
                                       "tasks.shots=1", "tasks.queries=2", "tasks.tasks_per_batch=2",
                                       "train.steps=2", "optim.name=adam"]))
    res = train(cfg, tmp_path / "maml", echo=lambda *a: None)
    assert res.steps == 2
    m, _ = load_model(tmp_path / "maml")
    assert all(torch.isfinite(v).all() for v in m.params.values())
