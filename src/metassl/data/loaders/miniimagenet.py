"""miniImageNet (Vinyals et al. 2016) with the Ravi & Larochelle (2017) class split: 100 ImageNet classes of 600
images, 84x84 RGB; splits `train` (64 classes), `val` (16), `test` (20).

Looked for in DATA_ROOT/miniimagenet, DATA_ROOT/mini-imagenet and DATA_ROOT/miniImageNet, from any of:
- learn2learn's pickles `mini-imagenet-cache-{train,validation,test}.pkl` (dict: 'image_data' uint8 [N, 84, 84, 3],
  'class_dict' {wnid: [indices]});
- MetaOptNet's pickles `miniImageNet_category_split_{train_phase_train,val,test}.pickle` (dict: 'data' uint8
  [N, 84, 84, 3], 'labels' [N] ints, 'catname2label' {wnid: int}; Python 2 pickles, read as latin1);
- Ravi's CSV lists `{train,val,test}.csv` (header `filename,label`) with the JPEGs in `images/` (or
  `images/<wnid>/`), resized to 84x84; decoded tensors are cached, keyed by the files.
Pickles are read with a restricted unpickler that only builds numpy arrays and plain containers. Classes are sorted
by WordNet id.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch

from ..episodic import ClassSplit, Preprocess
from ..images import resize_uint8
from ..registry import DatasetSpec, register_dataset
from ..root import DatasetNotFoundError, cached_tensors, missing, reading
from ..safe_pickle import load_pickle
from .folder import decode_files

SPLITS = ("train", "val", "test")
PREPROCESS = Preprocess(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
L2L_NAMES = {"train": "train", "val": "validation", "test": "test"}
METAOPTNET_NAMES = {"train": "train_phase_train", "val": "val", "test": "test"}
_HOW = ("miniImageNet is not downloadable from an official site. Use one of the community copies: learn2learn's "
        "mini-imagenet-cache-{train,validation,test}.pkl, MetaOptNet's miniImageNet_category_split_*.pickle, or Ravi & "
        "Larochelle's train/val/test.csv with the images/ folder (made from ImageNet with their script), and put the "
        "files in DATA_ROOT/miniimagenet/.")


def _bases(root: Path) -> list[Path]:
    return [root / "miniimagenet", root / "mini-imagenet", root / "miniImageNet"]


def _sources(base: Path, split: str) -> dict[str, Path]:
    return {"l2l": base / f"mini-imagenet-cache-{L2L_NAMES[split]}.pkl",
            "metaoptnet": base / f"miniImageNet_category_split_{METAOPTNET_NAMES[split]}.pickle",
            "csv": base / f"{split}.csv"}


def _find(root: Path, split: str) -> tuple[str, Path]:
    for base in _bases(root):
        for kind, p in _sources(base, split).items():
            if p.is_file() and (kind != "csv" or (base / "images").is_dir()):
                return kind, p
    looked = []
    for base in _bases(root):
        s = _sources(base, split)
        looked += [f"{base.name}/{s['l2l'].name}", f"{base.name}/{s['metaoptnet'].name}",
                   f"{base.name}/{s['csv'].name} + {base.name}/images/"]
    raise missing("miniimagenet", root, looked, _HOW)


def locate(root: Path) -> Path:
    return _find(root, "test")[1].parent


def _str_keys(d: object, path: Path) -> dict:
    if not isinstance(d, dict):
        raise ValueError(f"{path}: expected a pickled dict, got {type(d).__name__}")
    return {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in d.items()}


def _name(x: object) -> str:
    return x.decode("latin1") if isinstance(x, bytes) else str(x)


def _hwc_images(data: object, path: Path, key: str) -> np.ndarray:
    a = np.asarray(data)
    if a.dtype != np.uint8 or a.ndim != 4 or a.shape[3] != 3:
        raise ValueError(f"{path}: {key!r} must be uint8 [N, H, W, 3], got {a.dtype} {a.shape}")
    return a


def _from_hwc(images: np.ndarray, labels: np.ndarray, names: list[str], split: str, size: int) -> ClassSplit:
    x = resize_uint8(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), size)
    return ClassSplit.from_labels(x, torch.from_numpy(labels), names, name=f"miniimagenet/{split}",
                                  preprocess=PREPROCESS)


def _load_l2l(path: Path, split: str, size: int) -> ClassSplit:
    d = load_pickle(path, encoding="latin1")
    with reading(path, "learn2learn's miniImageNet pickle"):  # odd contents (class_dict not a dict, ...): one line
        return _l2l_split(_str_keys(d, path), path, split, size)


def _l2l_split(d: dict, path: Path, split: str, size: int) -> ClassSplit:
    if "image_data" not in d or "class_dict" not in d:
        raise ValueError(f"{path}: expected keys 'image_data' and 'class_dict' (learn2learn format), found {sorted(d)}")
    images = _hwc_images(d["image_data"], path, "image_data")
    class_dict = {_name(k): np.asarray(v, dtype=np.int64).reshape(-1) for k, v in dict(d["class_dict"]).items()}
    names = sorted(class_dict)
    idx = np.concatenate([class_dict[n] for n in names]) if names else np.zeros(0, np.int64)
    if idx.size and (idx.min() < 0 or idx.max() >= images.shape[0]):
        raise ValueError(f"{path}: 'class_dict' holds index {int(idx.max())}, but there are {images.shape[0]} images")
    labels = np.repeat(np.arange(len(names)), [class_dict[n].size for n in names])
    return _from_hwc(images[idx], labels, names, split, size)


def _load_metaoptnet(path: Path, split: str, size: int) -> ClassSplit:
    d = load_pickle(path, encoding="latin1")
    with reading(path, "MetaOptNet's miniImageNet pickle"):
        return _metaoptnet_split(_str_keys(d, path), path, split, size)


def _metaoptnet_split(d: dict, path: Path, split: str, size: int) -> ClassSplit:
    if "data" not in d or "labels" not in d:
        raise ValueError(f"{path}: expected keys 'data' and 'labels' (MetaOptNet format), found {sorted(d)}")
    images = _hwc_images(d["data"], path, "data")
    labels = np.asarray(d["labels"], dtype=np.int64).reshape(-1)
    if labels.size != images.shape[0]:
        raise ValueError(f"{path}: {images.shape[0]} images but {labels.size} labels")
    label_name = {int(v): _name(k) for k, v in dict(d.get("catname2label") or {}).items()}
    present = sorted(set(labels.tolist()))
    names = [label_name.get(c, f"class{c}") for c in present]
    order = sorted(range(len(present)), key=lambda i: names[i])  # classes sorted by wnid
    remap = np.zeros(max(present) + 1 if present else 0, dtype=np.int64)
    for new, i in enumerate(order):
        remap[present[i]] = new
    return _from_hwc(images, remap[labels], [names[i] for i in order], split, size)


def _read_csv(path: Path) -> list[tuple[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        rows = [r for r in csv.reader(f) if r and any(x.strip() for x in r)]
    if not rows or [x.strip().lower() for x in rows[0][:2]] != ["filename", "label"]:
        raise ValueError(f"{path}: expected a header 'filename,label' (Ravi & Larochelle's format), "
                         f"got {rows[0] if rows else 'an empty file'}")
    out = []
    for n, r in enumerate(rows[1:], start=2):
        if len(r) < 2:
            raise ValueError(f"{path}, line {n}: expected 'filename,label', got {','.join(r)!r}")
        out.append((r[0].strip(), r[1].strip()))
    if not out:
        raise ValueError(f"{path}: lists no images")
    return out


def _load_csv(path: Path, split: str, size: int) -> ClassSplit:
    rows = _read_csv(path)
    folder = path.parent / "images"
    names = sorted({label for _, label in rows})
    index = {n: i for i, n in enumerate(names)}
    files, labels = [], []
    for fname, label in rows:
        p = folder / fname
        if not p.is_file():
            alt = folder / label / fname
            if not alt.is_file():
                raise DatasetNotFoundError(f"{path} lists {fname}, but neither {p} nor {alt} exists; the images/ "
                                           f"folder is incomplete")
            p = alt
        files.append(p)
        labels.append(index[label])

    def build():
        return {"images": decode_files(files, 3, size), "labels": torch.tensor(labels, dtype=torch.int64)}, {}

    t, _ = cached_tensors(f"miniimagenet-csv-{split}-{size}", [path, *files], build)
    return ClassSplit.from_labels(t["images"], t["labels"], names, name=f"miniimagenet/{split}",
                                  preprocess=PREPROCESS)


def load(root: Path, split: str, size: int) -> ClassSplit:
    kind, path = _find(root, split)
    return {"l2l": _load_l2l, "metaoptnet": _load_metaoptnet, "csv": _load_csv}[kind](path, split, size)


register_dataset(DatasetSpec(
    name="miniimagenet", splits=SPLITS, image_size=84, channels=3,
    description="miniImageNet, Ravi & Larochelle split 64/16/20 classes x 600 images, 84x84 RGB",
    load=load, locate=locate))
