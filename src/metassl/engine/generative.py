"""Generative runs (learners with `generative = True`: `vae`, `gan`): their generator as a function of latents, for
`metassl sample`, the report page and `tasks.source: lasium` (the trainer passes `load_generator` in the task
source's context; the data layer never loads a model itself).

The generative learners model the network's inputs (the data set's preprocessing applied); `Generator.decode`
maps what they generate back to pixel values in [0, 1], as stored images are before preprocessing (the inverse
of `Preprocess`: x * std + mean, then 1 - x for data sets stored inverted such as Omniglot), clamped to [0, 1].
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..data.episodic import Preprocess
from ..errors import ConfigError
from .build import Model, load_model

__all__ = ["Generator", "load_generator", "unpreprocess", "image_grid", "save_grid", "sample_grid",
           "interpolation_strip"]


def unpreprocess(x: torch.Tensor, pre: Preprocess) -> torch.Tensor:
    """Network inputs [..., C, H, W] -> pixel values in [0, 1] (the inverse of `pre`, clamped)."""
    x = x.float()
    if pre.mean:
        shape = (1,) * (x.dim() - 3) + (-1, 1, 1)
        x = x * torch.tensor(pre.std, device=x.device).view(shape) + torch.tensor(pre.mean, device=x.device).view(shape)
    if pre.invert:
        x = 1.0 - x
    return x.clamp(0.0, 1.0)


@dataclass
class Generator:
    """A trained generative run: `decode(z)` -> images [B, C, H, W] in [0, 1] from latents z [B, latent_dim]."""

    model: Model
    run: str
    latent_dim: int
    image_shape: tuple[int, ...]

    @torch.no_grad()
    def decode(self, z: torch.Tensor, batch_size: int = 4096) -> torch.Tensor:
        m = self.model
        m.train(False)
        outs = [m.learner.generate(m.params, m.buffers, part) for part in z.split(batch_size)]
        return unpreprocess(torch.cat(outs), m.preprocess)

    def prior(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        dev = next(iter(self.model.params.values())).device
        return torch.randn(n, self.latent_dim, generator=generator, device=dev)


def load_generator(run: str | Path, device: torch.device | str = "cpu", key: str = "tasks.generator_from"
                   ) -> Generator:
    """The generator of a run of a generative learner, or a ConfigError naming `key` when the run is not one."""
    from .checkpoint import read_run_learner

    learner = read_run_learner(run)
    model, _ = load_model(run, device)
    if not getattr(model.learner, "generative", False):
        raise ConfigError(f"{key}={run} is a {learner} run, which generates no images; give a run of a generative "
                          f"model (learner.name=vae or gan, e.g. `metassl train omniglot/vae`)")
    return Generator(model, str(run), int(model.learner.latent_dim), tuple(model.image_shape))


def image_grid(images: torch.Tensor, cols: int, pad: int = 2) -> torch.Tensor:
    """Images [N, C, H, W] in [0, 1] -> one uint8 image [H', W', C] of `cols` columns with white padding."""
    n, c, h, w = images.shape
    rows = (n + cols - 1) // cols
    grid = torch.ones(c, rows * (h + pad) + pad, cols * (w + pad) + pad)
    for i, img in enumerate(images.float().cpu()):
        r, k = divmod(i, cols)
        grid[:, pad + r * (h + pad): pad + r * (h + pad) + h, pad + k * (w + pad): pad + k * (w + pad) + w] = img
    return (grid.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0)


def save_grid(images: torch.Tensor, cols: int, path: str | Path, scale: int = 2) -> Path:
    """Write images [N, C, H, W] in [0, 1] as one PNG grid (each pixel `scale` x `scale`)."""
    from PIL import Image

    arr = image_grid(images, cols).numpy()
    img = Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr)
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path


def sample_grid(gen: Generator, n: int, seed: int = 0) -> torch.Tensor:
    """n images from latents drawn from the prior with `seed` (the same images for the same seed)."""
    g = torch.Generator(device=next(iter(gen.model.params.values())).device).manual_seed(seed)
    return gen.decode(gen.prior(n, g))


def interpolation_strip(gen: Generator, rows: int = 4, steps: int = 10, seed: int = 1) -> torch.Tensor:
    """`rows` linear interpolations of `steps` images each between pairs of prior latents: [rows * steps, C, H, W]."""
    g = torch.Generator(device=next(iter(gen.model.params.values())).device).manual_seed(seed)
    a, b = gen.prior(rows, g), gen.prior(rows, g)
    t = torch.linspace(0, 1, steps, device=a.device).view(1, steps, 1)
    z = (a.unsqueeze(1) * (1 - t) + b.unsqueeze(1) * t).reshape(rows * steps, -1)
    return gen.decode(z)


def generative_figures(model: Model, folder: str | Path, n: int = 64, seed: int = 0) -> list[Path]:
    """For the report page of a generative run: a grid of `n` samples and an interpolation strip, as PNGs."""
    gen = Generator(model, "", int(model.learner.latent_dim), tuple(model.image_shape))
    folder = Path(folder)
    return [save_grid(sample_grid(gen, n, seed), 8, folder / "samples.png"),
            save_grid(interpolation_strip(gen), 10, folder / "interpolation.png")]
