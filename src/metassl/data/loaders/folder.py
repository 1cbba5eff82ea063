"""Any image folder laid out as `<root>/<class>/<image>`, as a data set.

`load_image_folder(path)` reads such a folder directly (any format Pillow reads; hidden files are skipped, files
without an image extension are skipped and counted in one line). The registered data set `folder` reads the data
root itself as the folder: split `train`, `val` or `test` reads DATA_ROOT/<split>/<class>/<image>, split `all` reads
DATA_ROOT/<class>/<image>. Pass the folder with --data-root. Its image size and channels come from all its images
(the median of the longer sides, at most 84; grayscale if every image is), said in one line when loaded;
data.image_size and data.options.channels override them. With data.options.unlabeled=true every image under the
data root (any sub-folders, or none) is read as one class, for self-supervised training (`metassl fit`).
Decoded tensors are cached, keyed by the image files.
"""

from __future__ import annotations

import hashlib
import statistics
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from ..episodic import ClassSplit, Preprocess
from ..images import IMAGE_EXTENSIONS, ImageReadError, decode_image, list_images, open_image, resize_uint8
from ..registry import DatasetSpec, register_dataset
from ...errors import ConfigError
from ..root import DatasetNotFoundError, cached_tensors, missing

SPLITS = ("train", "val", "test", "all")
IMAGENET_PREPROCESS = Preprocess(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
_GRAY_MODES = {"1", "L", "LA", "I", "F"}
MAX_SIDE = 84  # the inferred side length is at most this (larger images train slowly; data.image_size to change)
_said: set[str] = set()  # lines already printed by this process
_HOW = ("Put one sub-folder per class, each holding that class's images, in DATA_ROOT/<split>/ (split train, val or "
        "test) or directly in DATA_ROOT/ (split all), and pass the folder with --data-root.")


def _say(line: str) -> None:
    """One line on standard error, once per process (the trainer loads train, val and test splits)."""
    if line not in _said:
        _said.add(line)
        print(line, file=sys.stderr)


def class_folders(path: Path) -> list[Path]:
    """Non-hidden sub-folders of `path`, sorted by name."""
    return sorted((p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")), key=lambda p: p.name)


def _probe(path: Path) -> tuple[bool, tuple[int, int]]:
    """(is colour, (height, width)) of an image from its header, without decoding the pixels."""
    from PIL import UnidentifiedImageError

    try:
        with open_image(path, str(path)) as im:  # a decompression bomb is refused here already, naming the file
            mode, (w, h) = im.mode, im.size
            colour = not (mode in _GRAY_MODES or mode.startswith("I;"))
            if mode in ("P", "PA"):  # a palette image is colour unless its palette is all gray
                pal = np.asarray(im.getpalette() or [], dtype=np.int64).reshape(-1, 3)
                colour = bool((pal != pal[:, :1]).any())
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ImageReadError(f"cannot read image {path}: {e}. Remove or replace the file.") from e
    return colour, (h, w)


def decode_files(files: list[Path], channels: int, size: int | tuple[int, int]) -> torch.Tensor:
    """Decode image files into [M, channels, H, W] uint8, resizing each one that is not already `size` as it is
    read (so full-size photos never pile up in memory)."""
    hw = (size, size) if isinstance(size, int) else tuple(size)
    out = torch.empty((len(files), channels, *hw), dtype=torch.uint8)
    for i, f in enumerate(files):
        a = decode_image(f, channels)
        t = torch.from_numpy(a if a.flags.writeable else a.copy()).permute(2, 0, 1)
        if tuple(t.shape[1:]) != hw:
            t = resize_uint8(t[None].contiguous(), hw)[0]
        out[i] = t
    return out


def _decode_folder(classes: list[tuple[str, list[Path]]], image_size: int | None, channels: int | None
                   ) -> tuple[dict[str, torch.Tensor], dict]:
    files = [f for _, fs in classes for f in fs]
    size: int | tuple[int, int] | None = image_size
    if channels is None or size is None:
        probes = [_probe(f) for f in files]
        if channels is None:
            channels = 3 if any(c for c, _ in probes) else 1
        if size is None:
            # the most common size; ties go to the larger image, then to the taller one
            counts = Counter(hw for _, hw in probes)
            size = max(counts, key=lambda hw: (counts[hw], hw[0] * hw[1], hw[0]))
    images = decode_files(files, channels, size)
    meta = {"class_names": [n for n, _ in classes], "counts": [len(fs) for _, fs in classes], "channels": channels}
    return {"images": images}, meta


def load_image_folder(path: str | Path, image_size: int | None = None, channels: int | None = None,
                      name: str | None = None, preprocess: Preprocess | None = None) -> ClassSplit:
    """Read `path/<class>/<image>` into a `ClassSplit` (classes sorted by folder name, images by file name).

    channels: 1 or 3; by default 3 if any image is in colour, else 1. image_size: side length every image is resized
    to; by default the most common image size (images of other sizes are resized to it). preprocess: by default
    ImageNet mean/std for colour images, plain scaling to [0, 1] for grayscale.
    """
    path = Path(path).expanduser()
    if channels not in (None, 1, 3):
        raise ValueError(f"channels must be 1 or 3 (or None to detect), got {channels!r}")
    if image_size is not None and (not isinstance(image_size, int) or image_size < 1):
        raise ValueError(f"image_size must be a positive integer, got {image_size!r}")
    if not path.is_dir():
        raise DatasetNotFoundError(f"image folder {path} does not exist (or is not a folder). Expected "
                                   f"{path}/<class>/<image> with one sub-folder per class.")
    folders = class_folders(path)
    if not folders:
        loose = list_images(path)
        hint = f" (it holds {len(loose)} images directly; move them into per-class sub-folders)" if loose else ""
        raise DatasetNotFoundError(f"image folder {path} has no class sub-folders{hint}. Expected "
                                   f"{path}/<class>/<image> with one sub-folder per class.")
    classes, skipped = [], []
    for folder in folders:
        skipped += [p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")
                    and p.suffix.lower() not in IMAGE_EXTENSIONS]
        files = list_images(folder)
        if not files:
            raise ValueError(f"class folder {folder} holds no images (looked for non-hidden files ending in "
                             f"{', '.join(IMAGE_EXTENSIONS)}); add images or remove the folder")
        classes.append((folder.name, files))
    if skipped:
        names = ", ".join(p.name for p in skipped[:3]) + (", ..." if len(skipped) > 3 else "")
        _say(f"{path}: skipped {len(skipped)} files without an image extension ({names}); images need one of "
             f"{', '.join(IMAGE_EXTENSIONS)}: rename or remove them")
    files = [f for _, fs in classes for f in fs]
    tag = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:8]
    key = f"folder-{tag}-{image_size or 'auto'}-{channels or 'auto'}"
    tensors, meta = cached_tensors(key, files, lambda: _decode_folder(classes, image_size, channels))
    if preprocess is None:
        preprocess = IMAGENET_PREPROCESS if meta["channels"] == 3 else Preprocess()
    return ClassSplit(tensors["images"], torch.tensor(meta["counts"]), list(meta["class_names"]),
                      name=name or f"folder:{path.name}", preprocess=preprocess)


def _split_folder(root: Path, split: str) -> Path:
    return root if split == "all" else root / split


def _infer(root: Path) -> tuple[int, int, dict]:
    """(side length, channels) from every image of the data set (all split folders present, else the class
    folders of root), from the file headers; cached, keyed by the files."""
    parts = [root / s for s in ("train", "val", "test") if (root / s).is_dir()] or [root]
    files = [f for p in parts for c in class_folders(p) for f in list_images(c)]
    if not files:
        raise missing("folder", root, ["<class>/<image>", "train/<class>/<image>"], _HOW)

    def build():
        probes = [_probe(f) for f in files]
        colour = sum(c for c, _ in probes)
        h = statistics.median(hw[0] for _, hw in probes)
        w = statistics.median(hw[1] for _, hw in probes)
        side, channels = _side_and_channels(probes)
        meta = {"side": side, "channels": channels, "colour": colour, "median": [int(h), int(w)],
                "images": len(files)}
        return {"images": torch.tensor([len(files)])}, meta

    tag = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:8]
    _, meta = cached_tensors(f"folder-probe-{tag}", files, build)
    return meta["side"], meta["channels"], meta


def _side_and_channels(probes: list[tuple[bool, tuple[int, int]]]) -> tuple[int, int]:
    """The inferred side (median of the longer sides, in [4, MAX_SIDE]) and channels (1 if no image is colour)."""
    side = int(statistics.median(max(hw) for _, hw in probes))
    return max(4, min(side, MAX_SIDE)), 3 if any(c for c, _ in probes) else 1


def _channels_option(options: dict) -> int | None:
    unknown = sorted(set(options) - {"channels", "unlabeled"})
    if unknown:
        raise ConfigError(f"data.options.{unknown[0]}: not a setting of the folder data set; it reads "
                          f"data.options.channels (1 or 3) and data.options.unlabeled (true/false)")
    c = options.get("channels")
    if c not in (None, 1, 3):
        raise ConfigError(f"data.options.channels must be 1 (grayscale) or 3 (RGB), got {c!r}")
    if options.get("unlabeled", False) not in (True, False):
        raise ConfigError(f"data.options.unlabeled must be true or false, got {options['unlabeled']!r}")
    return c


def unlabeled_files(root: Path) -> list[Path]:
    """Every image file under root, in any sub-folder (hidden files and folders skipped), sorted."""
    return sorted(q for q in root.rglob("*") if q.is_file() and q.suffix.lower() in IMAGE_EXTENSIONS
                  and not any(part.startswith(".") for part in q.relative_to(root).parts))


def _load_unlabeled(root: Path, split: str, size: int | None, channels: int | None) -> ClassSplit:
    """`data.options.unlabeled: true`: every image under the data root, whatever the split or sub-folders, as one
    class named `unlabeled` (for self-supervised training, which never reads labels)."""
    if not root.is_dir():
        raise missing("folder", root, ["<image>", "<any folder>/<image>"], "Pass a folder of images with --data-root.")
    files = unlabeled_files(root)
    if len(files) < 2:
        raise DatasetNotFoundError(f"folder {root}: {len(files)} image(s) found (searched every sub-folder for files "
                                   f"ending in {', '.join(IMAGE_EXTENSIONS)}); self-supervised training needs many")
    if size is None or channels is None:
        side, found = _side_and_channels([_probe(f) for f in files[::max(1, len(files) // 4096)]])
        size, channels = size or side, channels or found
        _say(f"folder {root} (unlabeled): {len(files)} images: read at {size}x{size}, {channels} channel"
             f"{'s' if channels > 1 else ''} (data.image_size=N, data.options.channels=1|3 to change)")
    tag = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:8]
    tensors, meta = cached_tensors(f"folder-unlabeled-{tag}-{size}-{channels}", files,
                                   lambda: _decode_folder([("unlabeled", files)], size, channels))
    return ClassSplit(tensors["images"], torch.tensor(meta["counts"]), ["unlabeled"], name=f"folder/{split}",
                      preprocess=IMAGENET_PREPROCESS if channels == 3 else Preprocess())


def load(root: Path, split: str, size: int | None, options: dict | None = None) -> ClassSplit:
    channels = _channels_option(options or {})
    if (options or {}).get("unlabeled"):
        return _load_unlabeled(root, split, size, channels)
    folder = _split_folder(root, split)
    if split != "all" and not folder.is_dir() and root.is_dir():
        present = [f"{s}/" for s in ("train", "val", "test") if (root / s).is_dir()]
        fix = ("set data.val_split=null to train without validation" if split == "val" else
               f"add it, or choose an existing split (data.{split}_split, or --split for eval)")
        raise DatasetNotFoundError(
            f"data set 'folder': the {split} split folder {folder} is missing (expected "
            f"{folder / '<class>' / '<image>'}; {root} has {', '.join(present) or 'no train/, val/ or test/'}); "
            f"{fix}")
    if not folder.is_dir():
        raise missing("folder", root, ["<class>/<image>" if split == "all" else f"{split}/<class>/<image>"], _HOW)
    if size is None or channels is None:
        side, found, meta = _infer(root)
        gray = "all grayscale" if found == 1 else f"{meta['colour']} in colour"
        size, channels = size or side, channels or found
        _say(f"folder {root}: {meta['images']} images, median {meta['median'][0]}x{meta['median'][1]}, {gray}: "
             f"read at {size}x{size}, {channels} channel{'s' if channels > 1 else ''} (data.image_size=N, "
             f"data.options.channels=1|3 to change)")
    return load_image_folder(folder, image_size=size, channels=channels, name=f"folder/{split}",
                             preprocess=IMAGENET_PREPROCESS if channels == 3 else Preprocess())


def locate(root: Path) -> Path:
    if root.is_dir() and class_folders(root):
        return root
    raise missing("folder", root, ["<class>/<image>", "train/<class>/<image>"], _HOW)


register_dataset(DatasetSpec(
    name="folder", splits=SPLITS, image_size=None, channels=None, takes_options=True,
    description="your own images: DATA_ROOT/<split>/<class>/<image> (split all: DATA_ROOT/<class>/<image>)",
    load=load, locate=locate, generic=True))
