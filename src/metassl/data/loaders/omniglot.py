"""Omniglot (Lake et al. 2015): 1,623 handwritten characters from 50 alphabets, 20 drawers each.

Read from the official zips (`images_background.zip`, `images_evaluation.zip`), their unzipped folders, or the npz
copy (`images_background.npz`, `images_evaluation.npz`). Splits:
- `train`, `val`, `test`, `trainval`: the Vinyals et al. (2016) class split, where each 90-degree rotation of a
  character is a class of its own (4,112 / 688 / 1,692 / 4,800 classes);
- `background`, `evaluation`: Lake's alphabet split, characters unrotated (964 / 659 classes).
Images are resized to 28x28 by default; stored as in the files (white background) and inverted to ink = 1 by the
recorded preprocessing.
"""

from __future__ import annotations

import re
import zipfile
from importlib import resources
from pathlib import Path

import numpy as np
import torch

from ..episodic import ClassSplit, Preprocess
from ..images import decode_image, resize_uint8
from ..registry import DatasetSpec, register_dataset
from ..root import cached_tensors, missing, reading

PARTS = ("background", "evaluation")
VINYALS = ("train", "val", "test", "trainval")
PREPROCESS = Preprocess(invert=True)
_HOW = ("Get images_background.zip and images_evaluation.zip from the official Omniglot repository "
        "(github.com/brendenlake/omniglot, folder python/) and put them in DATA_ROOT/omniglot/.")


def _candidates(root: Path) -> list[Path]:
    return [root / "omniglot", root / "omniglot-py", root]


def _sources(root: Path) -> dict[str, Path]:
    """For each part (background/evaluation) the npz, zip or folder it is read from (npz preferred: fastest)."""
    for base in _candidates(root):
        found = {}
        for part in PARTS:
            for name in (f"images_{part}.npz", f"images_{part}.zip", f"images_{part}"):
                p = base / name
                if p.is_file() or (p.is_dir() and name == f"images_{part}"):
                    found[part] = p
                    break
        if len(found) == 2:
            return found
    looked = [f"{c.name if c != root else '.'}/images_{p}.{{zip,npz}} or folder images_{p}/"
              for c in _candidates(root) for p in PARTS]
    raise missing("omniglot", root, looked, _HOW)


def locate(root: Path) -> Path:
    return _sources(root)["background"].parent


def _read_npz(path: Path) -> tuple[list[str], np.ndarray]:
    with reading(path, "an Omniglot .npz (arrays alphabet, character, images)"), np.load(path, allow_pickle=False) as z:
        names = [f"{a}/{c}" for a, c in zip(z["alphabet"], z["character"])]
        return names, z["images"]


MAX_MEMBER_BYTES = 64 << 20  # one PNG of a zip (read whole into memory); an Omniglot drawing is about 1 KB


_PNG = re.compile(r"(?:^|/)images_(?:background|evaluation)/([^/]+)/([^/]+)/([^/]+\.png)$")


def _read_zip_or_folder(path: Path) -> tuple[list[str], np.ndarray]:
    chars: dict[str, list[tuple[str, np.ndarray]]] = {}
    if path.is_file():
        with reading(path, "a zip of Omniglot PNGs"), zipfile.ZipFile(path) as z:
            for info in z.infolist():
                m = _PNG.search(info.filename)
                if m:
                    if info.file_size > MAX_MEMBER_BYTES:  # a zip bomb member, not a drawing
                        raise ValueError(f"{path}:{info.filename}: {info.file_size:,} bytes uncompressed, too large "
                                         f"for an Omniglot drawing; the zip is corrupt or not Omniglot's")
                    img = decode_image(z.read(info), 1, name=f"{path}:{info.filename}")[:, :, 0]
                    chars.setdefault(f"{m[1]}/{m[2]}", []).append((m[3], img))
    else:
        for png in sorted(path.glob("*/*/*.png")):
            chars.setdefault(f"{png.parent.parent.name}/{png.parent.name}", []).append(
                (png.name, decode_image(png, 1)[:, :, 0]))
    if not chars:
        raise ValueError(f"{path}: no Omniglot PNGs found (expected images_<part>/<Alphabet>/characterNN/*.png)")
    names = sorted(chars)
    sizes = {len(chars[n]) for n in names}
    if len(sizes) != 1:
        bad = min(names, key=lambda n: len(chars[n]))
        raise ValueError(f"{path}: character {bad} has {len(chars[bad])} drawings, others have {max(sizes)}")
    images = np.stack([np.stack([a for _, a in sorted(chars[n])]) for n in names])
    return names, images


def _all_characters(root: Path, size: int) -> tuple[list[str], torch.Tensor]:
    """Every character of both parts: names `Alphabet/characterNN` and uint8 images [1623, 20, 1, size, size]."""
    src = _sources(root)

    def build():
        names, parts = [], []
        for part in PARTS:
            p = src[part]
            n, imgs = _read_npz(p) if p.suffix == ".npz" else _read_zip_or_folder(p)
            t = torch.from_numpy(np.ascontiguousarray(imgs))  # [chars, drawers, H, W]
            c, d, h, w = t.shape
            t = resize_uint8(t.reshape(c * d, 1, h, w), size).reshape(c, d, 1, size, size)
            names += [f"{part}:{x}" for x in n]
            parts.append(t)
        return {"images": torch.cat(parts)}, {"names": names}

    tensors, meta = cached_tensors(f"omniglot-{size}", [src[p] for p in PARTS], build)
    return meta["names"], tensors["images"]


def _split_lines(root: Path, split: str) -> list[str]:
    for base in _candidates(root):
        f = base / "splits" / "vinyals" / f"{split}.txt"
        if f.is_file():
            return [ln.strip() for ln in f.read_text().splitlines() if ln.strip()]
    text = resources.files("metassl.data").joinpath(f"splits/omniglot_vinyals/{split}.txt").read_text()
    return [ln.strip() for ln in text.splitlines() if ln.strip()]


def load(root: Path, split: str, size: int) -> ClassSplit:
    names, images = _all_characters(root, size)
    if split in PARTS:
        keep = [i for i, n in enumerate(names) if n.startswith(f"{split}:")]
        imgs = images[keep]
        class_names = [names[i].split(":", 1)[1] for i in keep]
        counts = torch.full((len(keep),), imgs.shape[1])
        return ClassSplit(imgs.reshape(-1, *imgs.shape[2:]), counts, class_names, name=f"omniglot/{split}",
                          preprocess=PREPROCESS)
    index = {n.split(":", 1)[1]: i for i, n in enumerate(names)}
    blocks, class_names = [], []
    for line in _split_lines(root, split):
        try:
            char, rot = line.rsplit("/", 1)
            k = int(rot[3:]) // 90
            i = index[char]
        except (KeyError, ValueError) as e:
            raise ValueError(f"Omniglot split {split!r}: line {line!r} names no known character/rotation "
                             f"(expected Alphabet/characterNN/rotDDD)") from e
        # torch.rot90 with k>0 turns counter-clockwise, as PIL's Image.rotate in the reference implementation
        blocks.append(torch.rot90(images[i], k, dims=(-2, -1)))
        class_names.append(line)
    imgs = torch.cat(blocks)
    counts = torch.full((len(blocks),), images.shape[1])
    return ClassSplit(imgs, counts, class_names, name=f"omniglot/{split}", preprocess=PREPROCESS)


register_dataset(DatasetSpec(
    name="omniglot", splits=VINYALS + PARTS, image_size=28, channels=1,
    description="Omniglot, 1,623 characters x 20 drawers; Vinyals split with rotations, or background/evaluation",
    load=load, locate=locate, augment="omniglot"))
