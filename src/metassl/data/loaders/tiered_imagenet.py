"""tieredImageNet (Ren et al. 2018): 608 ImageNet classes in 34 categories, split by category into 351 / 97 / 160
train / val / test classes, 84x84 RGB. Read from its two common layouts, in DATA_ROOT/tiered_imagenet/ (or
DATA_ROOT/tiered-imagenet/):
- MetaOptNet's: `{split}_images.npz` (array `images` [N, 84, 84, 3]) with `{split}_labels.pkl`;
- Ren et al.'s original: `{split}_images_png.pkl` (a list of PNG bytes) with `{split}_labels.pkl`;
the labels pickle holding `label_specific` [N] (class per image), and optionally `label_specific_str` (names) and
`label_general` (the category per class image, kept as the class name's prefix `category/class`). Pickles are read
with `safe_pickle` (no code runs). `split` is train, val or test; images are cached.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..episodic import ClassSplit, Preprocess
from ..images import decode_image, stack_hwc
from ..registry import DatasetSpec, register_dataset
from ..root import DataFileError, cached_tensors, missing, reading
from ..safe_pickle import load_pickle

SPLITS = ("train", "val", "test")
PREPROCESS = Preprocess(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
_HOW = ("Get tieredImageNet as MetaOptNet's npz + pkl files (github.com/kjunelee/MetaOptNet) or as Ren et al.'s "
        "original pickles (github.com/renmengye/few-shot-ssl-public) and put {split}_images.npz or "
        "{split}_images_png.pkl with {split}_labels.pkl in DATA_ROOT/tiered_imagenet/.")


def _bases(root: Path) -> list[Path]:
    return [root / "tiered_imagenet", root / "tiered-imagenet", root / "tieredImageNet", root]


def _files(root: Path, split: str) -> tuple[Path, Path]:
    for b in _bases(root):
        labels = b / f"{split}_labels.pkl"
        for images in (b / f"{split}_images.npz", b / f"{split}_images_png.pkl"):
            if images.is_file() and labels.is_file():
                return images, labels
    raise missing("tiered_imagenet", root, [f"{b.name}/{split}_images.npz or {split}_images_png.pkl + "
                                            f"{split}_labels.pkl" for b in _bases(root)[:2]], _HOW)


def locate(root: Path) -> Path:
    return _files(root, "test")[0].parent


def _names(d: dict, present: list[int]) -> list[str]:
    strs = d.get("label_specific_str")
    gen, gen_str = d.get("label_general"), d.get("label_general_str")
    out = []
    for c in present:
        name = str(strs[c]) if strs is not None and c < len(strs) else f"class{c}"
        out.append(name)
    if gen is not None and gen_str is not None:
        spec = np.asarray(d["label_specific"]).reshape(-1)
        general = np.asarray(gen).reshape(-1)
        cat = {int(s): int(g) for s, g in zip(spec, general)}
        out = [f"{gen_str[cat[c]]}/{n}" if cat.get(c) is not None and cat[c] < len(gen_str) else n
               for c, n in zip(present, out)]
    return out


def load(root: Path, split: str, size: int) -> ClassSplit:
    image_file, label_file = _files(root, split)

    def build():
        d = load_pickle(label_file, encoding="latin1")
        with reading(label_file, "a tieredImageNet labels pickle"):
            d = {(k.decode() if isinstance(k, bytes) else str(k)): v for k, v in dict(d).items()}
            labels = np.asarray(d["label_specific"], dtype=np.int64).reshape(-1)
        if image_file.suffix == ".npz":
            with reading(image_file, "a tieredImageNet npz"), np.load(image_file, allow_pickle=False) as z:
                arr = np.asarray(z["images"], dtype=np.uint8)
            if arr.ndim != 4 or arr.shape[-1] != 3:
                raise DataFileError(f"{image_file}: `images` has shape {arr.shape}, expected [N, H, W, 3]")
            images = stack_hwc(list(arr), size) if arr.shape[1] != size else \
                torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()
        else:
            pngs = load_pickle(image_file, encoding="latin1")
            images = stack_hwc([decode_image(bytes(p), 3, name=f"{image_file}[{i}]") for i, p in enumerate(pngs)],
                               size)
        if images.shape[0] != labels.size:
            raise DataFileError(f"{image_file}: {images.shape[0]} images but {label_file} has {labels.size} labels")
        present = sorted(set(labels.tolist()))
        remap = {c: k for k, c in enumerate(present)}
        return ({"images": images, "labels": torch.tensor([remap[c] for c in labels.tolist()])},
                {"names": _names(d, present)})

    tensors, meta = cached_tensors(f"tiered_imagenet-{split}-{size}", [image_file, label_file], build)
    return ClassSplit.from_labels(tensors["images"], tensors["labels"], list(meta["names"]),
                                  name=f"tiered_imagenet/{split}", preprocess=PREPROCESS)


register_dataset(DatasetSpec(
    name="tiered_imagenet", splits=SPLITS, image_size=84, channels=3,
    description="tieredImageNet, 608 classes (351/97/160), MetaOptNet's npz or Ren et al.'s PNG pickles",
    load=load, locate=locate, augment="generic"))
