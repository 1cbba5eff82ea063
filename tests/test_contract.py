"""The engine-learner contract: evaluation runs under torch.no_grad for every learner (so no learner needs to say
whether it adapts by gradients), episodes are independent of how they are batched, and the engine's options reach
a learner only through `EngineOptions` (the learner is never changed)."""

import pytest
import torch

from metassl.config import resolve
from metassl.data import Preprocess
from metassl.engine.build import build_model
from metassl.eval.episodes import Protocol, evaluate
from metassl.learners.base import EngineOptions

from conftest import make_split

MLP = {"backbone": "mlp", "hidden": [12, 6], "image_size": 8, "norm": "batch", "track_running_stats": False}


def model_for(learner, model=MLP, ways=3):
    torch.manual_seed(0)
    cfg = resolve({"model": model, "learner": learner, "tasks": {"ways": ways, "shots": 2, "queries": 2},
                   "train": {"channels_last": False}})
    m = build_model(cfg, (1, 8, 8), Preprocess())
    m.train(False)
    return m


@pytest.mark.parametrize("learner", [{"name": "maml", "inner_steps": 2, "head_init": "linear"},
                                     {"name": "anil", "inner_steps": 2, "head_init": "linear"},
                                     {"name": "metasgd", "head_init": "linear"},
                                     {"name": "reptile", "inner_steps": 3, "eval_inner_steps": 3,
                                      "head_init": "linear"}], ids=lambda d: d["name"])
@pytest.mark.parametrize("path", ["vmap", "loop"])
def test_gradient_learners_give_the_same_logits_under_no_grad(learner, path):
    m = model_for({**learner, "path": path})
    g = torch.Generator().manual_seed(1)
    sx, qx = torch.rand(4, 6, 1, 8, 8, generator=g), torch.rand(4, 6, 1, 8, 8, generator=g)
    sy = torch.arange(3).repeat(2).expand(4, 6)
    with torch.enable_grad():
        with_grad = m.predict(sx, sy, qx, 3)
    with torch.no_grad():
        without = m.predict(sx, sy, qx, 3)
    # the inner loop must have adapted: logits differ from the unadapted network's
    with torch.no_grad():
        unadapted = m.learner.forward(m.params, m.buffers, qx[0])
    assert not torch.allclose(without[0], unadapted, atol=1e-4)
    assert torch.allclose(with_grad, without, atol=1e-6)


@pytest.mark.parametrize("learner", [{"name": "protonet"}, {"name": "simclr", "proj_hidden": 8, "proj_dim": 4},
                                     {"name": "maml", "head_init": "linear"}], ids=lambda d: d["name"])
def test_evaluation_does_not_depend_on_how_episodes_are_batched(learner):
    # BatchNorm without running statistics normalizes with the batch it is given: each episode must get its own
    # (measured before the fix: Omniglot 5w1s 93.66% at 1 episode per batch, 92.75% at 10, the same weights)
    m = model_for(learner)
    split = make_split(num_classes=8, per_class=6, shape=(1, 8, 8), name="toy/test")
    p = Protocol("toy", "test", 3, 1, 2, 12, 0)
    results = [evaluate(m.predict, split, p, Preprocess(), batch_episodes=b) for b in (1, 5, 12, 0)]
    for r in results[1:]:
        assert r.per_episode_accuracy == results[0].per_episode_accuracy
        assert r.metrics["roc_auc"]["mean"] == pytest.approx(results[0].metrics["roc_auc"]["mean"], abs=1e-12)


def test_per_episode_embedding_equals_embedding_each_episode_alone():
    m = model_for({"name": "protonet"})
    x = torch.rand(3, 5, 1, 8, 8)
    together = m.learner.embed(m.params, m.buffers, x, per_task=True)
    alone = torch.stack([m.learner.embed(m.params, m.buffers, x[i:i + 1])[0] for i in range(3)])
    pooled = m.learner.embed(m.params, m.buffers, x)  # all 15 images in one batch: other statistics
    assert torch.allclose(together, alone, atol=1e-6) and not torch.allclose(together, pooled, atol=1e-4)


def test_engine_options_reach_the_learner_without_changing_it():
    m = model_for({"name": "maml", "path": "auto", "tasks_per_chunk": 2, "amp": "bf16"})
    assert m.learner.options == EngineOptions(amp="bf16", tasks_per_chunk=2, path="auto", channels_last=False,
                                              input_shape=(1, 8, 8))
    loop = m.learner.with_options(path="loop")
    assert loop.options.path == "loop" and m.learner.options.path == "auto" and loop is not m.learner
    assert loop.config is m.learner.config and loop.encoder is m.learner.encoder
