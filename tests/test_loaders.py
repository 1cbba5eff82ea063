"""Data set loaders on small synthetic files of each supported layout, plus the real data in ../shared/data."""

from __future__ import annotations

import gzip
import io
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from metassl.data import DatasetNotFoundError, ImageReadError, get_dataset, load_dataset
from metassl.data.loaders.folder import load_image_folder
from metassl.data.safe_pickle import UnsafePickleError, load_pickle

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
CIFAR100 = {  # superclass -> its five fine classes, as in the CIFAR-100 meta file
    "aquatic_mammals": ["beaver", "dolphin", "otter", "seal", "whale"],
    "fish": ["aquarium_fish", "flatfish", "ray", "shark", "trout"],
    "flowers": ["orchid", "poppy", "rose", "sunflower", "tulip"],
    "food_containers": ["bottle", "bowl", "can", "cup", "plate"],
    "fruit_and_vegetables": ["apple", "mushroom", "orange", "pear", "sweet_pepper"],
    "household_electrical_devices": ["clock", "keyboard", "lamp", "telephone", "television"],
    "household_furniture": ["bed", "chair", "couch", "table", "wardrobe"],
    "insects": ["bee", "beetle", "butterfly", "caterpillar", "cockroach"],
    "large_carnivores": ["bear", "leopard", "lion", "tiger", "wolf"],
    "large_man-made_outdoor_things": ["bridge", "castle", "house", "road", "skyscraper"],
    "large_natural_outdoor_scenes": ["cloud", "forest", "mountain", "plain", "sea"],
    "large_omnivores_and_herbivores": ["camel", "cattle", "chimpanzee", "elephant", "kangaroo"],
    "medium_mammals": ["fox", "porcupine", "possum", "raccoon", "skunk"],
    "non-insect_invertebrates": ["crab", "lobster", "snail", "spider", "worm"],
    "people": ["baby", "boy", "girl", "man", "woman"],
    "reptiles": ["crocodile", "dinosaur", "lizard", "snake", "turtle"],
    "small_mammals": ["hamster", "mouse", "rabbit", "shrew", "squirrel"],
    "trees": ["maple_tree", "oak_tree", "palm_tree", "pine_tree", "willow_tree"],
    "vehicles_1": ["bicycle", "bus", "motorcycle", "pickup_truck", "train"],
    "vehicles_2": ["lawn_mower", "rocket", "streetcar", "tank", "tractor"],
}
FINE = sorted(f for fs in CIFAR100.values() for f in fs)
COARSE = sorted(CIFAR100)
FINE_TO_COARSE = {f: c for c, fs in CIFAR100.items() for f in fs}


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("METASSL_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("METASSL_NO_CACHE", raising=False)
    monkeypatch.delenv("METASSL_DATA", raising=False)


def snapshot(root: Path) -> list[tuple[str, int, int]]:
    """Every file and folder under root with size and modification time: equal before/after = nothing written."""
    return sorted((str(p.relative_to(root)), p.stat().st_size, p.stat().st_mtime_ns) for p in [root, *root.rglob("*")])


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def by_class(images: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Images reordered as a ClassSplit stores them (stable sort by label)."""
    return images[np.argsort(labels, kind="stable")]


def png_bytes(a: np.ndarray, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a, mode=mode).save(buf, format="PNG") if mode else Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


def jpeg_bytes(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def pil_rgb(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


# ----------------------------------------------------------------------------------------------- restricted pickles

class _Evil:
    def __init__(self, target: Path):
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


def test_safe_pickle_loads_numpy_and_containers():
    a = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    obj = {b"data": a, "labels": [1, 2, np.int64(3)], "f": np.float32(0.5), "s": {1, 2}, "t": (1, "x")}
    for protocol in (2, 4, 5):
        out = load_pickle(pickle.dumps(obj, protocol=protocol))
        np.testing.assert_array_equal(out[b"data"], a)
        assert out["labels"] == [1, 2, 3] and out["s"] == {1, 2} and out["t"] == (1, "x")


def test_safe_pickle_refuses_code(tmp_path):
    target = tmp_path / "pwned"
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"data": _Evil(target)}, protocol=2))
    with pytest.raises(UnsafePickleError) as e:
        load_pickle(path)
    msg = str(e.value)
    assert str(path) in msg and "system" in msg
    assert not target.exists()
    with pytest.raises(UnsafePickleError, match="builtins.eval"):
        load_pickle(b"cbuiltins\neval\n(S'1+1'\ntR.")


def test_malicious_cifar_batch_is_refused(tmp_path):
    root = tmp_path / "data"
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    target = tmp_path / "pwned"
    (folder / "test_batch").write_bytes(pickle.dumps({b"data": _Evil(target), b"labels": [0]}, protocol=2))
    with pytest.raises(UnsafePickleError) as e:
        load_dataset("cifar10", "test", root)
    assert str(folder / "test_batch") in str(e.value)
    assert not target.exists()


# ----------------------------------------------------------------------------------------------------------- MNIST

def idx_bytes(a: np.ndarray, magic: int) -> bytes:
    header = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in a.shape)
    return header + a.astype(np.uint8).tobytes()


def write_mnist(folder: Path, gz: bool, n: dict[str, int] | None = None, seed: int = 0) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        count = (n or {"train": 30, "test": 20})[split]
        g = rng(seed + len(split))
        images = g.integers(0, 256, (count, 28, 28), dtype=np.uint8)
        labels = np.arange(count) % 10
        g.shuffle(labels)
        for stem, data in ((f"{prefix}-images-idx3-ubyte", idx_bytes(images, 2051)),
                           (f"{prefix}-labels-idx1-ubyte", idx_bytes(labels, 2049))):
            (folder / (stem + ".gz" if gz else stem)).write_bytes(gzip.compress(data) if gz else data)
        out[split] = (images, labels)
    return out


@pytest.mark.parametrize("layout,gz", [("mnist", True), ("MNIST/raw", False), (".", True)])
def test_mnist(tmp_path, layout, gz):
    root = tmp_path / "data"
    truth = write_mnist(root / layout, gz)
    before = snapshot(root)
    for split in ("train", "test"):
        s = load_dataset("mnist", split, root)
        images, labels = truth[split]
        assert s.name == f"mnist/{split}" and s.images.dtype == torch.uint8
        assert s.image_shape == (1, 28, 28) and s.class_names == [str(d) for d in range(10)]
        assert s.counts.tolist() == np.bincount(labels, minlength=10).tolist()
        np.testing.assert_array_equal(s.images[:, 0].numpy(), by_class(images, labels))
        assert s.preprocess.mean == (0.1307,) and not s.preprocess.invert
    assert load_dataset("mnist", "test", root, image_size=14).image_shape == (1, 14, 14)
    assert snapshot(root) == before


def test_mnist_bad_files(tmp_path):
    root = tmp_path / "data"
    write_mnist(root / "mnist", gz=False)
    img = root / "mnist" / "t10k-images-idx3-ubyte"
    lab = root / "mnist" / "t10k-labels-idx1-ubyte"
    good = img.read_bytes()
    img.write_bytes(lab.read_bytes())  # a labels file where images are expected
    with pytest.raises(ValueError, match="magic number is 2049, expected 2051") as e:
        load_dataset("mnist", "test", root)
    assert str(img) in str(e.value)
    img.write_bytes(good[:-10])
    with pytest.raises(ValueError, match="truncated") as e:
        load_dataset("mnist", "test", root)
    assert str(img) in str(e.value)
    img.write_bytes(good)
    lab.write_bytes(idx_bytes(np.zeros(3, np.uint8), 2049))
    with pytest.raises(ValueError, match="20 images but .* 3 labels"):
        load_dataset("mnist", "test", root)


def test_mnist_missing(tmp_path):
    with pytest.raises(DatasetNotFoundError) as e:
        load_dataset("mnist", "train", tmp_path)
    msg = str(e.value)
    for p in ("mnist/train-images-idx3-ubyte[.gz]", "MNIST/raw/train-labels-idx1-ubyte[.gz]"):
        assert str(tmp_path / p) in msg
    assert "DATA_ROOT/mnist" in msg


# -------------------------------------------------------------------------------------------------------- CIFAR-10

def write_cifar10_batches(folder: Path, per_batch: int = 12, protocol: int = 2) -> dict:
    folder.mkdir(parents=True)
    out = {"train": ([], []), "test": ([], [])}
    names = ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch"]
    for i, name in enumerate(names):
        g = rng(i)
        data = g.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        labels = [int(x) for x in g.integers(0, 10, per_batch)]
        (folder / name).write_bytes(pickle.dumps({b"batch_label": name.encode(), b"labels": labels, b"data": data,
                                                  b"filenames": [b"x.png"] * per_batch}, protocol=protocol))
        split = "test" if name == "test_batch" else "train"
        out[split][0].append(data)
        out[split][1].append(np.array(labels))
    meta = {b"num_cases_per_batch": per_batch, b"label_names": [c.encode() for c in CIFAR10_CLASSES],
            b"num_vis": 3072}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=protocol))
    return {k: (np.concatenate(v[0]).reshape(-1, 3, 32, 32), np.concatenate(v[1])) for k, v in out.items()}


@pytest.mark.parametrize("protocol", [2, 5])
def test_cifar10_python_batches(tmp_path, protocol):
    root = tmp_path / "data"
    truth = write_cifar10_batches(root / "cifar-10-batches-py", protocol=protocol)
    before = snapshot(root)
    for split, n in (("train", 60), ("test", 12)):
        s = load_dataset("cifar10", split, root)
        images, labels = truth[split]
        present = sorted(set(labels.tolist()))
        assert s.images.shape == (n, 3, 32, 32) and s.images.dtype == torch.uint8
        assert s.class_names == [CIFAR10_CLASSES[c] for c in present]
        np.testing.assert_array_equal(s.images.numpy(), by_class(images, labels))
        assert s.preprocess.mean == (0.4914, 0.4822, 0.4465)
    assert load_dataset("cifar10", "test", root, image_size=16).image_shape == (3, 16, 16)
    assert snapshot(root) == before
    assert get_dataset("cifar10").locate(root) == root / "cifar-10-batches-py"


def make_cifar10_jpegs(per_class: dict[str, int]) -> dict[str, bytes]:
    files = {}
    for split, n in per_class.items():
        for c, name in enumerate(CIFAR10_CLASSES):
            for i in range(n):
                a = rng((0 if split == "train" else 1000) + 10 * c + i).integers(0, 256, (32, 32, 3), dtype=np.uint8)
                files[f"{split}/{name}/{i:04d}.jpg"] = jpeg_bytes(a)
    return files


def test_cifar10_jpeg_tar(tmp_path):
    root = tmp_path / "data"
    (root / "cifar10-jpeg").mkdir(parents=True)
    files = make_cifar10_jpegs({"train": 3, "test": 2})
    tar = root / "cifar10-jpeg" / "cifar10_jpeg_q75.tar.xz"
    with tarfile.open(tar, "w:xz") as tf:
        for name in sorted(files, reverse=True):  # member order must not matter
            info = tarfile.TarInfo(name)
            info.size = len(files[name])
            tf.addfile(info, io.BytesIO(files[name]))
    before = snapshot(root)
    for split, n in (("train", 3), ("test", 2)):
        s = load_dataset("cifar10", split, root)
        assert s.name == f"cifar10/{split}" and s.class_names == CIFAR10_CLASSES
        assert s.counts.tolist() == [n] * 10 and s.images.shape == (10 * n, 3, 32, 32)
        expected = np.stack([pil_rgb(files[f"{split}/{c}/{i:04d}.jpg"]).transpose(2, 0, 1)
                             for c in CIFAR10_CLASSES for i in range(n)])
        np.testing.assert_array_equal(s.images.numpy(), expected)
    assert any((tmp_path / "cache").glob("cifar10-jpeg-test-32-*.safetensors"))
    again = load_dataset("cifar10", "test", root)  # from the cache
    assert torch.equal(again.images, s.images) and again.class_names == CIFAR10_CLASSES
    assert snapshot(root) == before


def test_cifar10_jpeg_folder(tmp_path):
    root = tmp_path / "data"
    files = make_cifar10_jpegs({"test": 2})
    for name, data in files.items():
        p = root / "cifar10-jpeg" / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    before = snapshot(root)
    s = load_dataset("cifar10", "test", root)
    assert s.counts.tolist() == [2] * 10 and s.class_names == CIFAR10_CLASSES
    np.testing.assert_array_equal(s.images[0].numpy(), pil_rgb(files["test/airplane/0000.jpg"]).transpose(2, 0, 1))
    assert snapshot(root) == before
    with pytest.raises(DatasetNotFoundError):
        load_dataset("cifar10", "train", root)


def test_cifar10_missing(tmp_path):
    with pytest.raises(DatasetNotFoundError) as e:
        load_dataset("cifar10", "test", tmp_path)
    msg = str(e.value)
    assert str(tmp_path / "cifar-10-batches-py") in msg
    assert str(tmp_path / "cifar10-jpeg" / "cifar10_jpeg_q75.tar.xz") in msg
    assert "cifar-10-python.tar.gz" in msg


# ---------------------------------------------------------------------------------------------------- image folder

def write_image_folder(root: Path) -> dict[str, np.ndarray]:
    """Two classes, mixed formats/modes/sizes; returns the expected decoded RGB pixels of the lossless files."""
    g = rng(3)
    cat, other = root / "cat", root / "ça_é日本"
    for d in (cat, other, root / ".git"):
        d.mkdir(parents=True)
    rgb = g.integers(0, 256, (10, 12, 3), dtype=np.uint8)
    gray = g.integers(0, 256, (10, 12), dtype=np.uint8)
    rgba = g.integers(0, 256, (10, 12, 4), dtype=np.uint8)
    rgba[..., 3] = 255
    rgba[0, 0, 3] = 0  # one transparent pixel: composited onto white
    (cat / "a.png").write_bytes(png_bytes(rgb))
    (cat / "b.jpg").write_bytes(jpeg_bytes(g.integers(0, 256, (10, 12, 3), dtype=np.uint8)))
    (cat / "c.png").write_bytes(png_bytes(gray))
    (cat / ".hidden.png").write_bytes(b"not an image")
    (cat / "notes.txt").write_text("ignored")
    (other / "d.png").write_bytes(png_bytes(rgba))
    (other / "e.png").write_bytes(png_bytes(g.integers(0, 256, (20, 20, 3), dtype=np.uint8)))
    (root / ".git" / "x.png").write_bytes(b"junk")
    expected_rgba = rgba[..., :3].copy()
    expected_rgba[0, 0] = 255
    return {"a": rgb, "c": np.repeat(gray[..., None], 3, axis=2), "d": expected_rgba}


def test_image_folder(tmp_path):
    root = tmp_path / "data"
    truth = write_image_folder(root)
    before = snapshot(root)
    s = load_image_folder(root)
    assert s.class_names == ["cat", "ça_é日本"] and s.counts.tolist() == [3, 2]
    assert s.images.dtype == torch.uint8 and s.images.shape == (5, 3, 10, 12)  # most common size, colour
    np.testing.assert_array_equal(s.images[0].permute(1, 2, 0).numpy(), truth["a"])
    np.testing.assert_array_equal(s.images[2].permute(1, 2, 0).numpy(), truth["c"])
    np.testing.assert_array_equal(s.images[3].permute(1, 2, 0).numpy(), truth["d"])
    assert s.preprocess.mean == (0.485, 0.456, 0.406)
    again = load_image_folder(root, name="mine")  # cached
    assert torch.equal(again.images, s.images) and again.class_names == s.class_names and again.name == "mine"
    r = load_image_folder(root, image_size=16, channels=1)
    assert r.images.shape == (5, 1, 16, 16)
    assert snapshot(root) == before


def test_image_folder_grayscale_detected(tmp_path):
    root = tmp_path / "gray"
    for c in ("x", "y"):
        (root / c).mkdir(parents=True)
        for i in range(2):
            (root / c / f"{i}.png").write_bytes(png_bytes(rng(i).integers(0, 256, (8, 8), dtype=np.uint8)))
    s = load_image_folder(root)
    assert s.image_shape == (1, 8, 8) and s.num_classes == 2
    assert s.preprocess.mean == ()


def test_image_folder_errors(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="does not exist"):
        load_image_folder(tmp_path / "nope")
    flat = tmp_path / "flat"
    flat.mkdir()
    (flat / "a.png").write_bytes(png_bytes(np.zeros((4, 4, 3), np.uint8)))
    with pytest.raises(DatasetNotFoundError, match="no class sub-folders"):
        load_image_folder(flat)
    root = tmp_path / "data"
    write_image_folder(root)
    (root / "empty").mkdir()
    with pytest.raises(ValueError) as e:
        load_image_folder(root)
    assert str(root / "empty") in str(e.value)
    (root / "empty").rmdir()
    bad = root / "cat" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(ImageReadError) as e:  # found while probing sizes/modes
        load_image_folder(root)
    assert str(bad) in str(e.value)
    with pytest.raises(ImageReadError) as e:  # found while decoding
        load_image_folder(root, image_size=8, channels=3)
    assert str(bad) in str(e.value)


def test_folder_dataset(tmp_path):
    root = tmp_path / "data"
    write_image_folder(root / "train")
    write_image_folder(root / "test")
    before = snapshot(root)
    s = load_dataset("folder", "train", root)
    assert s.name == "folder/train" and s.images.shape == (5, 3, 12, 12)  # the median longer side, colour
    assert s.class_names == ["cat", "ça_é日本"] and s.preprocess.std == (0.229, 0.224, 0.225)
    all_ = load_dataset("folder", "all", root / "test", image_size=32)
    assert all_.name == "folder/all" and all_.image_shape == (3, 32, 32) and all_.num_classes == 2
    assert snapshot(root) == before
    with pytest.raises(DatasetNotFoundError) as e:
        load_dataset("folder", "val", root)
    assert str(root / "val" / "<class>" / "<image>") in str(e.value)


# ---------------------------------------------------------------------------------------------------------- digits

def test_digits():
    s = load_dataset("digits", "all")
    assert s.images.shape == (1797, 1, 8, 8) and s.images.dtype == torch.uint8
    assert s.class_names == [str(d) for d in range(10)] and int(s.counts.sum()) == 1797
    assert int(s.images.max()) == 255 and int(s.images.min()) == 0
    assert set(torch.unique(s.images).tolist()) <= {round(v * 255 / 16) for v in range(17)}
    train, test = load_dataset("digits", "train"), load_dataset("digits", "test", image_size=16)
    assert train.class_names == ["0", "1", "2", "3", "4", "5"] and test.class_names == ["6", "7", "8", "9"]
    assert int(train.counts.sum()) + int(test.counts.sum()) == 1797
    assert test.image_shape == (1, 16, 16)
    np.testing.assert_array_equal(train.images.numpy(), s.images[: int(train.counts.sum())].numpy())


# ---------------------------------------------------------------------------------------------------- miniImageNet

def test_miniimagenet_csv(tmp_path):
    root = tmp_path / "data"
    base = root / "miniimagenet"
    (base / "images" / "n02").mkdir(parents=True)
    rows, expected = [], {}
    for c, wnid in enumerate(["n02", "n01"]):  # listed out of order: classes come out sorted
        for i in range(3):
            fname = f"{wnid}{i:08d}.jpg"
            shape = (100, 90, 3) if (c, i) == (0, 2) else (84, 84, 3)
            data = jpeg_bytes(rng(10 * c + i).integers(0, 256, shape, dtype=np.uint8))
            where = base / "images" / (f"{wnid}/{fname}" if (c, i) == (0, 1) else fname)
            where.write_bytes(data)
            rows.append(f"{fname},{wnid}")
            expected[fname] = pil_rgb(data)
    (base / "test.csv").write_text("filename,label\n" + "\n".join(rows) + "\n")
    before = snapshot(root)
    s = load_dataset("miniimagenet", "test", root)
    assert s.name == "miniimagenet/test" and s.class_names == ["n01", "n02"] and s.counts.tolist() == [3, 3]
    assert s.images.shape == (6, 3, 84, 84) and s.images.dtype == torch.uint8
    np.testing.assert_array_equal(s.images[0].permute(1, 2, 0).numpy(), expected["n0100000000.jpg"])
    np.testing.assert_array_equal(s.images[4].permute(1, 2, 0).numpy(), expected["n0200000001.jpg"])
    assert s.preprocess.mean == (0.485, 0.456, 0.406)
    assert load_dataset("miniimagenet", "test", root, image_size=32).image_shape == (3, 32, 32)
    assert snapshot(root) == before
    (base / "images" / "n0100000001.jpg").unlink()
    with pytest.raises(DatasetNotFoundError, match="n0100000001.jpg"):
        load_dataset("miniimagenet", "test", root)


def test_miniimagenet_learn2learn_pickle(tmp_path):
    root = tmp_path / "data"
    (root / "mini-imagenet").mkdir(parents=True)
    images = rng(1).integers(0, 256, (6, 84, 84, 3), dtype=np.uint8)
    d = {"image_data": images, "class_dict": {"n2": [1, 3, 5], "n1": [0, 2, 4]}}
    (root / "mini-imagenet" / "mini-imagenet-cache-validation.pkl").write_bytes(pickle.dumps(d, protocol=4))
    before = snapshot(root)
    s = load_dataset("miniimagenet", "val", root)
    assert s.name == "miniimagenet/val" and s.class_names == ["n1", "n2"] and s.counts.tolist() == [3, 3]
    np.testing.assert_array_equal(s.images.permute(0, 2, 3, 1).numpy(), images[[0, 2, 4, 1, 3, 5]])
    assert snapshot(root) == before
    with pytest.raises(DatasetNotFoundError) as e:
        load_dataset("miniimagenet", "train", root)
    msg = str(e.value)
    for p in ("miniimagenet/mini-imagenet-cache-train.pkl",
              "miniImageNet/miniImageNet_category_split_train_phase_train.pickle", "mini-imagenet/train.csv"):
        assert str(root / p) in msg


def test_miniimagenet_metaoptnet_pickle(tmp_path):
    root = tmp_path / "data"
    (root / "miniImageNet").mkdir(parents=True)
    images = rng(2).integers(0, 256, (5, 84, 84, 3), dtype=np.uint8)
    labels = [80, 81, 80, 81, 81]
    d = {"data": images, "labels": labels, "catname2label": {"n9": 80, "n8": 81}}
    (root / "miniImageNet" / "miniImageNet_category_split_train_phase_train.pickle").write_bytes(
        pickle.dumps(d, protocol=2))
    before = snapshot(root)
    s = load_dataset("miniimagenet", "train", root, image_size=42)
    assert s.class_names == ["n8", "n9"] and s.counts.tolist() == [3, 2] and s.image_shape == (3, 42, 42)
    full = load_dataset("miniimagenet", "train", root)
    np.testing.assert_array_equal(full.images.permute(0, 2, 3, 1).numpy(), images[[1, 3, 4, 0, 2]])
    assert snapshot(root) == before


# --------------------------------------------------------------------------------------------------- CIFAR-FS/FC100

def write_cifar100(folder: Path, train_per_class: int = 2, test_per_class: int = 1) -> dict[str, np.ndarray]:
    """Tiny CIFAR-100 batches holding every class; returns each fine class's images (train first, then test)."""
    folder.mkdir(parents=True)
    per_class: dict[str, list[np.ndarray]] = {f: [] for f in FINE}
    for part, n in (("train", train_per_class), ("test", test_per_class)):
        fine = np.repeat(np.arange(100), n)
        rng(len(part)).shuffle(fine)
        data = rng(7 + len(part)).integers(0, 256, (fine.size, 3072), dtype=np.uint8)
        coarse = [COARSE.index(FINE_TO_COARSE[FINE[f]]) for f in fine]
        (folder / part).write_bytes(pickle.dumps({b"filenames": [b"x"] * fine.size, b"batch_label": part.encode(),
                                                  b"fine_labels": fine.tolist(), b"coarse_labels": coarse,
                                                  b"data": data}, protocol=2))
        for f, row in zip(fine, data):
            per_class[FINE[f]].append(row.reshape(3, 32, 32))
    (folder / "meta").write_bytes(pickle.dumps({b"fine_label_names": [f.encode() for f in FINE],
                                                b"coarse_label_names": [c.encode() for c in COARSE]}, protocol=2))
    return {k: np.stack(v) for k, v in per_class.items()}


def packaged_split(dataset: str, split: str) -> list[str]:
    from importlib import resources

    text = resources.files("metassl.data").joinpath(f"splits/{dataset}/{split}.txt").read_text()
    return [x.strip() for x in text.splitlines() if x.strip()]


def test_packaged_split_lists():
    fs = {s: packaged_split("cifar_fs", s) for s in ("train", "val", "test")}
    assert [len(v) for v in fs.values()] == [64, 16, 20]
    assert sorted(fs["train"] + fs["val"] + fs["test"]) == FINE  # disjoint, and all 100 classes
    assert {"whale", "poppy", "sweet_pepper", "pickup_truck", "wardrobe"} <= set(fs["test"])
    assert {"beaver", "otter", "lamp", "tractor"} <= set(fs["val"])
    fc = {s: packaged_split("fc100", s) for s in ("train", "val", "test")}
    assert [len(v) for v in fc.values()] == [12, 4, 4]
    assert sorted(fc["train"] + fc["val"] + fc["test"]) == COARSE
    assert set(fc["test"]) == {"aquatic_mammals", "insects", "medium_mammals", "people"}
    assert set(fc["val"]) == {"large_carnivores", "large_omnivores_and_herbivores", "non-insect_invertebrates",
                              "small_mammals"}


def test_cifar_fs_and_fc100(tmp_path):
    root = tmp_path / "data"
    truth = write_cifar100(root / "cifar-100-python")
    before = snapshot(root)
    for split, n in (("train", 64), ("val", 16), ("test", 20)):
        s = load_dataset("cifar_fs", split, root)
        assert s.name == f"cifar_fs/{split}" and s.num_classes == n and s.counts.tolist() == [3] * n
        assert s.class_names == packaged_split("cifar_fs", split) and s.images.shape == (3 * n, 3, 32, 32)
        assert s.preprocess.mean == (0.5071, 0.4865, 0.4409)
    c = s.class_names[0]
    np.testing.assert_array_equal(s.images[:3].numpy(), truth[c])
    seen = []
    for split, n in (("train", 60), ("val", 20), ("test", 20)):
        s = load_dataset("fc100", split, root)
        assert s.name == f"fc100/{split}" and s.num_classes == n and s.counts.tolist() == [3] * n
        supers = packaged_split("fc100", split)
        assert {FINE_TO_COARSE[f] for f in s.class_names} == set(supers)
        seen += s.class_names
    assert sorted(seen) == FINE
    np.testing.assert_array_equal(s.images[:3].numpy(), truth[s.class_names[0]])
    assert load_dataset("fc100", "test", root, image_size=16).image_shape == (3, 16, 16)
    assert snapshot(root) == before


def test_cifar_fs_user_split_folder(tmp_path):
    root = tmp_path / "data"
    write_cifar100(root / "cifar-fs" / "cifar-100-python", train_per_class=1, test_per_class=1)
    splits = root / "cifar-fs" / "splits" / "bertinetto"
    splits.mkdir(parents=True)
    (splits / "val.txt").write_text("tulip\napple\n")
    s = load_dataset("cifar_fs", "val", root)
    assert s.class_names == ["tulip", "apple"] and s.counts.tolist() == [2, 2]
    (splits / "val.txt").write_text("tulip\nunicorn\n")
    with pytest.raises(ValueError, match="unicorn"):
        load_dataset("cifar_fs", "val", root)


def test_cifar100_missing(tmp_path):
    for name in ("cifar_fs", "fc100"):
        with pytest.raises(DatasetNotFoundError) as e:
            load_dataset(name, "train", tmp_path)
        assert str(tmp_path / "cifar-100-python" / "{train,test,meta}") in str(e.value)
        assert "cifar-100-python.tar.gz" in str(e.value)


# -------------------------------------------------------------------------------------------------------- real data

def test_real_shared_data():
    """MNIST test split and the CIFAR-10 JPEG tar (test split) from ../shared/data, which CI always has."""
    if not SHARED_DATA.is_dir():
        return
    before = snapshot(SHARED_DATA / "mnist"), snapshot(SHARED_DATA / "cifar10-jpeg")
    m = load_dataset("mnist", "test", SHARED_DATA)
    assert m.images.shape == (10000, 1, 28, 28) and m.class_names == [str(d) for d in range(10)]
    assert m.counts.tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    c = load_dataset("cifar10", "test", SHARED_DATA)
    assert c.images.shape == (10000, 3, 32, 32) and c.images.dtype == torch.uint8
    assert c.class_names == CIFAR10_CLASSES and c.counts.tolist() == [1000] * 10
    mean = c.images.float().mean(dim=(0, 2, 3)) / 255
    assert torch.allclose(mean, torch.tensor([0.4914, 0.4822, 0.4465]), atol=0.02)  # JPEG copy, close to official
    assert (snapshot(SHARED_DATA / "mnist"), snapshot(SHARED_DATA / "cifar10-jpeg")) == before
