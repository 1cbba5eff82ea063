"""Data augmentation on the device, batched: every view of every image in one call, with independent random
parameters per image, drawn from one `torch.Generator` (so a seed reproduces the views exactly on a given device).

`augment(images, spec, views, generator)` takes uint8 (0..255) or float ([0, 1]) images [B, C, H, W] and returns
float views [V, B, C, H, W] in [0, 1]. The V*B images are processed as one batch; there is no per-image Python and no
PIL. The operations, in this order (the order of SimCLR's and BYOL's pipelines):

1. Geometry, as ONE `grid_sample` (bilinear, border padding) with a per-image affine map that composes
   - random resized crop (torchvision's `RandomResizedCrop` parameters: area fraction ~ U(crop_scale), log aspect
     ratio ~ U(log crop_ratio), 10 tries per image vectorized, the first that fits is used, else torchvision's
     centre-crop fallback; box position uniform; sub-pixel boxes, since the sampling is bilinear anyway),
   - horizontal flip (probability `flip`),
   - random 90-degree rotation (probability `rotate90`, k uniform in 1..3; square images only),
   - a small random rotation of up to `degrees` and translation of up to `translate` (x the side) (Omniglot/MNIST).
   The crop is resampled to the input size (crops only ever enlarge, so no antialiasing is needed).
2. Colour jitter (probability `jitter`): brightness, contrast, saturation and hue factors drawn per image as in
   torchvision's `ColorJitter` (b ~ U(1-s_b, 1+s_b), ..., hue shift ~ U(-s_h, s_h), hue through RGB -> HSV -> RGB in
   torch), clamped to [0, 1] after each. `jitter_order="random"` (default) applies the four in an independent random
   order per image, as torchvision, SimCLR and BYOL do: each of the 4 stages computes the 4 operations and keeps, per
   image, the one its permutation names (16 cheap elementwise operations instead of 4); `"fixed"` applies brightness,
   contrast, saturation, hue in that order (faster, slightly less diverse).
3. Random grayscale (probability `grayscale`; ITU-R 601 luma 0.299 R + 0.587 G + 0.114 B, as torchvision).
4. Gaussian blur (probability per view `blur`): sigma ~ U(blur_sigma) per image, kernel side = `blur_kernel` x image
   side (odd, >= 3; SimCLR: 10%), separable depthwise convolution with reflect padding.
5. Solarization (probability per view `solarize`): pixels >= 0.5 become 1 - x (BYOL).

`blur` and `solarize` are per-view tuples (cycled when there are more views), for BYOL's asymmetric views. Grayscale
images (C = 1) get brightness and contrast only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F

from ..config import ConfigError

__all__ = ["AugmentSpec", "PRESETS", "augment", "resolve_augment", "preset_for_dataset", "weak_view"]


@dataclass(frozen=True)
class AugmentSpec:
    name: str = "none"
    crop_scale: tuple[float, float] | None = None  # None: no random resized crop
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip: float = 0.0
    jitter: float = 0.0
    jitter_strength: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1)  # brightness, contrast, saturation, hue
    jitter_order: str = "random"  # or "fixed"
    grayscale: float = 0.0
    blur: tuple[float, ...] = (0.0,)  # per view, cycled
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    blur_kernel: float = 0.1  # kernel side as a fraction of the image side
    solarize: tuple[float, ...] = (0.0,)  # per view, cycled
    rotate90: float = 0.0
    degrees: float = 0.0
    translate: float = 0.0

    @property
    def geometric(self) -> bool:
        return (self.crop_scale is not None or self.flip > 0 or self.rotate90 > 0 or self.degrees > 0
                or self.translate > 0)


_SIMCLR_CIFAR = AugmentSpec(  # SimCLR's CIFAR-10 recipe (colour strength s = 0.5), lightly's CIFAR-10 benchmark
    name="cifar10", crop_scale=(0.08, 1.0), flip=0.5, jitter=0.8, jitter_strength=(0.4, 0.4, 0.4, 0.1),
    grayscale=0.2)
_SIMCLR_IMAGENET = AugmentSpec(  # SimCLR's ImageNet recipe (s = 1.0) with blur, kernel 10% of the side
    name="generic", crop_scale=(0.08, 1.0), flip=0.5, jitter=0.8, jitter_strength=(0.8, 0.8, 0.8, 0.2),
    grayscale=0.2, blur=(0.5,))
_CHARACTERS = AugmentSpec(  # handwritten characters: no colour, no flips (they change the character)
    name="characters", crop_scale=(0.6, 1.0), crop_ratio=(0.8, 1.25), degrees=10.0, translate=0.05)

PRESETS: dict[str, AugmentSpec] = {
    "cifar10": _SIMCLR_CIFAR,
    "generic": _SIMCLR_IMAGENET,
    "omniglot": replace(_CHARACTERS, name="omniglot"),
    "mnist": replace(_CHARACTERS, name="mnist"),
    "none": AugmentSpec(),
}
# BYOL's asymmetric views (Grill et al. 2020, table 6): view 1 always blurred, never solarized; view 2 blurred with
# probability 0.1, solarized with 0.2; colour jitter (0.4, 0.4, 0.2, 0.1). At 32 px there is no blur (as in lightly's
# CIFAR-10 benchmark), the solarization asymmetry stays.
METHOD_PRESETS: dict[str, dict[str, AugmentSpec]] = {
    "byol": {
        "cifar10": replace(_SIMCLR_CIFAR, name="cifar10/byol", jitter_strength=(0.4, 0.4, 0.2, 0.1),
                           solarize=(0.0, 0.2)),
        "generic": replace(_SIMCLR_IMAGENET, name="generic/byol", jitter_strength=(0.4, 0.4, 0.2, 0.1),
                           blur=(1.0, 0.1), solarize=(0.0, 0.2)),
    },
    # PsCo's code (Jang et al. 2023): strong view = SimCLR-style crop 0.2-1 + flip + colour; on Omniglot crop + flip
    "psco": {
        "omniglot": AugmentSpec(name="omniglot/psco", crop_scale=(0.2, 1.0), flip=0.5),
        "cifar10": replace(_SIMCLR_CIFAR, name="cifar10/psco", crop_scale=(0.2, 1.0)),
        "generic": replace(_SIMCLR_IMAGENET, name="generic/psco", crop_scale=(0.2, 1.0)),
    },
}


def weak_view(spec: AugmentSpec) -> AugmentSpec:
    """The geometric part of `spec` only (no colour jitter, grayscale, blur or solarization): the weak view of
    methods with asymmetric views (PsCo's momentum network)."""
    return replace(spec, name=f"{spec.name}/weak", jitter=0.0, grayscale=0.0, blur=(0.0,), solarize=(0.0,))


# `augment.preset: auto` by data set name; anything not listed gets the generic (ImageNet-like) recipe
AUTO = {"cifar10": "cifar10", "cifarfs": "cifar10", "cifar_fs": "cifar10", "fc100": "cifar10", "omniglot": "omniglot",
        "mnist": "mnist", "digits": "mnist"}


def preset_for_dataset(dataset: str) -> str:
    return AUTO.get(dataset.split("/")[0].lower(), "generic")


def _pair(value: Any, key: str, lo: float, hi: float | None) -> tuple[float, float]:
    if len(value) != 2 or not (lo <= value[0] <= value[1]) or (hi is not None and value[1] > hi):
        raise ConfigError(f"{key} must be two numbers [low, high] with {lo} <= low <= high"
                          f"{f' <= {hi}' if hi is not None else ''}, got {list(value)}")
    return float(value[0]), float(value[1])


def resolve_augment(aug_cfg: Any | None, dataset: str, method: str | None = None) -> AugmentSpec:
    """The augmentation of a run: the preset (`augment.preset`, or by data set when `auto`; BYOL's asymmetric variant
    of the cifar10/generic recipes when the learner is byol), then every `augment.*` key that is set overrides it."""
    name = getattr(aug_cfg, "preset", "auto") if aug_cfg is not None else "auto"
    if name == "auto":
        name = preset_for_dataset(dataset)
    if name not in PRESETS:
        raise ConfigError(f"augment.preset must be one of auto, {', '.join(PRESETS)}; got {name!r}")
    spec = METHOD_PRESETS.get(method or "", {}).get(name, PRESETS[name])
    if aug_cfg is None:
        return spec
    changes: dict[str, Any] = {}
    if aug_cfg.crop_scale is not None:
        changes["crop_scale"] = _pair(aug_cfg.crop_scale, "augment.crop_scale", 1e-6, 1.0)
    if aug_cfg.crop_ratio is not None:
        changes["crop_ratio"] = _pair(aug_cfg.crop_ratio, "augment.crop_ratio", 1e-3, None)
        if changes["crop_ratio"][0] <= 0:
            raise ConfigError("augment.crop_ratio must be positive")
    if aug_cfg.jitter_strength is not None:
        js = list(aug_cfg.jitter_strength)
        if len(js) != 4 or any(v < 0 for v in js) or js[3] > 0.5:
            raise ConfigError(f"augment.jitter_strength must be four numbers [brightness, contrast, saturation, hue] "
                              f">= 0 with hue <= 0.5, got {js}")
        changes["jitter_strength"] = tuple(float(v) for v in js)
    for key in ("flip", "jitter", "grayscale", "rotate90"):
        v = getattr(aug_cfg, key)
        if v is not None:
            changes[key] = float(v)
    for key in ("blur", "solarize"):  # one probability for every view
        v = getattr(aug_cfg, key)
        if v is not None:
            changes[key] = (float(v),)
    return replace(spec, **changes) if changes else spec


# ---------------------------------------------------------------------------------------------------------------
# the operations (float images [N, C, H, W] in [0, 1]; per-image parameters as tensors [N])


def _per_view(values: tuple[float, ...], views: int, batch: int, device) -> torch.Tensor:
    v = [values[i % len(values)] for i in range(views)]
    return torch.tensor(v, device=device, dtype=torch.float32).repeat_interleave(batch)


def _crop_boxes(n: int, h: int, w: int, scale, ratio, rand) -> tuple[torch.Tensor, ...]:
    """Crop width/height and top-left corner in pixels [N] each, torchvision's RandomResizedCrop sampling."""
    tries = 10
    area = h * w
    target = area * (scale[0] + (scale[1] - scale[0]) * rand(n, tries))
    log_r = math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * rand(n, tries)
    aspect = torch.exp(log_r)
    cw = torch.sqrt(target * aspect)
    ch = torch.sqrt(target / aspect)
    ok = (cw <= w) & (ch <= h) & (cw > 0) & (ch > 0)
    first = ok.to(torch.int8).argmax(1, keepdim=True)  # the first try that fits (0 when none fits)
    any_ok = ok.any(1)
    cw = cw.gather(1, first).squeeze(1)
    ch = ch.gather(1, first).squeeze(1)
    # fallback (no try fits): the whole image, cropped to the allowed aspect range, centred
    in_ratio = w / h
    if in_ratio < ratio[0]:
        fw, fh = float(w), w / ratio[0]
    elif in_ratio > ratio[1]:
        fw, fh = h * ratio[1], float(h)
    else:
        fw, fh = float(w), float(h)
    cw = torch.where(any_ok, cw, torch.full_like(cw, fw))
    ch = torch.where(any_ok, ch, torch.full_like(ch, fh))
    ux, uy = rand(n), rand(n)
    x0 = torch.where(any_ok, ux * (w - cw), (w - cw) / 2)
    y0 = torch.where(any_ok, uy * (h - ch), (h - ch) / 2)
    return cw, ch, x0, y0


def _geometry(x: torch.Tensor, spec: AugmentSpec, rand) -> torch.Tensor:
    n, c, h, w = x.shape
    dev = x.device
    if spec.crop_scale is not None:
        cw, ch, x0, y0 = _crop_boxes(n, h, w, spec.crop_scale, spec.crop_ratio, rand)
    else:
        cw, ch = torch.full((n,), float(w), device=dev), torch.full((n,), float(h), device=dev)
        x0, y0 = torch.zeros(n, device=dev), torch.zeros(n, device=dev)
    # normalized coordinates (align_corners=False: -1 and 1 are the outer edges of the border pixels)
    cx = 2 * (x0 + cw / 2) / w - 1
    cy = 2 * (y0 + ch / 2) / h - 1
    sx, sy = cw / w, ch / h
    # A: flip / rotation of the output coordinates, in pixel-proportional units (so rotations keep angles on
    # non-square images): A_norm = S^-1 R S with S = diag(w, h)
    angle = torch.zeros(n, device=dev)
    if spec.rotate90 > 0:
        if h != w:
            raise ValueError(f"augment.rotate90 needs square images, got {h}x{w}")
        k = 1 + (rand(n) * 3).floor().clamp_max(2)
        angle = torch.where(rand(n) < spec.rotate90, k * (math.pi / 2), angle)
    if spec.degrees > 0:
        angle = angle + (2 * rand(n) - 1) * math.radians(spec.degrees)
    cos, sin = torch.cos(angle), torch.sin(angle)
    if spec.rotate90 > 0 and spec.degrees == 0:  # exact 0/1 entries for the quarter turns
        cos, sin = torch.round(cos * 1e6) / 1e6, torch.round(sin * 1e6) / 1e6
    a00, a01, a10, a11 = cos, -sin * (h / w), sin * (w / h), cos
    if spec.flip > 0:
        f = torch.where(rand(n) < spec.flip, -1.0, 1.0)
        a00, a10 = a00 * f, a10 * f  # mirror the output's x axis before rotating
    if spec.translate > 0:
        cx = cx + (2 * rand(n) - 1) * 2 * spec.translate
        cy = cy + (2 * rand(n) - 1) * 2 * spec.translate
    theta = torch.stack([torch.stack([sx * a00, sx * a01, cx], -1), torch.stack([sy * a10, sy * a11, cy], -1)], 1)
    grid = F.affine_grid(theta, [n, c, h, w], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def gray(x: torch.Tensor) -> torch.Tensor:
    """[N, 3, H, W] -> [N, 1, H, W] luma (0.299, 0.587, 0.114)."""
    if x.shape[1] == 1:
        return x
    return (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])


def rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    """[N, 3, H, W] RGB in [0, 1] -> HSV, each in [0, 1] (hue as a fraction of the circle; 0 for grays)."""
    r, g, b = x.unbind(1)
    maxc = x.amax(1)
    delta = maxc - x.amin(1)
    safe = torch.where(delta > 0, delta, torch.ones_like(delta))
    h = torch.where(maxc == r, (g - b) / safe,
                    torch.where(maxc == g, 2.0 + (b - r) / safe, 4.0 + (r - g) / safe))
    h = torch.where(delta > 0, torch.remainder(h / 6.0, 1.0), torch.zeros_like(h))
    s = delta / torch.where(maxc > 0, maxc, torch.ones_like(maxc))
    return torch.stack([h, s, maxc], 1)


_HSV_N = (5.0, 3.0, 1.0)


def hsv_to_rgb(x: torch.Tensor) -> torch.Tensor:
    """HSV -> RGB with the closed form c_n = v - v s clamp(min(k, 4 - k), 0, 1), k = (n + 6h) mod 6, n = 5, 3, 1."""
    h, s, v = x[:, 0:1], x[:, 1:2], x[:, 2:3]
    n = torch.tensor(_HSV_N, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    k = torch.remainder(n + 6.0 * h, 6.0)
    return v - v * s * torch.minimum(k, 4.0 - k).clamp(0.0, 1.0)


def _bcast(v: torch.Tensor) -> torch.Tensor:
    return v.view(-1, 1, 1, 1)


def _brightness(x, f):
    return (x * _bcast(f)).clamp(0, 1)


def _contrast(x, f):
    mean = gray(x).mean(dim=(1, 2, 3), keepdim=True)
    return (_bcast(f) * x + (1 - _bcast(f)) * mean).clamp(0, 1)


def _saturation(x, f):
    return (_bcast(f) * x + (1 - _bcast(f)) * gray(x)).clamp(0, 1)


def _hue(x, shift):
    hsv = rgb_to_hsv(x)
    h = (hsv[:, 0] + shift.view(-1, 1, 1)) % 1.0
    return hsv_to_rgb(torch.stack([h, hsv[:, 1], hsv[:, 2]], 1))


def _jitter(x: torch.Tensor, spec: AugmentSpec, rand) -> torch.Tensor:
    n, c = x.shape[:2]
    sb, sc, ss, sh = spec.jitter_strength
    apply = rand(n) < spec.jitter

    def factor(s):
        lo = max(0.0, 1.0 - s)
        return lo + (1.0 + s - lo) * rand(n)

    fb, fc, fs = factor(sb), factor(sc), factor(ss)
    hue = (2 * rand(n) - 1) * sh
    ops = [lambda t: _brightness(t, fb), lambda t: _contrast(t, fc)]
    if c == 3:
        ops += [lambda t: _saturation(t, fs), lambda t: _hue(t, hue)]
    y = x
    if spec.jitter_order == "fixed":
        for op in ops:
            y = op(y)
    else:
        order = torch.argsort(rand(n, len(ops)), dim=1)  # an independent random permutation per image
        for stage in range(len(ops)):
            which = order[:, stage].view(-1, 1, 1, 1)
            out = y
            for j, op in enumerate(ops):
                out = torch.where(which == j, op(y), out)
            y = out
    return torch.where(_bcast(apply), y, x)


def _gaussian_kernels(sigma: torch.Tensor, size: int) -> torch.Tensor:
    r = torch.arange(size, device=sigma.device, dtype=torch.float32) - size // 2
    k = torch.exp(-(r.view(1, -1) ** 2) / (2 * sigma.view(-1, 1) ** 2))
    return k / k.sum(1, keepdim=True)


def _blur(x: torch.Tensor, prob: torch.Tensor, spec: AugmentSpec, rand) -> torch.Tensor:
    n, c, h, w = x.shape
    size = max(3, int(round(spec.blur_kernel * min(h, w))))
    size = size if size % 2 == 1 else size + 1
    size = min(size, 2 * (min(h, w) - 1) + 1)  # reflect padding needs pad < side
    apply = rand(n) < prob
    sigma = spec.blur_sigma[0] + (spec.blur_sigma[1] - spec.blur_sigma[0]) * rand(n)
    k = _gaussian_kernels(sigma, size)
    delta = torch.zeros_like(k)
    delta[:, size // 2] = 1.0
    k = torch.where(apply.view(-1, 1), k, delta)  # images not blurred get the identity kernel
    weight = k.repeat_interleave(c, 0)  # [N*C, size]
    pad = size // 2
    y = x.reshape(1, n * c, h, w)
    y = F.conv2d(F.pad(y, (pad, pad, 0, 0), mode="reflect"), weight.view(n * c, 1, 1, size), groups=n * c)
    y = F.conv2d(F.pad(y, (0, 0, pad, pad), mode="reflect"), weight.view(n * c, 1, size, 1), groups=n * c)
    return y.view(n, c, h, w)


def augment(images: torch.Tensor, spec: AugmentSpec, views: int = 2,
            generator: torch.Generator | None = None) -> torch.Tensor:
    """`views` augmented views of every image: [B, C, H, W] (uint8 or float in [0, 1]) -> float [V, B, C, H, W]."""
    if images.dim() != 4:
        raise ValueError(f"augment expects images [B, C, H, W], got shape {tuple(images.shape)}")
    if views < 1:
        raise ValueError(f"views must be >= 1, got {views}")
    x = images.float().div(255.0) if images.dtype == torch.uint8 else images.float()
    b, c, h, w = x.shape
    n = views * b
    dev = x.device
    x = x.unsqueeze(0).expand(views, b, c, h, w).reshape(n, c, h, w)

    def rand(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=generator, device=dev)

    if spec.geometric:
        x = _geometry(x, spec, rand)
    if spec.jitter > 0:
        x = _jitter(x, spec, rand)
    if spec.grayscale > 0 and c == 3:
        g = gray(x).expand(n, 3, h, w)
        x = torch.where(_bcast(rand(n) < spec.grayscale), g, x)
    if any(p > 0 for p in spec.blur):
        x = _blur(x, _per_view(spec.blur, views, b, dev), spec, rand)
    if any(p > 0 for p in spec.solarize):
        apply = rand(n) < _per_view(spec.solarize, views, b, dev)
        x = torch.where(_bcast(apply) & (x >= 0.5), 1.0 - x, x)
    return x.clamp_(0.0, 1.0).reshape(views, b, c, h, w)
