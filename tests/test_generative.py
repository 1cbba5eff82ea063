"""Generative models (vae, gan), the LASIUM task source and self-training rounds (issue 17): formulas against direct
computations on tiny tensors, and 2-4-step runs on scikit-learn's digits."""

import json
import math
from dataclasses import dataclass

import pytest
import torch
from torch.distributions import Bernoulli, Normal, kl_divergence

from conftest import make_split
from metassl.config import ConfigError, apply_overrides, resolve
from metassl.data.episodic import ClassSplit
from metassl.data.lasium import LASIUMTasks, farthest_anchors, lasium_latents
from metassl.ssl.gan import gan_losses, spectral_normalize
from metassl.ssl.vae import ConvDecoder, vae_terms

COMMON = ["data.dataset=digits", "data.train_split=all", "data.val_split=null", "data.test_split=test",
          "model.backbone=conv4", "model.depth=2", "model.hidden=8", "train.progress=false", "train.threads=1",
          "train.tensorboard=false", "train.report=false", "eval.episodes=20"]


def cfg_of(*over):
    return resolve(apply_overrides({}, [*COMMON, *over]))


# -- VAE -----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
def test_vae_terms_are_the_direct_elbo(likelihood):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 1, 4, 4, generator=g)
    if likelihood == "bernoulli":
        x = (x > 0.5).float()
    out = torch.randn(3, 1, 4, 4, generator=g)
    mu, logvar = torch.randn(3, 5, generator=g), torch.randn(3, 5, generator=g)
    rec, kl = vae_terms(out, x, mu, logvar, likelihood, sigma=0.7)
    if likelihood == "bernoulli":
        direct = -Bernoulli(logits=out).log_prob(x).flatten(1).sum(1)
    else:
        direct = -Normal(out, 0.7).log_prob(x).flatten(1).sum(1)
    dkl = kl_divergence(Normal(mu, (0.5 * logvar).exp()), Normal(torch.zeros(5), torch.ones(5))).sum(1)
    assert torch.allclose(rec, direct, atol=1e-4)
    assert torch.allclose(kl, dkl, atol=1e-5)
    assert bool((kl >= 0).all())


@pytest.mark.parametrize("size", [8, 28, 32, 84])
def test_decoder_makes_the_image_size(size):
    dec = ConvDecoder(6, (3, size, size), width=4)
    assert dec(torch.randn(2, 6)).shape == (2, 3, size, size)


# -- GAN -----------------------------------------------------------------------------------------------------------
def test_gan_losses_match_binary_cross_entropy_and_hinge():
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    real, fake = torch.tensor([2.0, -0.5, 0.3]), torch.tensor([-1.0, 0.7, 4.0])
    d, g = gan_losses(real, fake, "nonsaturating")
    assert torch.allclose(d, bce(real, torch.ones(3)) + bce(fake, torch.zeros(3)))
    assert torch.allclose(g, bce(fake, torch.ones(3)))
    d, g = gan_losses(real, fake, "hinge")
    assert torch.allclose(d, (1 - real).clamp_min(0).mean() + (1 + fake).clamp_min(0).mean())
    assert torch.allclose(g, -fake.mean())
    # signs: a discriminator that separates well has a small loss, and then the generator's is large
    for kind in ("nonsaturating", "hinge"):
        d_good, g_bad = gan_losses(torch.full((4,), 5.0), torch.full((4,), -5.0), kind)
        d_bad, g_good = gan_losses(torch.full((4,), -5.0), torch.full((4,), 5.0), kind)
        assert d_good < d_bad and g_good < g_bad


def test_spectral_normalize_divides_by_the_largest_singular_value():
    w = torch.randn(6, 3, 2, 2, generator=torch.Generator().manual_seed(1))
    u = torch.nn.functional.normalize(torch.randn(6), dim=0)
    for _ in range(50):
        wn, u = spectral_normalize(w, u)
    assert math.isclose(float(torch.linalg.matrix_norm(wn.reshape(6, -1), 2)), 1.0, rel_tol=1e-4)


def test_each_gan_loss_reaches_only_its_own_network(one_thread):
    from metassl.data.views import ViewBatch
    from metassl.engine.build import build_model
    from metassl.engine.meta import StepRunner
    from metassl.data.episodic import Preprocess

    cfg = cfg_of("learner.name=gan", "learner.latent_dim=4", "learner.generator_width=4", "learner.output=linear",
                 "learner.spectral_norm=true", "tasks.batch_size=6", "tasks.views=1")
    model = build_model(cfg, (1, 8, 8), Preprocess())
    learner = model.learner
    views = torch.randn(1, 6, 1, 8, 8)
    torch.manual_seed(3)
    StepRunner(model, "cpu")(ViewBatch(views))
    got = {k: None if p.grad is None else p.grad.clone() for k, p in model.params.items()}
    torch.manual_seed(3)
    out = learner.loss(model.params, model.buffers, ViewBatch(views))
    d_names = [k for k in model.params if not k.startswith("learner.generator.")]
    g_names = [k for k in model.params if k.startswith("learner.generator.")]
    assert g_names and any(k.startswith("encoder.") for k in d_names) and "learner.critic.weight" in d_names
    d_grads = torch.autograd.grad(out.group_losses["discriminator"], [model.params[k] for k in d_names],
                                  retain_graph=True, allow_unused=True)
    g_grads = torch.autograd.grad(out.group_losses["generator"], [model.params[k] for k in g_names])
    for k, gr in [*zip(d_names, d_grads), *zip(g_names, g_grads)]:
        ref = torch.zeros_like(model.params[k]) if gr is None else gr
        assert got[k] is not None and torch.allclose(got[k], ref, atol=1e-6), k
    # the generator loss also has a gradient for the discriminator, which must not have reached it
    leak = torch.autograd.grad(learner.loss(model.params, model.buffers, ViewBatch(views)).group_losses["generator"],
                               model.params["learner.critic.weight"])[0]
    assert float(leak.abs().sum()) > 0
    groups = {g.name: g for g in learner.param_groups()}
    assert set(groups) == {"discriminator", "generator"} and dict(groups["generator"].options)["betas"] == (0.5, 0.999)


def test_gan_trains_with_two_optimizers_resumes_and_samples(tmp_path, one_thread):
    from metassl.engine.generative import load_generator, sample_grid
    from metassl.engine.trainer import Trainer, train

    gan = cfg_of("learner.name=gan", "learner.latent_dim=4", "learner.generator_width=4", "learner.output=linear",
                 "learner.spectral_norm=true", "tasks.batch_size=16", "tasks.views=1", "augment.preset=none")
    train(apply_cfg(gan, "train.steps=2"), tmp_path / "gan")
    t = Trainer(apply_cfg(gan, "train.steps=3"), tmp_path / "gan", resume=True)
    assert t.step == 2 and len(t.optimizer.param_groups) == 2
    assert {g["group"] for g in t.optimizer.param_groups} == {"discriminator", "generator"}
    assert [tuple(g["betas"]) for g in t.optimizer.param_groups] == [(0.5, 0.999)] * 2
    t.run()
    assert t.step == 3
    gen = load_generator(tmp_path / "gan")
    a, b = sample_grid(gen, 5, seed=7), sample_grid(gen, 5, seed=7)
    assert a.shape == (5, 1, 8, 8) and torch.equal(a, b) and 0 <= float(a.min()) and float(a.max()) <= 1


def apply_cfg(cfg, *over):
    from metassl.config import resolve_stored

    return resolve_stored(apply_overrides(cfg.to_dict(), list(over)))


# -- LASIUM --------------------------------------------------------------------------------------------------------
@dataclass
class PixelGenerator:
    """A stand-in generator: the latent is the image (sigmoid of it), so tests can read each image's latent back."""

    latent_dim: int = 16
    image_shape: tuple = (1, 4, 4)

    def decode(self, z):
        return torch.sigmoid(z).view(-1, *self.image_shape)


def lasium_cfg(**kw):
    from metassl.data.lasium import LASIUMTaskConfig

    return LASIUMTaskConfig(**{"source": "lasium", "ways": 4, "shots": 2, "queries": 3, "tasks_per_batch": 5,
                               "noise_std": 0.1, **kw})


def toy_split():
    s = make_split(num_classes=6, per_class=4, shape=(1, 4, 4))
    return s


def test_lasium_tasks_have_distinct_classes_and_never_read_labels():
    split = toy_split()
    src = LASIUMTasks(lasium_cfg(), split, torch.Generator().manual_seed(0), generator_model=PixelGenerator())
    b = src.sample()
    assert b.support_x.shape == (5, 8, 1, 4, 4) and b.query_x.shape == (5, 12, 1, 4, 4) and b.ways == 4
    assert torch.equal(b.support_y[0], torch.arange(4).repeat_interleave(2))
    z_s = torch.logit(b.support_x.reshape(5, 8, 16)).view(5, 4, 2, 16)
    z_q = torch.logit(b.query_x.reshape(5, 12, 16)).view(5, 4, 3, 16)
    z = torch.cat([z_s, z_q], 2)  # [T, N, K+Q, L]
    centre = z.mean(2)  # about the anchor of each class
    d = torch.cdist(z.reshape(5, -1, 16), centre)  # every image against every class's centre
    own = torch.arange(4).repeat_interleave(5)
    assert torch.equal(d.argmin(-1), own.expand(5, -1))  # each image is nearest its own class
    assert float(torch.cdist(centre, centre).add(torch.eye(4) * 1e9).min()) > 1.0  # distinct classes
    # shuffled labels (the classes' order and sizes permuted): the same tasks
    perm = torch.randperm(6)
    shuffled = ClassSplit(split.images.flip(0), split.counts[perm], [split.class_names[i] for i in perm], split.name)
    b2 = LASIUMTasks(lasium_cfg(), shuffled, torch.Generator().manual_seed(0), generator_model=PixelGenerator()).sample()
    assert torch.equal(b.support_x, b2.support_x) and torch.equal(b.query_x, b2.query_x)


def test_lasium_latents_are_deterministic_by_seed_and_follow_the_variant():
    args = (3, 4, 5, 8)
    a = lasium_latents(*args, "n", 0.3, 0.4, 4, torch.Generator().manual_seed(5))
    assert torch.equal(a, lasium_latents(*args, "n", 0.3, 0.4, 4, torch.Generator().manual_seed(5)))
    assert not torch.equal(a, lasium_latents(*args, "n", 0.3, 0.4, 4, torch.Generator().manual_seed(6)))
    # OC: each latent lies on the segment from its anchor towards another class's anchor, at the step size
    g = torch.Generator().manual_seed(2)
    z = lasium_latents(*args, "oc", 0.0, 0.25, 1, g)
    anchors = torch.randn(3, 4, 8, generator=torch.Generator().manual_seed(2))  # candidates=1: the first N drawn
    diff = (z - anchors.unsqueeze(2)) / 0.25 + anchors.unsqueeze(2)  # = the other anchor
    match = torch.cdist(diff.reshape(3, -1, 8), anchors).min(-1).values
    assert float(match.max()) < 1e-4
    # far-apart selection: the chosen anchors are farther apart than random ones
    cand = torch.randn(200, 40, 8, generator=torch.Generator().manual_seed(0))
    far = farthest_anchors(cand, 5, torch.Generator().manual_seed(0))
    off = ~torch.eye(5, dtype=torch.bool)
    assert float(torch.cdist(far, far)[:, off].min(-1).values.mean()) > \
        float(torch.cdist(cand[:, :5], cand[:, :5])[:, off].min(-1).values.mean())


def test_lasium_bad_inputs_are_clear_errors(tmp_path, one_thread):
    from metassl.engine.trainer import train

    split = toy_split()
    with pytest.raises(ConfigError, match="needs tasks.generator_from"):
        LASIUMTasks(lasium_cfg(), split, torch.Generator(), load_generator=lambda r: None)
    with pytest.raises(ConfigError, match=r"makes \[1, 5, 5\] images but the learner is built for \[1, 4, 4\]"):
        LASIUMTasks(lasium_cfg(generator_from="g"), split, torch.Generator(),
                    generator_model=PixelGenerator(25, (1, 5, 5)))
    train(cfg_of("train.steps=1", "tasks.ways=3", "tasks.queries=2"), tmp_path / "proto")
    with pytest.raises(ConfigError, match="tasks.generator_from=.*is a protonet run, which generates no images"):
        train(cfg_of("train.steps=1", "tasks.source=lasium", "tasks.ways=3", "tasks.queries=2",
                     f"tasks.generator_from={tmp_path / 'proto'}"), tmp_path / "bad")


def test_lasium_trains_protonet_from_a_vae(tmp_path, one_thread):
    from metassl.engine.trainer import train

    train(cfg_of("learner.name=vae", "learner.likelihood=gaussian", "learner.latent_dim=4",
                 "learner.decoder_width=4", "tasks.batch_size=8", "tasks.views=1", "train.steps=1",
                 "train.log_every=1"), tmp_path / "vae")
    rows = [json.loads(r) for r in (tmp_path / "vae" / "metrics.jsonl").read_text().splitlines()]
    assert {"reconstruction", "kl", "neg_elbo"} <= set(rows[-1])
    r = train(cfg_of("train.steps=2", "tasks.source=lasium", "tasks.ways=3", "tasks.queries=2", "tasks.variant=ro",
                     f"tasks.generator_from={tmp_path / 'vae'}"), tmp_path / "lasium")
    assert r.steps == 2 and math.isfinite(r.final_loss)
    from metassl.cli.main import main

    assert main(["sample", str(tmp_path / "vae"), "--n", "9", "--out", str(tmp_path / "g.png")]) == 0
    assert (tmp_path / "g.png").stat().st_size > 0


# -- self-training rounds --------------------------------------------------------------------------------------------
def test_purity_against_a_direct_count():
    from metassl.engine.selftrain import purity

    assign = torch.tensor([0, 0, 0, 1, 1, 2])
    labels = torch.tensor([5, 5, 1, 2, 3, 3])
    assert purity(assign, labels) == pytest.approx((2 + 1 + 1) / 6)


def test_selftrain_round_writes_its_report_and_resumes_mid_round(tmp_path, one_thread, monkeypatch):
    import yaml

    from metassl.engine import selftrain as st
    from metassl.engine.trainer import Trainer, train

    train(cfg_of("train.steps=1", "tasks.ways=3", "tasks.queries=2"), tmp_path / "start")
    conf = tmp_path / "round.yaml"
    conf.write_text(yaml.safe_dump(apply_overrides({}, [*COMMON, "tasks.source=cactus", "tasks.ways=3",
                                                        "tasks.queries=2", "tasks.clusters=12", "tasks.kmeans_iters=3",
                                                        "train.steps=4", "train.checkpoint_every=2"])))
    with pytest.raises(ConfigError, match="tasks.clusters=2 pseudo-classes are fewer than .*tasks.ways=3"):
        st.selftrain(tmp_path / "few", str(conf), str(tmp_path / "start"), 1, ["tasks.clusters=2"], episodes=10)
    # a kill in the middle of round 1 (after its step-2 checkpoint)
    real_run = Trainer.run

    def killed(self):
        self.cfg = apply_cfg(self.cfg, "train.steps=2")
        real_run(self)
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(Trainer, "run", killed)
    with pytest.raises(KeyboardInterrupt):
        st.selftrain(tmp_path / "st", str(conf), str(tmp_path / "start"), 1, ways=3, shots=(1,), episodes=10)
    monkeypatch.setattr(Trainer, "run", real_run)
    assert [r["round"] for r in st.read_rounds(tmp_path / "st")] == [0]
    rows = st.selftrain(tmp_path / "st", resume=True, rounds=1, episodes=10)
    assert [r["round"] for r in rows] == [0, 1]
    assert rows[1]["steps"] == 4 and 0 < rows[1]["purity"] <= 1 and "3w1s" in rows[1]["test"]
    assert (tmp_path / "st" / "rounds.png").is_file()
    log = [json.loads(x) for x in (tmp_path / "st" / "round_1" / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in log if x.get("kind") == "train"][-1] == 4
