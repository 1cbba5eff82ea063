"""A loss that turns NaN stops training with the step named, and the last checkpoint stays intact."""

import math

import pytest

from metassl.learners import LossOutput
import torch

from metassl.config import apply_overrides, resolve
from metassl.engine.checkpoint import find_checkpoint, load_checkpoint
from metassl.engine.trainer import Trainer, first_non_finite


def test_first_non_finite():
    assert first_non_finite([torch.tensor(1.0), torch.tensor(2.0)]) is None
    assert first_non_finite([torch.tensor(1.0), torch.tensor(float("nan")), torch.tensor(float("inf"))]) == 1
    assert first_non_finite([0.5, float("inf")]) == 1 and first_non_finite([]) is None


def test_nan_loss_stops_with_the_step_and_keeps_the_last_checkpoint(tmp_path):
    cfg = resolve(apply_overrides({}, [
        "data.dataset=digits", "data.train_split=train", "data.val_split=null", "model.backbone=mlp",
        "model.hidden=[16,8]", "model.image_size=8", "tasks.ways=3", "tasks.shots=1", "tasks.queries=2",
        "train.steps=20", "train.checkpoint_every=5", "train.log_every=1", "train.progress=false",
        "train.tensorboard=false", "train.report=false"]))
    t = Trainer(cfg, tmp_path / "run")
    real = t.model.learner.loss

    def poisoned(params, buffers, tasks):
        out = real(params, buffers, tasks)
        return LossOutput(out.loss * float("nan") if t.step == 7 else out.loss, out.metrics)

    t.model.learner.loss = poisoned
    with pytest.raises(FloatingPointError, match=r"step 7: the loss is nan; lower optim.lr"):
        t.run()
    tensors, state, _ = load_checkpoint(find_checkpoint(tmp_path / "run"))
    assert state["step"] == 5
    assert all(math.isfinite(float(v.float().abs().sum())) for v in tensors.values())
