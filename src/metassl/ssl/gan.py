"""GAN: a DCGAN-style generative adversarial network trained without labels (Goodfellow et al. 2014; Radford, Metz &
Chintala, "Unsupervised Representation Learning with Deep Convolutional GANs", ICLR 2016), with a stable loss:
the non-saturating loss of Goodfellow et al. or the hinge loss (Lim & Ye 2017; Miyato et al. 2018), and spectral
normalization of the discriminator as an option (Miyato, Kataoka, Koyama & Yoshida, ICLR 2018).

- Discriminator: the run's backbone (Conv4 by default) and a linear `critic` head to one logit; its backbone is
  the run's encoder, so few-shot evaluation, kNN and `init_from` use the discriminator's features.
- Generator: `ConvDecoder` (the VAE's decoder: linear layer to a small map, stride-2 transposed convolutions with
  BatchNorm and ReLU) from z ~ N(0, I) of `latent_dim`, with a sigmoid output (images in [0, 1], e.g. Omniglot's
  ink after preprocessing; `output: linear` for normalized inputs).
- Losses (`gan_losses`, d_real / d_fake the logits of real / generated images):
  non-saturating: L_D = softplus(-d_real) + softplus(d_fake),  L_G = softplus(-d_fake);
  hinge:          L_D = relu(1 - d_real) + relu(1 + d_fake),   L_G = -d_fake  (means over the batch).
- Two optimizers in the engine's contract: the learner declares two parameter groups (`param_groups`: the
  discriminator = `encoder.*` + `learner.critic.*`, the generator = `learner.generator.*`), each with its own
  learning-rate scale and Adam betas (DCGAN: 0.5, 0.999), and returns one loss per group
  (`LossOutput.group_losses`); the engine back-propagates each into its own group only, from one forward pass in
  which real and generated images go through the discriminator together.
- Spectral normalization (`spectral_norm: true`), functional: every discriminator weight (ndim >= 2) is divided by
  its largest singular value, estimated by one power iteration per step from a persistent vector u (a buffer
  `learner.sn.<name>`, updated after the step like an EMA target), as torch.nn.utils.spectral_norm does.

Deviations: the discriminator and generator are updated simultaneously from the same step's forward pass (both
gradients at the current parameters), not alternately (DCGAN's reference code updates D, then G with the new D);
the discriminator is the run's backbone (Conv4: BatchNorm, ReLU, max-pooling), not DCGAN's strided LeakyReLU network.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..config import option
from ..learners.base import ENCODER, LearnerSpec, ParamGroup, register_learner, sub
from .base import SSLConfig, SSLLearner, fp32
from .vae import ConvDecoder

SN = "learner.sn."


@dataclass
class GANConfig(SSLConfig):
    name: str = "gan"
    collapse_threshold: float = option(0.0, range=(0.0, 1.0), help="warn when embedding_std x sqrt(D) of the "
                                       "discriminator's features of real images falls below this (0: off)")
    latent_dim: int = option(64, range=(1, 4096), help="size of the generator's input z ~ N(0, I)")
    loss: str = option("nonsaturating", choices=("nonsaturating", "hinge"), help="the adversarial loss")
    spectral_norm: bool = option(False, help="divide every discriminator weight by its spectral norm (one power "
                                             "iteration per step)")
    generator_width: int = option(64, range=(1, 4096), help="channels of the generator's last hidden map")
    output: str = option("sigmoid", choices=("sigmoid", "linear"), help="generator output: sigmoid (inputs in "
                         "[0, 1]) or linear (normalized inputs)")
    d_lr_scale: float = option(1.0, range=(0.0, 100.0), help="discriminator learning rate = this x optim.lr")
    g_lr_scale: float = option(1.0, range=(0.0, 100.0), help="generator learning rate = this x optim.lr")
    beta1: float = option(0.5, range=(0.0, 1.0), help="Adam's beta1 for both networks (DCGAN: 0.5)")
    beta2: float = option(0.999, range=(0.0, 1.0), help="Adam's beta2 for both networks")


def gan_losses(d_real: torch.Tensor, d_fake: torch.Tensor, kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(discriminator loss, generator loss) from the discriminator's logits of real and generated images."""
    if kind == "hinge":
        return F.relu(1.0 - d_real).mean() + F.relu(1.0 + d_fake).mean(), -d_fake.mean()
    return F.softplus(-d_real).mean() + F.softplus(d_fake).mean(), F.softplus(-d_fake).mean()


def spectral_normalize(w: torch.Tensor, u: torch.Tensor, eps: float = 1e-12) -> tuple[torch.Tensor, torch.Tensor]:
    """(w / sigma, the new u): sigma = u'^T W v estimated by one power iteration from u (W = w as [out, -1]);
    u and v carry no gradient, as in torch.nn.utils.spectral_norm."""
    mat = w.reshape(w.shape[0], -1)
    with torch.no_grad():
        v = F.normalize(mat.t() @ u, dim=0, eps=eps)
        u = F.normalize(mat @ v, dim=0, eps=eps)
    sigma = torch.dot(u, mat @ v)
    return w / sigma, u


class GAN(SSLLearner):
    global_loss = False
    views_required = None  # every view is a real image (the presets use one, unaugmented)
    min_batch = 1
    generative = True

    @property
    def latent_dim(self) -> int:
        return self.config.latent_dim

    def build_heads(self, feature_dim):
        c = self.config
        return {"critic": nn.Linear(feature_dim, 1),
                "generator": ConvDecoder(c.latent_dim, self.options.input_shape, c.generator_width)}

    def param_groups(self):
        c = self.config
        betas = (("betas", (c.beta1, c.beta2)),)
        return (ParamGroup("discriminator", (ENCODER, "learner.critic."), c.d_lr_scale, betas),
                ParamGroup("generator", ("learner.generator.",), c.g_lr_scale, betas))

    def init_buffers(self, params, buffers):
        out = super().init_buffers(params, buffers)
        if self.config.spectral_norm:
            g = torch.Generator().manual_seed(0)
            for k in self.sn_names(params):
                u = torch.randn(params[k].shape[0], generator=g)
                out[SN + k] = F.normalize(u, dim=0).to(params[k].device)
        return out

    @staticmethod
    def sn_names(params) -> list[str]:
        return [k for k, v in params.items() if v.dim() >= 2 and (k.startswith(ENCODER) or
                                                                   k.startswith("learner.critic."))]

    def discriminator_tensors(self, params, buffers) -> tuple[dict, dict[str, torch.Tensor]]:
        """The discriminator's tensors (spectrally normalized when asked) and the new power-iteration vectors."""
        tensors = {**params, **buffers}
        new_u: dict[str, torch.Tensor] = {}
        if self.config.spectral_norm:
            for k in self.sn_names(params):
                tensors[k], new_u[SN + k] = spectral_normalize(params[k], buffers[SN + k])
        return tensors, new_u

    def discriminate(self, tensors, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits [B], features [B, D]) of images [B, C, H, W]."""
        h = self.encode_with(sub(tensors, ENCODER), images)
        return self.head("critic", tensors, h).squeeze(-1), h

    def generate(self, params, buffers, z: torch.Tensor) -> torch.Tensor:
        """Images [B, C, H, W] in the network's input space from latents z [B, latent_dim]."""
        out = self.head("generator", {**params, **buffers}, z)
        return torch.sigmoid(out) if self.config.output == "sigmoid" else out

    def loss(self, params, buffers, batch):
        views = batch.views
        self.check_batch(views)
        real = views.reshape(-1, *views.shape[-3:])
        b = real.shape[0]
        z = torch.randn(b, self.config.latent_dim, device=real.device)
        fake = self.generate(params, buffers, z)
        tensors, new_u = self.discriminator_tensors(params, buffers)
        logits, h = self.discriminate(tensors, torch.cat([real, fake.to(real.dtype)]))
        d_real, d_fake = logits[:b], logits[b:]
        with fp32(logits):
            d_loss, g_loss = gan_losses(d_real.float(), d_fake.float(), self.config.loss)
        metrics = {"d_loss": d_loss.detach(), "g_loss": g_loss.detach(),
                   "d_real": d_real.detach().float().mean(), "d_fake": d_fake.detach().float().mean()}
        out = self.output((d_loss + g_loss).detach(), metrics, h[:b].detach(), new_u)
        out.group_losses = {"discriminator": d_loss, "generator": g_loss}
        return out

    def update(self, params, buffers, state, step, total_steps):
        return {k: v for k, v in state.items() if k.startswith(SN)}


register_learner(LearnerSpec(
    "gan", GANConfig, GAN,
    "DCGAN-style GAN: backbone discriminator, transposed-conv generator, non-saturating or hinge loss, optional "
    "spectral norm; two optimizers (generative)",
    default_source="views"))
