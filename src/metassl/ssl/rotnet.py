"""RotNet (Gidaris, Singh & Komodakis, "Unsupervised Representation Learning by Predicting Image Rotations",
ICLR 2018).

Every image of the batch is shown at 0, 90, 180 and 270 degrees (all four rotations in one batch, as the paper
found best) and a classifier on the encoder's features predicts which (labels 0..3; `losses.rotate4`). The views
source may give several augmented views (all are used as images; the preset uses one view with crop + flip only).
Do not combine with `augment.rotate90`, which would make the labels ambiguous. Images must be square.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..config import option
from ..learners.base import LearnerSpec, register_learner
from .base import SSLConfig, SSLLearner, fp32
from .heads import MLPHead
from .losses import rotate4, rotation_loss


@dataclass
class RotNetConfig(SSLConfig):
    name: str = "rotnet"
    head_hidden: int = option(0, range=(0, None), help="hidden width of the rotation classifier; 0: linear")


class RotNet(SSLLearner):
    global_loss = False  # a mean over images: each process's share of it, no negatives needed
    views_required = None
    min_batch = 1

    def build_heads(self, feature_dim):
        h = self.config.head_hidden
        return {"classifier": MLPHead([feature_dim, h, 4] if h else [feature_dim, 4])}

    def loss(self, params, buffers, batch):
        views = batch.views
        self.check_batch(views)
        x, labels = rotate4(views.reshape(-1, *views.shape[-3:]))
        f = self.embed(params, buffers, x)
        logits = self.head("classifier", {**params, **buffers}, f)
        with fp32(logits):
            loss, acc = rotation_loss(logits, labels)
        return self.output(loss, {"accuracy": acc}, f)


register_learner(LearnerSpec(
    "rotnet", RotNetConfig, RotNet,
    'pretext task: predict which of 4 rotations (0/90/180/270 degrees) an image was given',
    default_source="views"))
