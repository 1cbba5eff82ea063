"""CIFAR-10 (Krizhevsky 2009): 60,000 32x32 colour images of 10 classes; splits `train` (50,000), `test` (10,000).

Read from, in this order of preference:
- the official python batches folder `cifar-10-batches-py/` (data_batch_1..5, test_batch, batches.meta), loaded
  with a restricted unpickler that only builds numpy arrays;
- the JPEG copy `cifar10-jpeg/cifar10_jpeg_q75.tar.xz` (members `train/<class>/NNNN.jpg`, `test/<class>/NNNN.jpg`),
  read in place without extracting (JPEG-recompressed: pixels differ slightly from the official ones);
- that copy extracted: `cifar10-jpeg/<split>/<class>/*.jpg`.
Each is looked for in DATA_ROOT, DATA_ROOT/cifar10 and DATA_ROOT/cifar-10. Classes are in the official order.
Decoded JPEGs are cached (keyed by the source files), never written beside the data.
"""

from __future__ import annotations

import re
import tarfile
from pathlib import Path

import numpy as np
import torch

from ..episodic import ClassSplit, Preprocess
from ..images import IMAGE_EXTENSIONS, decode_image, list_images, resize_uint8, stack_hwc
from ..registry import DatasetSpec, register_dataset
from ..root import cached_tensors, missing, reading
from ..safe_pickle import load_pickle

SPLITS = ("train", "test")
CLASS_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
PREPROCESS = Preprocess(mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616))
BATCHES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
TAR_NAME = "cifar10_jpeg_q75.tar.xz"
_HOW = ("Get cifar-10-python.tar.gz from www.cs.toronto.edu/~kriz/cifar.html and unpack it into DATA_ROOT/ (giving "
        "DATA_ROOT/cifar-10-batches-py/), or put the JPEG copy cifar10_jpeg_q75.tar.xz in DATA_ROOT/cifar10-jpeg/.")


def _bases(root: Path) -> list[Path]:
    return [root, root / "cifar10", root / "cifar-10"]


def _rel(root: Path, p: Path) -> str:
    return str(p.relative_to(root)) if p != root else "."


def _find(root: Path, split: str) -> tuple[str, Path]:
    """("batches", folder) | ("tar", file) | ("folder", split folder) the split is read from."""
    for base in _bases(root):
        d = base / "cifar-10-batches-py"
        if all((d / b).is_file() for b in BATCHES[split]):
            return "batches", d
    for base in _bases(root):
        for t in (base / "cifar10-jpeg" / TAR_NAME, base / TAR_NAME):
            if t.is_file():
                return "tar", t
    for base in _bases(root):
        d = base / "cifar10-jpeg" / split
        if d.is_dir() and any(c.is_dir() for c in d.iterdir()):
            return "folder", d
    looked = []
    for base in _bases(root):
        batches = BATCHES[split][0] if len(BATCHES[split]) == 1 else f"{{{','.join(BATCHES[split])}}}"
        looked += [f"{_rel(root, base / 'cifar-10-batches-py')}/{batches}",
                   _rel(root, base / "cifar10-jpeg" / TAR_NAME), _rel(root, base / TAR_NAME),
                   f"{_rel(root, base / 'cifar10-jpeg' / split)}/<class>/*.jpg"]
    raise missing("cifar10", root, looked, _HOW)


def locate(root: Path) -> Path:
    return _find(root, "test")[1]


def _key_str(d: dict) -> dict:
    return {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in d.items()}


def read_batch(path: Path, label_keys: tuple[str, ...] = ("labels",)) -> tuple[np.ndarray, list[np.ndarray]]:
    """One CIFAR python batch: images [N, 3, 32, 32] uint8 and, for each of `label_keys`, labels [N] int64."""
    d = load_pickle(path, encoding="bytes")
    if not isinstance(d, dict):
        raise ValueError(f"{path}: expected a pickled dict (a CIFAR python batch), got {type(d).__name__}")
    with reading(path, "a CIFAR python batch"):  # odd contents (keys of other types, text labels): one line
        d = _key_str(d)
        need = ("data", *label_keys)
        if any(k not in d for k in need):
            raise ValueError(f"{path}: a CIFAR batch needs keys {', '.join(map(repr, need))}, found "
                             f"{sorted(map(str, d))}")
        data = np.asarray(d["data"])
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
            raise ValueError(f"{path}: 'data' must be uint8 [N, 3072], got {data.dtype} {data.shape}")
        labels = []
        for k in label_keys:
            y = np.asarray(d[k], dtype=np.int64).reshape(-1)
            if y.shape != (data.shape[0],):
                raise ValueError(f"{path}: {data.shape[0]} images but {y.size} {k!r}")
            labels.append(y)
        return data.reshape(-1, 3, 32, 32), labels


def _names_from_meta(path: Path, key: str, expected: int) -> list[str] | None:
    if not path.is_file():
        return None
    meta = load_pickle(path, encoding="bytes")
    with reading(path, "the CIFAR batches.meta pickle"):
        names = _key_str(meta).get(key)
        if names is None or len(names) != expected:
            raise ValueError(f"{path}: expected {expected} names under {key!r}, found "
                             f"{'none' if names is None else len(names)}")
        return [n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in names]


def _load_batches(folder: Path, split: str) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    parts = [read_batch(folder / b) for b in BATCHES[split]]
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1][0] for p in parts])
    names = _names_from_meta(folder / "batches.meta", "label_names", 10) or list(CLASS_NAMES)
    if labels.size and (labels.min() < 0 or labels.max() >= len(names)):
        raise ValueError(f"{folder}: label {int(labels.max())} outside 0..{len(names) - 1}")
    return torch.from_numpy(images), torch.from_numpy(labels), names


MAX_MEMBER_BYTES = 64 << 20  # one image member of an archive; a CIFAR-10 JPEG is about 1 KB
_MEMBER = re.compile(r"(?:^|/)(train|test)/([^/]+)/([^/]+)$")


def _class_index(name: str, where: str) -> int:
    try:
        return CLASS_NAMES.index(name)
    except ValueError:
        raise ValueError(f"{where}: class folder {name!r} is not a CIFAR-10 class ({', '.join(CLASS_NAMES)})") from None


def _pack(items: list[tuple[int, str, np.ndarray]], size: int) -> tuple[dict[str, torch.Tensor], dict]:
    items.sort(key=lambda t: (t[0], t[1]))
    images = stack_hwc([a for _, _, a in items], size)
    labels = torch.tensor([c for c, _, _ in items], dtype=torch.int64)
    return {"images": images, "labels": labels}, {}


def _load_tar(path: Path, split: str, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    def build():
        items = []
        with reading(path, "a tar archive of CIFAR-10 images"), tarfile.open(path, "r:*") as tf:
            for m in tf:  # streamed: a solid .tar.xz is decompressed once, front to back
                if not m.isfile():
                    continue
                match = _MEMBER.search(m.name)
                if not match or match[1] != split or not m.name.lower().endswith(IMAGE_EXTENSIONS):
                    continue
                label = _class_index(match[2], f"{path}:{m.name}")
                if m.size > MAX_MEMBER_BYTES:  # read whole into memory: a huge member is not a CIFAR image
                    raise ValueError(f"{path}:{m.name}: {m.size:,} bytes, too large for a CIFAR-10 image; the "
                                     f"archive is corrupt or not the CIFAR-10 JPEG archive")
                data = tf.extractfile(m).read()  # type: ignore[union-attr]
                items.append((label, match[3], decode_image(data, 3, name=f"{path}:{m.name}")))
        if not items:
            raise ValueError(f"{path}: no {split}/<class>/<image> members found")
        return _pack(items, size)

    t, _ = cached_tensors(f"cifar10-jpeg-{split}-{size}", [path], build)
    return t["images"], t["labels"]


def _load_folder(folder: Path, split: str, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    classes = [(_class_index(c.name, str(c)), c) for c in sorted(folder.iterdir())
               if c.is_dir() and not c.name.startswith(".")]
    files = {i: list_images(c) for i, c in classes}

    def build():
        items = [(i, f.name, decode_image(f, 3)) for i, fs in files.items() for f in fs]
        if not items:
            raise ValueError(f"{folder}: no images in its class folders")
        return _pack(items, size)

    t, _ = cached_tensors(f"cifar10-folder-{split}-{size}", [f for fs in files.values() for f in fs], build)
    return t["images"], t["labels"]


def load(root: Path, split: str, size: int) -> ClassSplit:
    kind, src = _find(root, split)
    names = list(CLASS_NAMES)
    if kind == "batches":
        images, labels, names = _load_batches(src, split)
        images = resize_uint8(images, size)
    elif kind == "tar":
        images, labels = _load_tar(src, split, size)
    else:
        images, labels = _load_folder(src, split, size)
    return ClassSplit.from_labels(images, labels, names, name=f"cifar10/{split}", preprocess=PREPROCESS)


register_dataset(DatasetSpec(
    name="cifar10", splits=SPLITS, image_size=32, channels=3,
    description="CIFAR-10, 10 classes, 50,000 train / 10,000 test, 32x32 RGB (python batches or the JPEG tar.xz)",
    load=load, locate=locate, augment="cifar10"))
