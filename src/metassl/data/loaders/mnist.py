"""MNIST (LeCun et al. 1998): 70,000 handwritten digits 0-9, 28x28 grayscale; splits `train` (60,000), `test` (10,000).

Read from the official IDX files, gzipped or not: `train-images-idx3-ubyte[.gz]`, `train-labels-idx1-ubyte[.gz]`,
`t10k-images-idx3-ubyte[.gz]`, `t10k-labels-idx1-ubyte[.gz]`, looked for in DATA_ROOT/mnist, DATA_ROOT/MNIST/raw
(torchvision's layout) and DATA_ROOT itself. Decoding is a memory copy, so nothing is cached.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np
import torch

from ..episodic import ClassSplit, Preprocess
from ..images import resize_uint8
from ..registry import DatasetSpec, register_dataset
from ..root import missing

SPLITS = ("train", "test")
CLASS_NAMES = [str(d) for d in range(10)]
PREPROCESS = Preprocess(invert=False, mean=(0.1307,), std=(0.3081,))
_PREFIX = {"train": "train", "test": "t10k"}
_IMAGES_MAGIC, _LABELS_MAGIC = 2051, 2049
_HOW = ("Get train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz and "
        "t10k-labels-idx1-ubyte.gz (the official MNIST IDX files, e.g. from yann.lecun.com/exdb/mnist or a mirror "
        "such as torchvision's) and put them in DATA_ROOT/mnist/ (gzipped or not).")


def _candidates(root: Path) -> list[Path]:
    return [root / "mnist", root / "MNIST" / "raw", root]


def _find(base: Path, stem: str) -> Path | None:
    """`stem` or `stem.gz` in `base`; also the `train-images.idx3-ubyte` spelling some archives unpack to."""
    dotted = stem.replace("-idx", ".idx")
    for name in (stem, f"{stem}.gz", dotted, f"{dotted}.gz"):
        p = base / name
        if p.is_file():
            return p
    return None


def _files(root: Path, split: str) -> tuple[Path, Path]:
    prefix = _PREFIX[split]
    stems = (f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte")
    for base in _candidates(root):
        images, labels = _find(base, stems[0]), _find(base, stems[1])
        if images and labels:
            return images, labels
    looked = [str((c.relative_to(root) if c != root else Path(".")) / f"{s}[.gz]")
              for c in _candidates(root) for s in stems]
    raise missing("mnist", root, looked, _HOW)


def locate(root: Path) -> Path:
    return _files(root, "test")[0].parent


MAX_IDX_BYTES = 1 << 31  # MNIST's largest file holds 47 MB; more is a corrupt header or a gzip bomb


def _open(path: Path):
    with open(path, "rb") as f:
        head = f.read(2)
    return gzip.open(path, "rb") if head == b"\x1f\x8b" else open(path, "rb")


def read_idx(path: Path, magic: int) -> np.ndarray:
    """Parse an IDX file of unsigned bytes: magic 2051 gives [N, rows, cols] images, 2049 gives [N] labels. The
    header is read first and then exactly the bytes it announces, so a gzip bomb is never decompressed whole."""
    ndim = 3 if magic == _IMAGES_MAGIC else 1
    header_len = 4 + 4 * ndim
    kind = "images (idx3)" if ndim == 3 else "labels (idx1)"
    try:
        with _open(path) as f:
            header = f.read(header_len)
            if len(header) < header_len:
                raise ValueError(f"{path}: only {len(header)} bytes, too short for an MNIST {kind} IDX header")
            found = int.from_bytes(header[:4], "big")
            if found != magic:
                raise ValueError(f"{path}: IDX magic number is {found}, expected {magic} for MNIST {kind}; "
                                 f"is this the right file (images vs labels) and is it intact?")
            dims = [int.from_bytes(header[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
            want = int(np.prod(dims, dtype=np.int64)) if dims else 0
            if want > MAX_IDX_BYTES:
                raise ValueError(f"{path}: the header announces {' x '.join(map(str, dims))} = {want:,} bytes, more "
                                 f"than any MNIST file; it is corrupt: re-download it")
            data = f.read(want + 1)  # one byte more: a longer file is as wrong as a shorter one
    except (OSError, EOFError, zlib.error) as e:
        raise ValueError(f"cannot read MNIST file {path}: {e}. The file is corrupt or truncated; "
                         f"re-download it.") from e
    if len(data) != want:
        what = f"more than {want + header_len}" if len(data) > want else f"{len(data) + header_len}"
        raise ValueError(f"{path}: the header announces {' x '.join(map(str, dims))} bytes of data "
                         f"({want + header_len} bytes in all) but the file holds {what} bytes; it is truncated or "
                         f"corrupt")
    return np.frombuffer(data, dtype=np.uint8).reshape(dims)


def load(root: Path, split: str, size: int) -> ClassSplit:
    image_file, label_file = _files(root, split)
    images = read_idx(image_file, _IMAGES_MAGIC)
    labels = read_idx(label_file, _LABELS_MAGIC)
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"MNIST {split}: {image_file} holds {images.shape[0]} images but {label_file} holds "
                         f"{labels.shape[0]} labels")
    if labels.size and int(labels.max()) > 9:
        raise ValueError(f"{label_file}: label {int(labels.max())} is not a digit 0-9")
    x = torch.from_numpy(images.copy()).unsqueeze(1)  # [N, 1, 28, 28]
    x = resize_uint8(x, size)
    return ClassSplit.from_labels(x, torch.from_numpy(labels.astype(np.int64)), list(CLASS_NAMES),
                                  name=f"mnist/{split}", preprocess=PREPROCESS)


register_dataset(DatasetSpec(
    name="mnist", splits=SPLITS, image_size=28, channels=1,
    description="MNIST handwritten digits, 10 classes, 60,000 train / 10,000 test, 28x28 grayscale (IDX files)",
    load=load, locate=locate, augment="mnist"))
