"""Double-MNIST and Triple-MNIST (Sun 2019, "Multi-digit MNIST for few-shot learning"; torchmeta's `DoubleMNIST`,
`TripleMNIST`): images of 2 (3) MNIST digits side by side; the number they read is the class, 100 (1,000) classes
`00`..`99` (`000`..`999`), split 64/16/20 (640/160/200) classes into train/val/test as torchmeta's assets
(`data/splits/{double,triple}_mnist/`), 1,000 images per class, 64x64 (84x84) grayscale.

Built here, deterministically, from the MNIST IDX files (`metassl datasets` finds them as for `mnist`), and cached
like the other decoded data sets. Deviation: the published archives are not used (they cannot be downloaded here)
and our composition is our own: digit i of the number is a 28x28 MNIST image of that digit pasted at horizontal
slot i of the canvas (slots spread evenly over its width, each shifted by up to 4 pixels) and a uniformly random
height, overlaps keep the brighter pixel. Classes of the train split take their digits from MNIST's training
images, val and test classes from MNIST's test images. Image j of class c is a pure function of (data set, class, j)
given the MNIST files: a generator seeded by the class's identity draws it, whatever split or image size is built.
`data.options.images_per_class` (default 1,000, torchmeta's) builds fewer images per class (the first ones).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import numpy as np
import torch

from ..episodic import ClassSplit, Preprocess, episode_seed
from ..images import resize_uint8
from ..registry import DatasetSpec, register_dataset
from ..root import cached_tensors
from . import mnist as _mnist

SPLITS = ("train", "val", "test")
DIGIT = 28
JITTER = 4
VERSION = "v1"  # enters every class's seed: a change of the composition changes it (and the cache key)
PREPROCESS = Preprocess(invert=False)  # white digits on black, as MNIST


def split_classes(name: str, split: str) -> list[str]:
    text = resources.files("metassl.data").joinpath(f"splits/{name}/{split}.txt").read_text()
    return [ln.strip() for ln in text.splitlines() if ln.strip()]


def _digit_pools(images: np.ndarray, labels: np.ndarray) -> list[np.ndarray]:
    """The images of each digit 0-9, [n_d, 28, 28] uint8, in file order."""
    return [images[labels == d] for d in range(10)]


def compose_class(name: str, number: str, pools: list[np.ndarray], count: int, canvas: int) -> np.ndarray:
    """`count` images [count, canvas, canvas] uint8 of the number `number` (e.g. "07"), a pure function of
    (name, number, image index) given the digit pools."""
    n = len(number)
    g = np.random.Generator(np.random.PCG64(episode_seed(name, number, VERSION)))
    out = np.zeros((count, canvas, canvas), dtype=np.uint8)
    span = canvas - DIGIT
    for j in range(count):
        for i, ch in enumerate(number):
            pool = pools[int(ch)]
            img = pool[int(g.integers(len(pool)))]
            x = int(np.clip(round(i * span / (n - 1)) + int(g.integers(-JITTER, JITTER + 1)), 0, span))
            y = int(g.integers(0, span + 1))
            np.maximum(out[j, y:y + DIGIT, x:x + DIGIT], img, out=out[j, y:y + DIGIT, x:x + DIGIT])
    return out


def _make_load(name: str, digits: int, canvas: int):
    def load(root: Path, split: str, size: int, options: dict) -> ClassSplit:
        per_class = options.get("images_per_class", 1000)
        if not isinstance(per_class, int) or isinstance(per_class, bool) or not 2 <= per_class <= 100000:
            raise ValueError(f"data.options.images_per_class must be an integer in [2, 100000], got {per_class!r}")
        mnist_split = "train" if split == "train" else "test"
        image_file, label_file = _mnist._files(root, mnist_split)
        classes = split_classes(name, split)

        def build():
            imgs = _mnist.read_idx(image_file, _mnist._IMAGES_MAGIC)
            labs = _mnist.read_idx(label_file, _mnist._LABELS_MAGIC)
            pools = _digit_pools(imgs, labs)
            blocks = []
            for c in classes:
                x = torch.from_numpy(compose_class(name, c, pools, per_class, canvas)).unsqueeze(1)
                blocks.append(resize_uint8(x, size))
            return {"images": torch.cat(blocks)}, {"classes": classes}

        tensors, meta = cached_tensors(f"{name}-{split}-{size}-{per_class}-{VERSION}", [image_file, label_file],
                                       build)
        counts = torch.full((len(meta["classes"]),), per_class)
        return ClassSplit(tensors["images"], counts, list(meta["classes"]), name=f"{name}/{split}",
                          preprocess=PREPROCESS)

    return load


def _locate(root: Path) -> Path:
    return _mnist.locate(root)


for _name, _digits, _canvas, _n in (("double_mnist", 2, 64, "100 classes 00-99, 64/16/20"),
                                    ("triple_mnist", 3, 84, "1,000 classes 000-999, 640/160/200")):
    register_dataset(DatasetSpec(
        name=_name, splits=SPLITS, image_size=_canvas, channels=1,
        description=f"{'Double' if _digits == 2 else 'Triple'}-MNIST (Sun 2019, torchmeta's splits): {_digits} MNIST "
                    f"digits on a {_canvas}x{_canvas} canvas, {_n} train/val/test classes, built from the MNIST "
                    f"files (data.options.images_per_class, default 1,000)",
        load=_make_load(_name, _digits, _canvas), locate=_locate, augment="mnist", takes_options=True))
