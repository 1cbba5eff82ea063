"""BYOL (Grill et al., "Bootstrap Your Own Latent: A New Approach to Self-Supervised Learning", NeurIPS 2020).

An online network (encoder, projector, predictor) predicts the projection that a target network (an exponential
moving average of the online encoder and projector: `learner.target.*` buffers) makes of the other view. Loss
(paper, eq. 2 and its symmetrization): L = ||q(z1)/|q(z1)| - z2'/|z2'|||^2 + ||q(z2)/|q(z2)| - z1'/|z1'|||^2, each
term averaged over the batch, with no gradient into the target (z'). After each step the target moves towards the
online weights with tau_k = 1 - (1 - tau_base) (cos(pi k / K) + 1) / 2 (k = step, K = total steps): from tau_base
(0.996) to 1 at the end of training.

Note on scale: this loss is 4 (1 + lightly's 0.5 (D(p1, z2) + D(p2, z1))), D = -cos; with SGD, lr / 4 and weight
decay x 4 reproduce lightly's updates exactly (see configs/cifar10/byol.yaml).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from ..config import option
from ..data.augment import AugmentSpec
from ..learners.base import LearnerSpec, register_learner
from .base import SSLConfig, SSLLearner, fp32, momentum_cosine
from .heads import MLPHead, mlp_dims
from .losses import normalized_mse


@dataclass
class BYOLConfig(SSLConfig):
    name: str = "byol"
    tau_base: float = option(0.996, range=(0.0, 1.0), help="target EMA decay at step 0 (cosine to 1); lightly "
                                                            "CIFAR-10: 0.99")
    proj_hidden: int = option(4096, range=(1, None), help="projector hidden width (lightly CIFAR-10: 1024)")
    proj_dim: int = option(256, range=(1, None))
    proj_layers: int = option(2, range=(1, 8))
    pred_hidden: int = option(4096, range=(1, None), help="predictor hidden width (lightly CIFAR-10: 1024)")


class BYOL(SSLLearner):
    target_heads = ("projector",)
    min_batch_reason = "BatchNorm in the projector needs batch statistics"

    def build_heads(self, feature_dim):
        c = self.config
        return {"projector": MLPHead(mlp_dims(feature_dim, c.proj_hidden, c.proj_dim, c.proj_layers)),
                "predictor": MLPHead([c.proj_dim, c.pred_hidden, c.proj_dim])}

    def loss(self, params, buffers, batch):
        z, p = self.project_views(params, buffers, batch, "projector", "predictor")
        zt = self.target_forward(buffers, batch.views)  # [2, B, P], no gradient
        with fp32(p):
            loss = normalized_mse(p[0], zt[1]) + normalized_mse(p[1], zt[0])
        return self.output(loss, {}, z[0])

    def update(self, params, buffers, state, step, total_steps):
        return self.ema_update(params, buffers, momentum_cosine(self.config.tau_base, step, total_steps))


def augment_views(spec: AugmentSpec) -> AugmentSpec:
    """BYOL's asymmetric views (Grill et al. 2020, table 6) on the colour recipes: view 1 always blurred, never
    solarized; view 2 blurred with probability 0.1, solarized with 0.2; colour jitter (0.4, 0.4, 0.2, 0.1). Without
    blur in the preset (32 px, as lightly's CIFAR-10 benchmark) the solarization asymmetry stays; presets without
    colour jitter (characters) are unchanged."""
    if not spec.jitter:
        return spec
    return replace(spec, preset=f"{spec.preset}/byol", jitter_strength=(0.4, 0.4, 0.2, 0.1), solarize=(0.0, 0.2),
                   blur=(1.0, 0.1) if any(spec.blur) else spec.blur)


register_learner(LearnerSpec(
    "byol", BYOLConfig, BYOL,
    "non-contrastive: predict an EMA target network's projection of the other view",
    default_source="views", augment=augment_views))
