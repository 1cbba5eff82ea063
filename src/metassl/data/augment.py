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

Multi-crop (SwAV, Caron et al. 2020; DINO, Caron et al. 2021): `augment(..., size=(h, w), first_view=V)` makes views
at another output size; `local_crops(images, spec, M, size, V, generator)` makes M local crops with the crop area
range `local_scale` (default (0.05, 0.4), as DINO and SwAV) in one call. The per-view tuples continue their cycle
at view V, so e.g. `blur: [1.0, 0.1, 0.5]` gives DINO's global views 1.0 and 0.1 and every local crop 0.5 (the last
entry is repeated past the end of a tuple longer than the two global views). Local crops are resampled to a size
a little below the crop's (bilinear, no antialiasing: at most a factor ~1.1 for DINO's sizes).

`AugmentSpec` is both the run's `augment` config section and what `augment` applies: a field left unset (None) comes
from the preset in a config (`resolve_augment`) and is off when a spec is applied directly. Presets are registered
by name (`register_augmentation`, built-in ones in `augment_presets.py`); a data set names its default preset in its
registration, and a method may adapt the preset to its views (`LearnerSpec.augment`, e.g. BYOL's asymmetric views).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, replace
from typing import Any, Callable

import torch
import torch.nn.functional as F

from ..config import option
from ..errors import ConfigError
from ..registry import AUGMENTATIONS, DATASETS, LEARNERS, SECTIONS

__all__ = ["AugmentSpec", "PRESETS", "augment", "local_crops", "register_augmentation", "resolve_augment",
           "weak_view"]

_P = (0.0, 1.0)


@dataclass(frozen=True)
class AugmentSpec:
    """Augmentation on the device for self-supervised views and unsupervised task sources (`augment.*` keys)."""

    preset: str = option("auto", help="auto: the data set's preset; the keys below override the preset when set "
                         "(see `metassl presets --keys` for the registered presets)")
    crop_scale: tuple[float, float] | None = option(None, help="random resized crop area range, e.g. [0.08, 1.0]")
    crop_ratio: tuple[float, float] | None = option(None, help="aspect ratio range, e.g. [0.75, 1.333]")
    flip: float | None = option(None, range=_P, help="horizontal flip probability")
    jitter: float | None = option(None, range=_P, help="color jitter probability")
    jitter_strength: tuple[float, ...] | None = option(None, help="brightness, contrast, saturation, hue")
    jitter_order: str | None = option(None, choices=("random", "fixed"), help="random order per image or fixed")
    grayscale: float | None = option(None, range=_P, help="random grayscale probability")
    blur: tuple[float, ...] | None = option(None, range=_P, help="Gaussian blur probability (one per view, cycled)")
    blur_sigma: tuple[float, float] | None = option(None, help="blur sigma range")
    blur_kernel: float | None = option(None, range=(0.0, 1.0), help="blur kernel side as a fraction of the side")
    solarize: tuple[float, ...] | None = option(None, range=_P, help="solarization probability (per view, cycled)")
    rotate90: float | None = option(None, range=_P, help="probability of a random 90-degree rotation")
    degrees: float | None = option(None, range=(0.0, 180.0), help="small random rotation of up to this many degrees")
    translate: float | None = option(None, range=(0.0, 1.0), help="random translation of up to this x the side")
    local_scale: tuple[float, float] | None = option(None, help="multi-crop: crop area range of the local crops "
                                                     "(tasks.local_crops), default [0.05, 0.4] as DINO/SwAV")

    @property
    def name(self) -> str:
        return self.preset

    def validate(self) -> None:
        if self.crop_scale is not None:
            _pair(self.crop_scale, "augment.crop_scale", 1e-6, 1.0)
        if self.local_scale is not None:
            _pair(self.local_scale, "augment.local_scale", 1e-6, 1.0)
        if self.crop_ratio is not None:
            _pair(self.crop_ratio, "augment.crop_ratio", 1e-3, None)
        if self.jitter_strength is not None:
            js = list(self.jitter_strength)
            if len(js) != 4 or any(v < 0 for v in js) or js[3] > 0.5:
                raise ConfigError(f"augment.jitter_strength must be four numbers [brightness, contrast, saturation, "
                                  f"hue] >= 0 with hue <= 0.5, got {js}")
        if self.blur_sigma is not None:
            _pair(self.blur_sigma, "augment.blur_sigma", 1e-6, None)

    def filled(self) -> "AugmentSpec":
        """Every unset field at its 'off' value (no crop, probabilities 0, torchvision's default ranges)."""
        return replace(self, **{k: v for k, v in OFF.items() if getattr(self, k) is None})

    def overridden_by(self, other: "AugmentSpec") -> "AugmentSpec":
        """This spec with every field that `other` sets (not None) replaced by `other`'s value."""
        changes = {f.name: getattr(other, f.name) for f in dataclasses.fields(other)
                   if f.name != "preset" and getattr(other, f.name) is not None}
        return replace(self, **changes) if changes else self

    @property
    def geometric(self) -> bool:
        s = self.filled()
        return s.crop_scale is not None or s.flip > 0 or s.rotate90 > 0 or s.degrees > 0 or s.translate > 0


OFF: dict[str, Any] = dict(crop_ratio=(3 / 4, 4 / 3), flip=0.0, jitter=0.0, jitter_strength=(0.4, 0.4, 0.4, 0.1),
                           jitter_order="random", grayscale=0.0, blur=(0.0,), blur_sigma=(0.1, 2.0), blur_kernel=0.1,
                           solarize=(0.0,), rotate90=0.0, degrees=0.0, translate=0.0, local_scale=(0.05, 0.4))

SECTIONS.add("augment", AugmentSpec)
PRESETS = AUGMENTATIONS  # name -> AugmentSpec (every field set)


def register_augmentation(spec: AugmentSpec) -> AugmentSpec:
    """Register a preset under `spec.preset`; its unset fields are filled with the 'off' values."""
    return AUGMENTATIONS.add(spec.preset, spec.filled())


def weak_view(spec: AugmentSpec) -> AugmentSpec:
    """The geometric part of `spec` only (no colour jitter, grayscale, blur or solarization): the weak view of
    methods with asymmetric views (PsCo's momentum network)."""
    return replace(spec.filled(), preset=f"{spec.preset}/weak", jitter=0.0, grayscale=0.0, blur=(0.0,),
                   solarize=(0.0,))


def preset_for_dataset(dataset: str) -> str:
    """The preset a data set registered (`DatasetSpec.augment`); `generic` for names not registered."""
    spec = DATASETS.get(dataset.split("/")[0])
    return spec.augment if spec is not None else "generic"


def _pair(value: Any, key: str, lo: float, hi: float | None) -> tuple[float, float]:
    if len(value) != 2 or not (lo <= value[0] <= value[1]) or (hi is not None and value[1] > hi):
        raise ConfigError(f"{key} must be two numbers [low, high] with {lo} <= low <= high"
                          f"{f' <= {hi}' if hi is not None else ''}, got {list(value)}")
    return float(value[0]), float(value[1])


def resolve_augment(aug_cfg: AugmentSpec | None, dataset: str, method: str | None = None,
                    adapt: Callable[[AugmentSpec], AugmentSpec] | None = None) -> AugmentSpec:
    """The augmentation of a run: the preset (`augment.preset`, or the data set's when `auto`), adapted by the
    learner's `augment` hook (`method`, or `adapt` directly; e.g. BYOL's asymmetric views), then every `augment.*`
    key that is set overrides it."""
    name = aug_cfg.preset if aug_cfg is not None else "auto"
    if name == "auto":
        name = preset_for_dataset(dataset)
    spec = AUGMENTATIONS.lookup(name)
    if adapt is None and method:
        learner = LEARNERS.get(method)
        adapt = getattr(learner, "augment", None)
    if adapt is not None:
        spec = adapt(spec)
    return spec if aug_cfg is None else spec.overridden_by(aug_cfg)


# ---------------------------------------------------------------------------------------------------------------
# the operations (float images [N, C, H, W] in [0, 1]; per-image parameters as tensors [N])


def _per_view(values: tuple[float, ...], views: int, batch: int, device, first: int = 0) -> torch.Tensor:
    # views first..first+views-1 of the cycle; a tuple longer than `first` (multi-crop: values for the global views,
    # then the local crops) repeats its last entry instead of cycling back to the global views' values
    n = len(values)
    last = n > first > 0
    v = [values[min(i, n - 1)] if last else values[i % n] for i in range(first, first + views)]
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


def _geometry(x: torch.Tensor, spec: AugmentSpec, rand, size: tuple[int, int] | None = None) -> torch.Tensor:
    n, c, h, w = x.shape
    oh, ow = size if size is not None else (h, w)
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
    grid = F.affine_grid(theta, [n, c, oh, ow], align_corners=False)
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
            generator: torch.Generator | None = None, size: tuple[int, int] | None = None,
            first_view: int = 0) -> torch.Tensor:
    """`views` augmented views of every image: [B, C, H, W] (uint8 or float in [0, 1]) -> float [V, B, C, h, w], at
    the input size or at `size` = (h, w); `first_view`: where the per-view tuples (blur, solarize) start their cycle."""
    if images.dim() != 4:
        raise ValueError(f"augment expects images [B, C, H, W], got shape {tuple(images.shape)}")
    spec = spec.filled()
    if views < 1:
        raise ValueError(f"views must be >= 1, got {views}")
    x = images.float().div(255.0) if images.dtype == torch.uint8 else images.float()
    b, c, h, w = x.shape
    if size is not None and tuple(size) == (h, w):
        size = None
    n = views * b
    dev = x.device
    x = x.unsqueeze(0).expand(views, b, c, h, w).reshape(n, c, h, w)

    def rand(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=generator, device=dev)

    if spec.geometric or size is not None:
        x = _geometry(x, spec, rand, size)
        h, w = x.shape[-2:]
    if spec.jitter > 0:
        x = _jitter(x, spec, rand)
    if spec.grayscale > 0 and c == 3:
        g = gray(x).expand(n, 3, h, w)
        x = torch.where(_bcast(rand(n) < spec.grayscale), g, x)
    if any(p > 0 for p in spec.blur):
        x = _blur(x, _per_view(spec.blur, views, b, dev, first_view), spec, rand)
    if any(p > 0 for p in spec.solarize):
        apply = rand(n) < _per_view(spec.solarize, views, b, dev, first_view)
        x = torch.where(_bcast(apply) & (x >= 0.5), 1.0 - x, x)
    return x.clamp_(0.0, 1.0).reshape(views, b, c, h, w)


def local_crops(images: torch.Tensor, spec: AugmentSpec, crops: int, size: tuple[int, int], first_view: int = 2,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """Multi-crop's local views: `crops` crops of every image with area fraction ~ U(`local_scale`), resampled to
    `size`, with the rest of `spec` (flip, colour, ...; blur/solarize at views first_view, first_view + 1, ...), in
    one call: [B, C, H, W] -> float [M, B, C, h, w]."""
    s = spec.filled()
    return augment(images, replace(s, crop_scale=s.local_scale), crops, generator, size=size, first_view=first_view)
