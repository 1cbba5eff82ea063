"""Self-supervised auxiliary losses during meta-training: each term changes the gradient, weight 0 is the plain
learner, and the contrastive term's views come from the episode images alone."""

import pytest
import torch

from conftest import make_split
from metassl.config import apply_overrides, resolve
from metassl.data import Preprocess, sample_tasks
from metassl.data.augment import AugmentSpec, resolve_augment
from metassl.data.task_sources import AuxiliaryViews, make_task_source
from metassl.engine.build import build_model
from metassl.ssl.auxiliary import CONTRASTIVE_HEAD, ROTATION_HEAD, SelfSupervisedAuxiliary

SPLIT = dict(num_classes=8, per_class=6, shape=(1, 8, 8))


def batch(views=False, seed=0):
    split = make_split(**SPLIT)
    source = make_task_source(resolve(apply_overrides({}, ["tasks.ways=3", "tasks.shots=1", "tasks.queries=2",
                                                           "tasks.tasks_per_batch=2"])).tasks,
                              split, torch.Generator().manual_seed(seed))
    if views:
        source = AuxiliaryViews(source, resolve_augment(None, "omniglot"), torch.Generator().manual_seed(seed))
    return source.sample().map_images(Preprocess())


def grads(learner_name, rotation=0.0, contrastive=0.0, views=None):
    torch.manual_seed(0)
    cfg = resolve(apply_overrides({}, [f"learner.name={learner_name}", f"aux.rotation={rotation}",
                                       f"aux.contrastive={contrastive}",
                                       "model.backbone=conv4", "model.depth=2", "model.hidden=8",
                                       "model.track_running_stats=false", "tasks.ways=3"]))
    m = build_model(cfg, SPLIT["shape"], Preprocess())
    b = batch(views=contrastive > 0 if views is None else views)
    _out = m.learner.loss(m.params, m.buffers, b)
    loss, aux = _out.loss, {**_out.metrics, **_out.state}
    loss.backward()
    return m, {k: v.grad.clone() for k, v in m.params.items() if v.grad is not None}, aux


@pytest.mark.parametrize("learner", ["protonet", "maml"])
def test_rotation_term_changes_the_encoder_gradient(learner):
    plain_m, plain, _ = grads(learner)
    aux_m, with_aux, aux = grads(learner, rotation=0.5)
    assert not isinstance(plain_m.learner, SelfSupervisedAuxiliary)
    assert isinstance(aux_m.learner, SelfSupervisedAuxiliary)
    assert ROTATION_HEAD + "weight" in with_aux and ROTATION_HEAD + "weight" not in plain_m.params
    assert not any(k.startswith(CONTRASTIVE_HEAD) for k in aux_m.params)
    assert "aux_rotation_loss" in aux and 0.5 < float(aux["aux_rotation_loss"]) < 3.0
    k = "encoder.features.0.weight"
    assert not torch.allclose(plain[k], with_aux[k])
    assert set(plain) <= set(with_aux)


@pytest.mark.parametrize("learner", ["protonet", "maml"])
def test_contrastive_term_changes_the_encoder_gradient(learner):
    plain_m, plain, plain_aux = grads(learner)
    aux_m, with_aux, aux = grads(learner, contrastive=0.5)
    assert {CONTRASTIVE_HEAD + n for n in ("0.weight", "0.bias", "1.weight", "1.bias")} <= set(with_aux)
    assert not any(k.startswith(ROTATION_HEAD) for k in aux_m.params)
    # 2 tasks x 3 ways x (1 + 2) images, two views each: NT-Xent against 2*18 - 2 negatives, about log(35) at init
    assert 2.0 < float(aux["aux_contrastive_loss"]) < 5.0
    assert 0.0 <= float(aux["aux_contrastive_accuracy"]) <= 1.0
    k = "encoder.features.0.weight"
    assert not torch.allclose(plain[k], with_aux[k])
    # the meta-learning loss itself is untouched: the total is the plain loss + 0.5 x the contrastive loss
    assert float(aux["loss"]) == pytest.approx(float(plain_aux["loss"]), rel=1e-5)


def test_both_terms_together_add_both_heads_and_metrics():
    m, g, aux = grads("protonet", rotation=1.0, contrastive=1.0)
    assert {"aux_rotation_loss", "aux_contrastive_loss"} <= set(aux)
    assert ROTATION_HEAD + "weight" in g and CONTRASTIVE_HEAD + "1.weight" in g


def test_contrastive_without_views_is_a_clear_error():
    with pytest.raises(ValueError, match="aux.contrastive needs two augmented views"):
        grads("protonet", contrastive=1.0, views=False)


def test_weight_zero_is_exactly_the_plain_learner():
    a_m, a, _ = grads("protonet")
    b_m, b, _ = grads("protonet", rotation=0.0, contrastive=0.0)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_wrapper_passes_attributes_through():
    m, _, _ = grads("maml", rotation=1.0)
    loop = m.learner.with_options(path="loop")  # a new wrapper around a new learner; the original is unchanged
    assert loop.inner.options.path == "loop" and loop.maps_tasks and loop.rotation == 1.0
    assert m.learner.inner.options.path == "auto"


def test_auxiliary_views_are_views_of_each_tasks_own_images():
    b = batch()
    split = make_split(**SPLIT)
    src = make_task_source(resolve(apply_overrides({}, ["tasks.ways=3", "tasks.shots=1", "tasks.queries=2",
                                                        "tasks.tasks_per_batch=2"])).tasks,
                           split, torch.Generator().manual_seed(0))
    # without augmentation the views are the support then query images themselves, in order
    raw = AuxiliaryViews(src, AugmentSpec(), torch.Generator().manual_seed(0), views=2).sample()
    assert raw.views.shape == (2, 2, 9, 1, 8, 8) and raw.views.dtype == torch.float32
    images = torch.cat([raw.support_x, raw.query_x], 1).float() / 255
    assert torch.equal(raw.views[:, 0], images) and torch.equal(raw.views[:, 1], images)
    # the tasks themselves are those of the unwrapped source (the wrapper only adds views)
    assert torch.equal(raw.support_y, b.support_y) and torch.equal(raw.query_y, b.query_y)
    # with the Omniglot augmentation the two views differ, and chunks/to/map_images carry them along
    aug = AuxiliaryViews(src, resolve_augment(None, "omniglot"), torch.Generator().manual_seed(0)).sample()
    assert not torch.equal(aug.views[:, 0], aug.views[:, 1])
    parts = aug.chunks(1)
    assert [p.views.shape[0] for p in parts] == [1, 1] and torch.equal(parts[1].views[0], aug.views[1])
    assert aug.to("cpu").views is not None and aug.map_images(lambda x: x * 0).views.abs().sum() == 0


def test_auxiliary_views_pass_other_batches_through():
    class Views:
        def sample(self):
            return "a view batch"

    assert AuxiliaryViews(Views(), AugmentSpec(), torch.Generator()).sample() == "a view batch"


@pytest.mark.parametrize("learner,extra", [("protonet", []), ("maml", ["learner.inner_steps=1",
                                                                       "model.track_running_stats=false"])])
def test_training_with_the_contrastive_term(tmp_path, learner, extra):
    from metassl.engine.trainer import train

    cfg = resolve(apply_overrides({}, [
        "data.dataset=digits", "data.train_split=all", "data.val_split=null", "data.test_split=test",
        f"learner.name={learner}", "aux.contrastive=1.0", "tasks.ways=3", "tasks.shots=1", "tasks.queries=2",
        "tasks.tasks_per_batch=2", "model.backbone=conv4", "model.depth=2", "model.hidden=8", "train.steps=20",
        "train.log_every=10", "train.progress=false", "train.tensorboard=false", "train.report=false",
        "optim.lr=0.003", *extra]))
    r = train(cfg, tmp_path / "run")
    assert r.steps == 20
    assert all("aux_contrastive_loss" in h for h in r.history)
    assert r.history[-1]["aux_contrastive_loss"] < r.history[0]["aux_contrastive_loss"]
