"""What the training images looked like, recorded in the checkpoint (`Preprocess.stats`), and what prediction and
evaluation on other images do with it: an image whose background is on the other side of the training images'
(white ink on black where the model saw black on white) is inverted, and images far outside the training
statistics are flagged.

The background of an image is the median of its border pixels (gray level 0..255, before preprocessing); the
polarity is decided per image, and only when the training images share one clear background (digits, characters,
scans), never for photos. Mean and standard deviation are those of the network inputs (after the preprocessing).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["compute_input_stats", "with_input_stats", "border_levels", "InputCheck", "POLARITIES", "NO_STATS"]

POLARITIES = ("auto", "keep")
BORDER = 0.06  # the border read for the background: this fraction of the shorter side, at least one pixel
UNIFORM = 0.8  # an image has a clear background when this share of its border is within TOLERANCE of the median
TOLERANCE = 48
SHARED = 0.9  # the training images share a background when this share of them has it (clear, same side)
FAR = 6.0  # an image is far outside the training images when a statistic is this many of their spreads away
SAMPLE = 4096  # training images measured (a fixed subset of a larger split)
NO_STATS = ("was trained before metassl recorded its training images' statistics: polarity is not checked and "
            "inputs are not compared with the training images (train it again to get both)")


def border_levels(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(background level [M] in 0..255, share of border pixels within TOLERANCE of it [M]) of uint8 images
    [M, C, H, W] (channels averaged)."""
    g = images.float().mean(1)
    h, w = g.shape[-2:]
    b = max(1, round(BORDER * min(h, w)))
    mask = torch.ones(h, w, dtype=torch.bool, device=g.device)
    mask[b:h - b, b:w - b] = False
    px = g[:, mask]
    level = px.median(dim=1).values
    return level, ((px - level[:, None]).abs() <= TOLERANCE).float().mean(1)


def _per_image(images: torch.Tensor, preprocess, chunk: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image, per-channel mean and standard deviation [M, C] of the network inputs."""
    means, stds = [], []
    for s in range(0, images.shape[0], chunk):
        x = preprocess(images[s:s + chunk]).flatten(2)
        means.append(x.mean(2).cpu())
        stds.append(x.std(2, unbiased=False).cpu())
    return torch.cat(means), torch.cat(stds)


def compute_input_stats(images: torch.Tensor, preprocess) -> dict[str, Any] | None:
    """The statistics of training images (uint8 [M, C, H, W]; a fixed subset of SAMPLE when larger) as the model
    sees them after `preprocess`; None for other inputs (vectors, texts)."""
    if images.dtype != torch.uint8 or images.dim() != 4 or not images.shape[0]:
        return None
    if images.shape[0] > SAMPLE:
        keep = torch.randperm(images.shape[0], generator=torch.Generator().manual_seed(0))[:SAMPLE].sort().values
        images = images[keep.to(images.device)]
    level, uniform = border_levels(images)
    background = float(level.median())
    clear = (uniform >= UNIFORM) & ((level - 127.5).abs() >= 64)
    shared = float((clear & ((level - 127.5) * (background - 127.5) > 0)).float().mean())
    m, s = _per_image(images, preprocess)
    var = (s ** 2 + m ** 2).mean(0) - m.mean(0) ** 2  # all pixels: every image has as many
    r = lambda t: [round(float(v), 5) for v in t]  # noqa: E731
    return {"images": int(images.shape[0]), "background": round(background, 2), "background_shared": round(shared, 4),
            "mean": r(m.mean(0)), "std": r(var.clamp_min(0).sqrt()), "image_mean": r(m.mean(0)),
            "image_mean_sd": r(m.std(0, unbiased=False)), "image_std": r(s.mean(0)),
            "image_std_sd": r(s.std(0, unbiased=False))}


def _side(level: float) -> str:
    return "light" if level > 127.5 else "dark"


@dataclass
class InputCheck:
    """Polarity correction (`polarity` "auto": invert images whose background is on the other side; "keep": use
    them as given) and the far-outside test, from a checkpoint's `stats` (None: an old checkpoint, neither)."""

    stats: dict[str, Any] | None
    preprocess: Any
    polarity: str = "auto"

    def __post_init__(self) -> None:
        if self.polarity not in POLARITIES:
            raise ValueError(f"polarity must be one of {', '.join(POLARITIES)}, got {self.polarity!r}")

    @property
    def has_background(self) -> bool:
        """The training images share one clear background, so an image's polarity can be judged."""
        return bool(self.stats) and self.stats.get("background_shared", 0.0) >= SHARED

    def other_side(self, images: torch.Tensor) -> torch.Tensor:
        """[M] bool: images with a clear background on the other side of the training images'."""
        n = images.shape[0]
        if not self.has_background or images.dtype != torch.uint8 or images.dim() != 4 or not n:
            return torch.zeros(n, dtype=torch.bool)
        level, uniform = border_levels(images)
        bg = float(self.stats["background"])
        return ((uniform >= UNIFORM) & ((level - 127.5).abs() >= 32) & ((level - 127.5) * (bg - 127.5) < 0)).cpu()

    def flips(self, images: torch.Tensor) -> torch.Tensor:
        """[M] bool: the images `fix` inverts."""
        if self.polarity != "auto":
            return torch.zeros(images.shape[0], dtype=torch.bool)
        return self.other_side(images)

    def fix(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 images with those whose background is on the other side inverted (255 - x)."""
        f = self.flips(images)
        if not bool(f.any()):
            return images
        out = images.clone()
        idx = f.nonzero().flatten().to(images.device)
        out[idx] = 255 - out[idx]
        return out

    def warnings(self, images: torch.Tensor) -> list[str | None]:
        """For each uint8 image (as given: `fix` is applied here), why it is far outside the training images, or
        None."""
        n = images.shape[0]
        st = self.stats
        if not st or images.dtype != torch.uint8 or images.dim() != 4 or not n:
            return [None] * n
        kept = self.other_side(images) & ~self.flips(images)
        m, s = _per_image(self.fix(images), self.preprocess)
        out: list[str | None] = []
        floor = [0.05 * max(v, 1e-3) for v in st["std"]]
        for i in range(n):
            why = []
            if bool(kept[i]):
                bg = float(st["background"])
                why.append(f"background {_side(255 - bg)}, the training images' {_side(bg)} (polarity kept)")
            for c in range(m.shape[1]):
                ch = f" (channel {c})" if m.shape[1] > 1 else ""
                for name, v, mu, sd in (("mean", m[i, c], st["image_mean"][c], st["image_mean_sd"][c]),
                                        ("contrast", s[i, c], st["image_std"][c], st["image_std_sd"][c])):
                    if abs(float(v) - mu) > FAR * max(sd, floor[c]):
                        why.append(f"{name}{ch} {float(v):.2f}, training {mu:.2f} ± {sd:.2f}")
            out.append("; ".join(dict.fromkeys(why)) or None)
        return out


def with_input_stats(split) -> Any:
    """The split's preprocessing with its images' statistics recorded (unchanged for inputs that are not images)."""
    import dataclasses

    images = getattr(split, "images", None)
    stats = compute_input_stats(images, split.preprocess) if torch.is_tensor(images) else None
    return split.preprocess if stats is None else dataclasses.replace(split.preprocess, stats=stats)
