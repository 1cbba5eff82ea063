"""CUB-200-2011 (Wah et al. 2011): 11,788 photographs of 200 bird species, read from the official archive's layout
`CUB_200_2011/{images.txt, image_class_labels.txt, classes.txt, images/<class>/<file>.jpg}` (the archive unpacked
in DATA_ROOT/cub/ or DATA_ROOT/).

Few-shot splits of Chen et al. 2019 ("A Closer Look at Few-shot Classification", their `write_CUB_filelist.py`):
with the classes in `classes.txt` order (index i from 0), i even -> `train` (100 classes), i % 4 == 1 -> `val` (50),
i % 4 == 3 -> `test` (50); `all` is every class. Images are decoded to RGB, resized to 84x84 by default (no
bounding-box crop) and cached. Meta-Dataset's own CUB split (140/30/30) is that of `md_cu_birds`.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..episodic import ClassSplit, Preprocess
from ..images import decode_image, stack_hwc
from ..registry import DatasetSpec, register_dataset
from ..root import DataFileError, cached_tensors, missing

SPLITS = ("train", "val", "test", "all")
PREPROCESS = Preprocess(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
_HOW = ("Get CUB_200_2011.tgz (www.vision.caltech.edu/datasets/cub_200_2011/, or data.caltech.edu) and unpack it "
        "in DATA_ROOT/cub/ (giving DATA_ROOT/cub/CUB_200_2011/images.txt ...).")


def _base(root: Path) -> Path:
    for b in (root / "cub" / "CUB_200_2011", root / "CUB_200_2011", root / "cub"):
        if (b / "images.txt").is_file() and (b / "image_class_labels.txt").is_file():
            return b
    raise missing("cub", root, ["cub/CUB_200_2011/images.txt", "CUB_200_2011/images.txt", "cub/images.txt"], _HOW)


def split_of(index: int) -> str:
    """Chen et al. 2019's split of the class at 0-based position `index` of classes.txt."""
    return "train" if index % 2 == 0 else "val" if index % 4 == 1 else "test"


def _table(path: Path) -> list[tuple[str, str]]:
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            parts = line.split(maxsplit=1)
            if len(parts) != 2:
                raise DataFileError(f"{path}:{n}: expected `<id> <value>`, got {line!r}")
            rows.append((parts[0], parts[1].strip()))
    return rows


def load(root: Path, split: str, size: int) -> ClassSplit:
    base = _base(root)
    images = dict(_table(base / "images.txt"))
    labels = dict(_table(base / "image_class_labels.txt"))
    classes = _table(base / "classes.txt") if (base / "classes.txt").is_file() else \
        [(c, c) for c in sorted(set(labels.values()), key=int)]
    keep = [(cid, name) for i, (cid, name) in enumerate(classes) if split == "all" or split_of(i) == split]
    index = {cid: k for k, (cid, _) in enumerate(keep)}
    items = sorted((index[labels[i]], images[i]) for i in images if labels.get(i) in index)

    def build():
        arrays = [decode_image(base / "images" / rel, 3) for _, rel in items]
        return {"images": stack_hwc(arrays, size), "labels": torch.tensor([k for k, _ in items])}, {}

    tensors, _ = cached_tensors(f"cub-{split}-{size}", [base / "images.txt", base / "image_class_labels.txt"], build)
    return ClassSplit.from_labels(tensors["images"], tensors["labels"], [n for _, n in keep], name=f"cub/{split}",
                                  preprocess=PREPROCESS)


register_dataset(DatasetSpec(
    name="cub", splits=SPLITS, image_size=84, channels=3,
    description="CUB-200-2011 birds, 200 classes (Chen et al. 2019 split 100/50/50), official archive layout",
    load=load, locate=_base, augment="generic"))
