"""VAE: a convolutional variational autoencoder trained without labels (Kingma & Welling, "Auto-Encoding Variational
Bayes", ICLR 2014), with the beta-VAE weight on the KL term as an option (Higgins et al., ICLR 2017).

The encoder is the run's backbone (Conv4 by default): its features go through a linear `posterior` head to the mean
and log-variance of q(z | x) = N(mu, diag(exp(logvar))), a `latent_dim`-dimensional Gaussian. One sample
z = mu + exp(logvar / 2) * eps (eps from torch's generator, which the engine seeds and checkpoints) is decoded by
a DCGAN-style decoder (`ConvDecoder`: a linear layer to a small map, then stride-2 transposed convolutions with
BatchNorm and ReLU up to the image size, centre-cropped when the size is not a power-of-2 multiple) into the
parameters of p(x | z): Bernoulli logits per pixel (`likelihood: bernoulli`, for inputs in [0, 1] such as
Omniglot's ink) or a Gaussian mean with fixed std `sigma` (`likelihood: gaussian`, for normalized inputs). The loss
per image, averaged over the batch, is
    -ELBO_beta = E_q[-log p(x | z)] + beta * KL(q(z | x) || N(0, I)),
the reconstruction term estimated with the one sample and the KL in closed form (`vae_terms`). With beta = 1 it is
the negative evidence lower bound in nats per image (logged as `neg_elbo`). The model works on the network's
inputs (the data set's preprocessing applied), so its samples are mapped back to pixels by the inverse
preprocessing (`engine.generative`). Few-shot evaluation, kNN and `init_from` use the backbone's features, as for
every SSL learner; `metassl sample RUN` decodes latents drawn from the prior, and `tasks.source: lasium` draws
tasks from the decoder. Deviation: the decoder width and depth follow the image size, not a fixed paper network.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ConfigError, option
from ..learners.base import LearnerSpec, register_learner
from .base import SSLConfig, SSLLearner, fp32


@dataclass
class VAEConfig(SSLConfig):
    name: str = "vae"
    collapse_threshold: float = option(0.0, range=(0.0, 1.0), help="warn when embedding_std x sqrt(D) of the "
                                       "posterior means falls below this (0: off)")
    latent_dim: int = option(32, range=(1, 4096), help="size of the latent z")
    beta: float = option(1.0, range=(0.0, 1000.0), help="weight of the KL term (1: the ELBO; beta-VAE: > 1)")
    likelihood: str = option("gaussian", choices=("bernoulli", "gaussian"),
                             help="p(x | z): Gaussian with std sigma (any inputs), or Bernoulli per pixel (inputs in "
                                  "[0, 1], e.g. Omniglot's ink: the omniglot/vae preset)")
    sigma: float = option(1.0, range=(1e-4, 100.0), help="std of the Gaussian likelihood")
    decoder_width: int = option(64, range=(1, 4096), help="channels of the decoder's last hidden map (doubled per "
                                "earlier upsampling)")


def decoder_plan(size: int) -> tuple[int, int]:
    """(upsamplings, start side) of a decoder for images of side `size`: s0 * 2**n >= size with s0 >= 4 where
    possible (28 -> 7 x 4; 32 -> 4 x 8; 84 -> 6 x 16, cropped to 84)."""
    n = max(1, int(math.floor(math.log2(max(size / 4.0, 2.0)))))
    return n, math.ceil(size / 2 ** n)


class ConvDecoder(nn.Module):
    """Latents [B, L] -> images [B, C, H, W] (logits or values, no output activation): DCGAN's generator shape."""

    def __init__(self, latent_dim: int, image_shape: tuple[int, ...], width: int = 64):
        super().__init__()
        if len(image_shape) != 3:
            raise ConfigError(f"generative models make images [C, H, W]; the data set's inputs have shape "
                              f"{list(image_shape)}")
        c, h, w = image_shape
        self.image_shape = (c, h, w)
        n, s0 = decoder_plan(max(h, w))
        self.start = (width * 2 ** (n - 1), s0)
        self.fc = nn.Linear(latent_dim, self.start[0] * s0 * s0)
        self.bn0 = nn.BatchNorm2d(self.start[0])
        layers: list[nn.Module] = []
        ch = self.start[0]
        for i in range(n):
            last = i == n - 1
            out = c if last else ch // 2
            layers.append(nn.ConvTranspose2d(ch, out, 4, stride=2, padding=1))
            if not last:
                layers += [nn.BatchNorm2d(out), nn.ReLU()]
            ch = out
        self.up = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        ch, s0 = self.start
        x = F.relu(self.bn0(self.fc(z).view(-1, ch, s0, s0)))
        x = self.up(x)
        _, h, w = self.image_shape
        top, left = (x.shape[-2] - h) // 2, (x.shape[-1] - w) // 2
        return x[..., top:top + h, left:left + w]


def vae_terms(out: torch.Tensor, x: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor, likelihood: str,
              sigma: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image: (reconstruction -log p(x | z) [B], KL(N(mu, exp(logvar)) || N(0, I)) [B]), in nats. `out`: the
    decoder's Bernoulli logits or Gaussian means, shaped as x [B, C, H, W]."""
    if likelihood == "bernoulli":
        rec = F.binary_cross_entropy_with_logits(out, x, reduction="none").flatten(1).sum(1)
    else:
        d = x[0].numel()
        rec = 0.5 * (x - out).pow(2).flatten(1).sum(1) / sigma ** 2 + 0.5 * d * math.log(2 * math.pi * sigma ** 2)
    kl = 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(1)
    return rec, kl


class VAE(SSLLearner):
    global_loss = False  # a mean over images: each process's share of it
    views_required = None  # every view is an image to model (the presets use one, unaugmented)
    min_batch = 1
    #: the learner generates images from latents (`generate`; `engine.generative`, `tasks.source: lasium`)
    generative = True

    @property
    def latent_dim(self) -> int:
        return self.config.latent_dim

    def build_heads(self, feature_dim):
        c = self.config
        return {"posterior": nn.Linear(feature_dim, 2 * c.latent_dim),
                "decoder": ConvDecoder(c.latent_dim, self.options.input_shape, c.decoder_width)}

    def generate(self, params, buffers, z: torch.Tensor) -> torch.Tensor:
        """Images [B, C, H, W] in the network's input space decoded from latents z [B, latent_dim]: the Bernoulli
        means (sigmoid of the logits) or the Gaussian means."""
        out = self.head("decoder", {**params, **buffers}, z)
        return torch.sigmoid(out) if self.config.likelihood == "bernoulli" else out

    def loss(self, params, buffers, batch):
        views = batch.views
        self.check_batch(views)
        x = views.reshape(-1, *views.shape[-3:])
        c = self.config
        if c.likelihood == "bernoulli" and bool((x.min() < 0) | (x.max() > 1)):
            raise ConfigError(f"learner.likelihood=bernoulli models inputs in [0, 1], but this data set's "
                              f"preprocessed images range over [{float(x.min()):.2f}, {float(x.max()):.2f}]: set "
                              f"learner.likelihood=gaussian")
        tensors = {**params, **buffers}
        h = self.embed(params, buffers, x)
        mu, logvar = self.head("posterior", tensors, h).chunk(2, dim=-1)
        z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
        out = self.head("decoder", tensors, z)
        with fp32(out):
            rec, kl = vae_terms(out.float(), x.float(), mu.float(), logvar.float(), c.likelihood, c.sigma)
            loss = (rec + c.beta * kl).mean()
        return self.output(loss, {"reconstruction": rec.mean().detach(), "kl": kl.mean().detach(),
                                  "neg_elbo": (rec + kl).mean().detach()}, mu.detach())


register_learner(LearnerSpec(
    "vae", VAEConfig, VAE,
    "variational autoencoder: backbone encoder, DCGAN-style decoder, ELBO with a beta-weighted KL (generative)",
    default_source="views"))
