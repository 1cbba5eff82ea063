"""Decoding and resizing images into uint8 tensors (used by loaders once, before caching, never per step)."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


class ImageReadError(ValueError):
    """An image file could not be decoded; the message names the file."""


def decode_image(source: str | os.PathLike | bytes, channels: int, name: str | None = None) -> np.ndarray:
    """Decode one image to an HxWxC uint8 array with `channels` channels (1: grayscale, 3: RGB).

    Alpha is composited onto white, palette and 16-bit images are converted; a file Pillow cannot read raises
    `ImageReadError` naming it.
    """
    from PIL import Image, UnidentifiedImageError

    label = name or (str(source) if not isinstance(source, bytes) else "<bytes>")
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as im:
            im.load()
            if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
                im = im.convert("RGBA")
                bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
                im = Image.alpha_composite(bg, im)
            im = im.convert("L" if channels == 1 else "RGB")
            arr = np.asarray(im, dtype=np.uint8)
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
