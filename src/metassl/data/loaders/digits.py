"""scikit-learn's bundled digits (UCI optical recognition of handwritten digits): 1,797 images of 8x8 pixels with 17
gray levels (0..16, ink high), 10 classes of about 180 images. Always available offline (it ships with
scikit-learn); the data root is not used.

Pixel values 0..16 are scaled to 0..255 (v * 255 / 16, rounded). Splits for few-shot work on disjoint classes:
`train` = digits 0-5, `test` = digits 6-9; `all` = the ten digits. Images are 8x8 by default (resized on request).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..episodic import ClassSplit, Preprocess
from ..images import resize_uint8
from ..registry import DatasetSpec, register_dataset
from ..root import DatasetNotFoundError

SPLITS = ("train", "test", "all")
CLASSES = {"train": list(range(0, 6)), "test": list(range(6, 10)), "all": list(range(10))}
PREPROCESS = Preprocess(mean=(0.3053,), std=(0.3759,))  # of all 1,797 images after scaling to 0..255


def locate(root: Path) -> Path:
    """The CSV scikit-learn reads the digits from (inside the installed package)."""
    try:
        import sklearn.datasets
    except ImportError as e:  # pragma: no cover - scikit-learn is a dependency
        raise DatasetNotFoundError("data set 'digits' needs scikit-learn: pip install scikit-learn") from e
    p = Path(sklearn.datasets.__file__).parent / "data" / "digits.csv.gz"
    if not p.is_file():
        raise DatasetNotFoundError(f"data set 'digits': scikit-learn's bundled file {p} is missing; "
                                   f"reinstall scikit-learn (pip install --force-reinstall scikit-learn)")
    return p


def _all_digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    images = np.round(np.asarray(d.images, dtype=np.float64) * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    return images, np.asarray(d.target, dtype=np.int64)


def load(root: Path, split: str, size: int) -> ClassSplit:
    locate(root)
    images, labels = _all_digits()
    keep = CLASSES[split]
    mask = np.isin(labels, keep)
    x = resize_uint8(torch.from_numpy(images[mask]).unsqueeze(1).contiguous(), size)
    y = torch.from_numpy(labels[mask] - keep[0])  # labels of a split are contiguous digits
    return ClassSplit.from_labels(x, y, [str(d) for d in keep], name=f"digits/{split}", preprocess=PREPROCESS)


register_dataset(DatasetSpec(
    name="digits", splits=SPLITS, image_size=8, channels=1,
    description="scikit-learn's 8x8 digits, 1,797 images, always offline; train = 0-5, test = 6-9, all = 0-9",
    load=load, locate=locate, augment="mnist"))
