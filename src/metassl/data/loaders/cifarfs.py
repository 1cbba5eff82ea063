"""CIFAR-FS and FC100: few-shot class splits of CIFAR-100 (100 classes x 600 images, 32x32 RGB).

- `cifar_fs` (Bertinetto et al. 2019, "Meta-learning with differentiable closed-form solvers"): 64 / 16 / 20 fine
  classes drawn at random; splits `train`, `val`, `test`. The lists (splits/cifar_fs/*.txt) are the ones of the
  authors' repository (bertinetto/r2d2, data/cifar-fs/splits/bertinetto/), as also shipped by torchmeta. A split
  folder DATA_ROOT/cifar-fs/splits/bertinetto/{train,val,test}.txt, if present, is used instead.
- `fc100` (Oreshkin et al. 2018, TADAM): split by superclass so that train and test share little, 12 / 4 / 4
  superclasses = 60 / 20 / 20 fine classes. Superclass indices 1-6, 9, 10, 15, 17-19 (train); 8, 11, 13, 16 (val);
  0, 7, 12, 14 (test), as in the TADAM supplement and MetaOptNet's FC100 files; lists in splits/fc100/*.txt.

Both are built from the official CIFAR-100 python batches `cifar-100-python/{train,test,meta}`, all 600 images of
each class (the 500 train + 100 test images) pooled. The batches are pickles, read with a restricted unpickler.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import numpy as np
import torch

from ..episodic import ClassSplit, Preprocess
from ..images import resize_uint8
from ..registry import DatasetSpec, register_dataset
from ..root import missing, reading
from ..safe_pickle import load_pickle
from .cifar10 import read_batch

SPLITS = ("train", "val", "test")
PREPROCESS = Preprocess(mean=(0.5071, 0.4865, 0.4409), std=(0.2673, 0.2564, 0.2762))
FOLDER = "cifar-100-python"
FILES = ("train", "test", "meta")
_HOW = ("Get cifar-100-python.tar.gz from www.cs.toronto.edu/~kriz/cifar.html and unpack it into DATA_ROOT/ (giving "
        "DATA_ROOT/cifar-100-python/train, test and meta).")


def _bases(root: Path) -> list[Path]:
    return [root, root / "cifar100", root / "cifar-100", root / "cifar-fs", root / "fc100"]


def _folder(root: Path, dataset: str) -> Path:
    for base in _bases(root):
        d = base / FOLDER
        if all((d / f).is_file() for f in FILES):
            return d
    looked = [f"{b.relative_to(root) / FOLDER if b != root else FOLDER}/{{{','.join(FILES)}}}" for b in _bases(root)]
    raise missing(dataset, root, looked, _HOW)


def _cifar100(folder: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str], list[str]]:
    """All 60,000 images [N, 3, 32, 32], fine and coarse labels, fine and coarse class names."""
    images, fine, coarse = [], [], []
    for part in ("train", "test"):
        x, (f, c) = read_batch(folder / part, label_keys=("fine_labels", "coarse_labels"))
        images.append(x)
        fine.append(f)
        coarse.append(c)
    meta_file = folder / "meta"
    meta = load_pickle(meta_file, encoding="bytes")

    def names(key: str, n: int) -> list[str]:
        v = meta.get(key)
        if v is None or len(v) != n:
            raise ValueError(f"{meta_file}: expected {n} names under {key!r}, found "
                             f"{'none' if v is None else len(v)}")
        return [s.decode("utf-8") if isinstance(s, bytes) else str(s) for s in v]

    with reading(meta_file, "the CIFAR-100 meta pickle"):  # odd contents (not a dict, names not a list): one line
        if not isinstance(meta, dict):
            raise ValueError(f"{meta_file}: expected a pickled dict, got {type(meta).__name__}")
        meta = {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in meta.items()}
        fine_names, coarse_names = names("fine_label_names", 100), names("coarse_label_names", 20)
    return np.concatenate(images), np.concatenate(fine), np.concatenate(coarse), fine_names, coarse_names


def _split_list(root: Path, dataset: str, split: str) -> tuple[list[str], str]:
    if dataset == "cifar_fs":
        for base in (root / "cifar-fs", root / "cifar_fs", root):
            f = base / "splits" / "bertinetto" / f"{split}.txt"
            if f.is_file():
                return _lines(f.read_text(encoding="utf-8")), str(f)
    res = resources.files("metassl.data").joinpath(f"splits/{dataset}/{split}.txt")
    return _lines(res.read_text(encoding="utf-8")), f"metassl/data/splits/{dataset}/{split}.txt"


def _lines(text: str) -> list[str]:
    return [ln.strip().replace(" ", "_") for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]


def _index(names: list[str], wanted: list[str], source: str, kind: str) -> list[int]:
    pos = {n: i for i, n in enumerate(names)}
    bad = [w for w in wanted if w not in pos]
    if bad:
        raise ValueError(f"{source}: {', '.join(map(repr, bad[:5]))} {'is' if len(bad) == 1 else 'are'} not CIFAR-100 "
                         f"{kind} name{'s' if len(bad) > 1 else ''} (known: {', '.join(names[:5])}, ...)")
    return [pos[w] for w in wanted]


def _load(dataset: str, root: Path, split: str, size: int) -> ClassSplit:
    folder = _folder(root, dataset)
    images, fine, coarse, fine_names, coarse_names = _cifar100(folder)
    wanted, source = _split_list(root, dataset, split)
    if dataset == "cifar_fs":
        classes = _index(fine_names, wanted, source, "fine class")
    else:
        supers = _index(coarse_names, wanted, source, "superclass")
        pairs = np.unique(np.stack([fine, coarse]), axis=1)  # distinct (fine, coarse) label pairs
        split_fine = np.flatnonzero(np.bincount(pairs[0], minlength=len(fine_names)) > 1)
        if split_fine.size:
            raise ValueError(f"{folder}: fine class {fine_names[int(split_fine[0])]!r} has images under more than one "
                             f"coarse label; the CIFAR-100 batches are inconsistent")
        classes = []
        for s in supers:  # superclasses in list order, fine classes of each sorted by name
            members = sorted(set(fine[coarse == s].tolist()), key=lambda c: fine_names[c])
            classes += members
    blocks, counts = [], []
    for c in classes:
        idx = np.flatnonzero(fine == c)
        blocks.append(images[idx])
        counts.append(idx.size)
    x = resize_uint8(torch.from_numpy(np.concatenate(blocks)), size)
    return ClassSplit(x, torch.tensor(counts), [fine_names[c] for c in classes], name=f"{dataset}/{split}",
                      preprocess=PREPROCESS)


def load_cifar_fs(root: Path, split: str, size: int) -> ClassSplit:
    return _load("cifar_fs", root, split, size)


def load_fc100(root: Path, split: str, size: int) -> ClassSplit:
    return _load("fc100", root, split, size)


register_dataset(DatasetSpec(
    name="cifar_fs", splits=SPLITS, image_size=32, channels=3,
    description="CIFAR-FS (Bertinetto et al. 2019), CIFAR-100 split 64/16/20 classes x 600 images, 32x32 RGB",
    load=load_cifar_fs, locate=lambda root: _folder(root, "cifar_fs"), augment="cifar10"))
register_dataset(DatasetSpec(
    name="fc100", splits=SPLITS, image_size=32, channels=3,
    description="FC100 (Oreshkin et al. 2018), CIFAR-100 split by superclass 12/4/4 = 60/20/20 classes, 32x32 RGB",
    load=load_fc100, locate=lambda root: _folder(root, "fc100"), augment="cifar10"))
