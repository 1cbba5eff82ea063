"""Issue 19: readers for Meta-Dataset's TFRecords (no TensorFlow), CUB-200-2011 and tieredImageNet layouts, on tiny
synthetic files of those layouts; missing files say where to get them."""

import io
import json
import pickle
import struct

import numpy as np
import pytest
from PIL import Image

from metassl.data import load_dataset
from metassl.data.loaders.metadataset_records import crc32c, masked_crc, parse_example, read_records, split_classes
from metassl.data.root import DataFileError, DatasetNotFoundError


def _varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _ld(num, payload):  # a length-delimited protobuf field
    return _varint(num << 3 | 2) + _varint(len(payload)) + payload


def example(image: bytes, label: int) -> bytes:
    """A tf.train.Example {image: BytesList, label: Int64List (packed)}, serialized as TensorFlow would."""
    img = _ld(1, _ld(1, image))  # Feature.bytes_list(1) -> BytesList.value(1)
    lab = _ld(3, _ld(1, _varint(label)))  # Feature.int64_list(3) -> Int64List.value(1), packed
    feats = _ld(1, _ld(1, b"image") + _ld(2, img)) + _ld(1, _ld(1, b"label") + _ld(2, lab))
    return _ld(1, feats)


def tfrecord(payloads) -> bytes:
    out = b""
    for p in payloads:
        head = struct.pack("<Q", len(p))
        out += head + struct.pack("<I", masked_crc(head)) + p + struct.pack("<I", masked_crc(p))
    return out


def _png(value, size=(6, 5), mode="RGB"):
    buf = io.BytesIO()
    Image.new(mode, size, value).save(buf, format="PNG")
    return buf.getvalue()


def test_crc32c_known_values():
    assert crc32c(b"123456789") == 0xE3069283  # the CRC-32C check value
    assert crc32c(b"") == 0


def test_tfrecords_parse_and_bad_framing(tmp_path):
    recs = [example(_png((i, 0, 0)), i) for i in range(3)]
    f = tmp_path / "0.tfrecords"
    f.write_bytes(tfrecord(recs))
    got = list(read_records(f, verify_data=True))
    assert got == recs
    ex = parse_example(got[2])
    assert ex["label"] == [2] and ex["image"][0].startswith(b"\x89PNG")
    bad = bytearray(f.read_bytes())
    bad[-1] ^= 0xFF
    f.write_bytes(bytes(bad))
    with pytest.raises(DataFileError, match="data's checksum"):
        list(read_records(f, verify_data=True))
    f.write_bytes(tfrecord(recs)[:-7])
    with pytest.raises(DataFileError, match="cut short"):
        list(read_records(f))
    f.write_bytes(b"\x00" * 20)
    with pytest.raises(DataFileError, match="length's checksum"):
        list(read_records(f))


def test_metadataset_source_splits_and_loading(tmp_path):
    src = tmp_path / "meta_dataset" / "omniglot"
    src.mkdir(parents=True)
    # bi-level spec: superclasses 2 train, 1 valid, 1 test; classes per superclass 2, 1, 2, 3
    spec = {"__class__": "BiLevelDatasetSpecification", "name": "omniglot",
            "superclasses_per_split": {"TRAIN": 2, "VALID": 1, "TEST": 1},
            "classes_per_superclass": {"0": 2, "1": 1, "2": 2, "3": 3},
            "images_per_class": {str(c): 2 for c in range(8)},
            "superclass_names": {"0": "A", "1": "B", "2": "C", "3": "D"},
            "class_names": {str(c): f"c{c}" for c in range(8)}, "path": "x", "file_pattern": "{}.tfrecords"}
    (src / "dataset_spec.json").write_text(json.dumps(spec))
    assert split_classes(spec, "train") == ([0, 1, 2], ["A/c0", "A/c1", "B/c2"])
    assert split_classes(spec, "test") == ([5, 6, 7], ["D/c5", "D/c6", "D/c7"])
    for c in range(8):
        (src / f"{c}.tfrecords").write_bytes(tfrecord([example(_png((10 * c, j, 0)), c) for j in range(2)]))
    s = load_dataset("md_omniglot", "test", tmp_path, 8)
    assert s.num_classes == 3 and s.images.shape == (6, 3, 8, 8) and s.class_names == ["D/c5", "D/c6", "D/c7"]
    assert int(s.images[0, 0].float().mean().round()) == 50  # red channel of class 5's images
    flat = {"__class__": "DatasetSpecification", "classes_per_split": {"TRAIN": 3, "VALID": 0, "TEST": 2},
            "class_names": {str(c): f"k{c}" for c in range(5)}}
    assert split_classes(flat, "test") == ([3, 4], ["k3", "k4"]) and split_classes(flat, "val") == ([], [])
    with pytest.raises(DatasetNotFoundError, match="convert_datasets_to_records"):
        load_dataset("md_aircraft", "test", tmp_path, 8)


def test_cub_layout_and_chen_split(tmp_path):
    base = tmp_path / "cub" / "CUB_200_2011"
    classes = [f"{i + 1:03d}.Bird{i}" for i in range(8)]
    lines_img, lines_lab = [], []
    n = 0
    for i, c in enumerate(classes):
        (base / "images" / c).mkdir(parents=True)
        for j in range(2):
            n += 1
            Image.new("RGB", (10, 7), (i * 20, j, 0)).save(base / "images" / c / f"b{j}.jpg", quality=95)
            lines_img.append(f"{n} {c}/b{j}.jpg")
            lines_lab.append(f"{n} {i + 1}")
    (base / "images.txt").write_text("\n".join(lines_img) + "\n")
    (base / "image_class_labels.txt").write_text("\n".join(lines_lab) + "\n")
    (base / "classes.txt").write_text("\n".join(f"{i + 1} {c}" for i, c in enumerate(classes)) + "\n")
    tr, va, te = (load_dataset("cub", s, tmp_path, 8) for s in ("train", "val", "test"))
    assert tr.class_names == [classes[i] for i in (0, 2, 4, 6)]
    assert va.class_names == [classes[1], classes[5]] and te.class_names == [classes[3], classes[7]]
    assert te.images.shape == (4, 3, 8, 8) and abs(int(te.images[0, 0].float().mean()) - 60) <= 3
    with pytest.raises(DatasetNotFoundError, match="CUB_200_2011.tgz"):
        load_dataset("cub", "test", tmp_path / "nothing", 8)


@pytest.mark.parametrize("layout", ["npz", "png_pkl"])
def test_tiered_imagenet_layouts(tmp_path, layout):
    base = tmp_path / "tiered_imagenet"
    base.mkdir()
    labels = np.array([3, 1, 3, 1, 2, 2])
    labels_d = {"label_specific": labels, "label_general": np.array([0, 1, 0, 1, 1, 1]),
                "label_specific_str": ["n0", "n1", "n2", "n3"], "label_general_str": ["catA", "catB"]}
    (base / "test_labels.pkl").write_bytes(pickle.dumps(labels_d, protocol=2))
    imgs = np.stack([np.full((84, 84, 3), 40 * k, dtype=np.uint8) for k in range(6)])
    if layout == "npz":
        np.savez(base / "test_images.npz", images=imgs)
    else:
        (base / "test_images_png.pkl").write_bytes(pickle.dumps([_png((40 * k,) * 3, (84, 84)) for k in range(6)]))
    s = load_dataset("tiered_imagenet", "test", tmp_path, 84)
    assert s.class_names == ["catB/n1", "catB/n2", "catA/n3"] and s.counts.tolist() == [2, 2, 2]
    assert s.images[s.offsets[2], 0, 0, 0] == 0 and s.images[s.offsets[2] + 1, 0, 0, 0] == 80
    with pytest.raises(DatasetNotFoundError, match="MetaOptNet"):
        load_dataset("tiered_imagenet", "train", tmp_path, 84)
