"""Decoding and resizing images into uint8 tensors (used by loaders once, before caching, never per step).

Image size limit: an image with more pixels than Pillow's limit (`PIL.Image.MAX_IMAGE_PIXELS`, by default
89,478,485, about 9459 x 9459) is refused as a possible decompression bomb (a small file that decodes to gigabytes):
`ImageReadError` naming the file, so a data loader stops with one line and `metassl predict` gives that file an
error row. Set the environment variable `METASSL_MAX_IMAGE_PIXELS` to another number of pixels to change the limit,
or to 0 (or `none`) to remove it for trusted images.
"""

from __future__ import annotations

import io
import os
import re
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ConfigError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


class ImageReadError(ValueError):
    """An image file could not be decoded; the message names the file."""


MAX_PIXELS_ENV = "METASSL_MAX_IMAGE_PIXELS"


def max_image_pixels() -> int | None:
    """The largest image (in pixels) decoded: $METASSL_MAX_IMAGE_PIXELS (0 or `none`: no limit), else Pillow's
    `PIL.Image.MAX_IMAGE_PIXELS`. The variable is applied to Pillow's setting, which its own check reads."""
    from PIL import Image

    raw = os.environ.get(MAX_PIXELS_ENV)
    if raw is None or not raw.strip():
        if _applied and Image.MAX_IMAGE_PIXELS == _applied[-1]:  # the variable was unset: Pillow's own value again
            Image.MAX_IMAGE_PIXELS = _applied[0]
            _applied.clear()
        return Image.MAX_IMAGE_PIXELS
    if raw.strip().lower() in ("0", "none"):
        limit = None
    else:
        try:
            limit = int(float(raw))
        except (ValueError, OverflowError):
            raise ValueError(f"{MAX_PIXELS_ENV}={raw!r}: must be a number of pixels (0 or none: no limit)") from None
        if limit < 0:
            raise ValueError(f"{MAX_PIXELS_ENV}={raw!r}: must be a number of pixels >= 0 (0 or none: no limit)")
    if not _applied:
        _applied.append(Image.MAX_IMAGE_PIXELS)
    _applied[1:] = [limit]
    Image.MAX_IMAGE_PIXELS = limit
    return limit


_applied: list = []  # [Pillow's value before the variable was applied, the value applied]


def _too_large(label: str, e: BaseException) -> ImageReadError:
    limit = max_image_pixels()
    size = re.search(r"\((\d+) pixels\)", str(e))
    return ImageReadError(f"cannot read image {label}: {f'{int(size[1]):,} pixels, ' if size else ''}over the limit of "
                          f"{'Pillow' if limit is None else f'{limit:,} pixels'} (a possible decompression bomb). "
                          f"Remove the file or, if you trust it, raise the limit with {MAX_PIXELS_ENV}=N (0: none).")


def open_image(source: str | os.PathLike | bytes, label: str):
    """`PIL.Image.open` with images over the pixel limit refused (`ImageReadError`), also those Pillow only warns
    about (between its limit and twice that), so no decompression bomb is ever decoded."""
    from PIL import Image

    max_image_pixels()  # applies $METASSL_MAX_IMAGE_PIXELS to Pillow's own check
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            return Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise _too_large(label, e) from e


def decode_image(source: str | os.PathLike | bytes, channels: int, name: str | None = None) -> np.ndarray:
    """Decode one image to an HxWxC uint8 array with `channels` channels (1: grayscale, 3: RGB).

    Alpha is composited onto white, palette and 16-bit images are converted; a file Pillow cannot read raises
    `ImageReadError` naming it.
    """
    from PIL import Image, UnidentifiedImageError

    label = name or (str(source) if not isinstance(source, bytes) else "<bytes>")
    try:
        with open_image(source, label) as im:
            im.load()
            if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
                im = im.convert("RGBA")
                bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
                im = Image.alpha_composite(bg, im)
            im = im.convert("L" if channels == 1 else "RGB")
            arr = np.asarray(im, dtype=np.uint8)
    except ImageReadError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:  # e.g. a frame larger than the first
        raise _too_large(label, e) from e
    except MemoryError as e:
        raise ImageReadError(f"cannot read image {label}: not enough memory to decode it. Remove or shrink the "
                             f"file.") from e
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ImageReadError(f"cannot read image {label}: {e}. Remove or replace the file.") from e
    return arr[:, :, None] if arr.ndim == 2 else arr


def resize_uint8(images: torch.Tensor, size: int | tuple[int, int], chunk: int = 4096) -> torch.Tensor:
    """Resize [M, C, H, W] uint8 images with antialiased bilinear interpolation, in chunks to bound memory."""
    hw = (size, size) if isinstance(size, int) else tuple(size)
    if tuple(images.shape[-2:]) == hw:
        return images
    out = torch.empty((images.shape[0], images.shape[1], *hw), dtype=torch.uint8)
    for s in range(0, images.shape[0], chunk):
        x = images[s:s + chunk].float()
        y = F.interpolate(x, size=hw, mode="bilinear", antialias=True, align_corners=False)
        out[s:s + chunk] = y.round_().clamp_(0, 255).to(torch.uint8)
    return out


def stack_hwc(arrays: list[np.ndarray], size: int | None) -> torch.Tensor:
    """Stack HxWxC arrays (sizes may differ) into [M, C, size, size] uint8, resizing each as needed."""
    if not arrays:
        raise ValueError("no images to stack")
    shapes = {a.shape for a in arrays}
    if len(shapes) == 1:
        t = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
        return resize_uint8(t, size) if size else t
    if size is None:
        raise ValueError(f"images have different sizes {sorted(shapes)[:3]}...; give an image_size to resize them")
    return torch.cat([resize_uint8(torch.from_numpy(a).permute(2, 0, 1)[None].contiguous(), size) for a in arrays])


def list_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
                  and not p.name.startswith("."))


def to_channels(images: torch.Tensor, channels: int, strict: bool = False) -> torch.Tensor:
    """uint8 images [M, C, H, W] with `channels` channels, converted as prediction converts a file: RGB to gray with
    Pillow's weights and rounding (ITU-R 601-2 luma), gray to RGB by repetition. Other inputs come back unchanged,
    or (`strict`) a conversion other than 1 <-> 3 is a ConfigError."""
    c = images.shape[1]
    if c == channels or images.dtype != torch.uint8 or images.dim() != 4:
        return images
    if c == 1 and channels == 3:
        return images.expand(-1, 3, -1, -1).contiguous()
    if c == 3 and channels == 1:
        x = images.to(torch.int64)
        return ((x[:, 0] * 19595 + x[:, 1] * 38470 + x[:, 2] * 7471 + 0x8000) >> 16).to(torch.uint8)[:, None]
    if strict:
        raise ConfigError(f"cannot convert {c}-channel images to {channels} channels (only 1 <-> 3)")
    return images
