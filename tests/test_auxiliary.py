"""Self-supervised auxiliary loss during meta-training: it changes the gradient, and weight 0 is the plain learner."""

import pytest
import torch

from conftest import make_split
from metassl.config import apply_overrides, resolve
from metassl.data import Preprocess, sample_tasks
from metassl.engine.build import build_model
from metassl.learners.auxiliary import HEAD, RotationAuxiliary


def grads(learner_name, weight, extra=()):
    torch.manual_seed(0)
    cfg = resolve(apply_overrides({}, [f"learner.name={learner_name}", f"aux.rotation={weight}",
                                       "model.backbone=conv4", "model.depth=2", "model.hidden=8",
                                       "model.track_running_stats=false", "tasks.ways=3", *extra]))
    split = make_split(num_classes=8, per_class=6, shape=(1, 8, 8))
    m = build_model(cfg, split.image_shape, Preprocess())
    b = sample_tasks(split, 3, 1, 2, 2, torch.Generator().manual_seed(0)).map_images(Preprocess())
    loss, aux = m.learner.loss(m.params, m.buffers, b)
    loss.backward()
    return m, {k: v.grad.clone() for k, v in m.params.items() if v.grad is not None}, aux


@pytest.mark.parametrize("learner", ["protonet", "maml"])
def test_rotation_term_changes_the_encoder_gradient(learner):
    plain_m, plain, _ = grads(learner, 0.0)
    aux_m, with_aux, aux = grads(learner, 0.5)
    assert not isinstance(plain_m.learner, RotationAuxiliary) and isinstance(aux_m.learner, RotationAuxiliary)
    assert HEAD + "weight" in with_aux and HEAD + "weight" not in plain_m.params
    assert "aux_rotation_loss" in aux and 0.5 < float(aux["aux_rotation_loss"]) < 3.0
    k = "encoder.features.0.weight"
    assert not torch.allclose(plain[k], with_aux[k])
    assert set(plain) <= set(with_aux)


def test_weight_zero_is_exactly_the_plain_learner():
    a_m, a, _ = grads("protonet", 0.0)
    b_m, b, _ = grads("protonet", 0.0)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_wrapper_passes_attributes_through():
    m, _, _ = grads("maml", 1.0)
    m.learner.path = "loop"
    assert m.learner.inner.path == "loop" and m.learner.adapts_with_gradients
