"""Meta-Dataset's converted sources (Triantafillou et al. 2020), read from its TFRecord layout without TensorFlow.

The reference conversion (`meta_dataset/dataset_conversion`) writes, per source, a folder with `dataset_spec.json`
and one `<class id>.tfrecords` file per class; each record is a `tf.train.Example` with the features `image` (the
encoded JPEG/PNG bytes) and `label` (int64). Here the records' framing (uint64 length, masked CRC-32C of the length,
data, masked CRC-32C of the data) is parsed by hand, length checksums always verified (data checksums with
`data.options.verify_crc: true`, slow in pure Python), and the Example protobuf is decoded by hand (varints and
length-delimited fields: Example.features -> map<string, Feature> -> BytesList / Int64List).

Data sets `md_<source>` (md_ilsvrc_2012, md_omniglot, md_aircraft, md_cu_birds, md_dtd, md_quickdraw, md_fungi,
md_vgg_flower, md_traffic_sign, md_mscoco) read DATA_ROOT/meta_dataset/<source>/ (or DATA_ROOT/<source>/); splits
train / val / test are the spec's contiguous class ranges (TRAIN, VALID, TEST; a bi-level spec such as Omniglot's
counts classes per superclass, and `md_omniglot` names classes `superclass/class` so `tasks.hierarchy` samples
within an alphabet). Images are decoded to RGB at 84x84 (Meta-Dataset's size) and cached. Deviation: the
hierarchical (ImageNet DAG) class sampling of `md_ilsvrc_2012` is not implemented; its classes are sampled uniformly.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import torch

from ..episodic import ClassSplit, Preprocess
from ..images import decode_image, stack_hwc
from ..registry import DatasetSpec, register_dataset
from ..root import DataFileError, cached_tensors, missing

SOURCES = ("ilsvrc_2012", "omniglot", "aircraft", "cu_birds", "dtd", "quickdraw", "fungi", "vgg_flower",
           "traffic_sign", "mscoco")
SPLIT_KEYS = {"train": "TRAIN", "val": "VALID", "test": "TEST"}
PREPROCESS = Preprocess(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
MAX_RECORD_BYTES = 64 << 20
_HOW = ("Convert the source with Meta-Dataset's own tool (github.com/google-research/meta-dataset, "
        "`python -m meta_dataset.dataset_conversion.convert_datasets_to_records --dataset=<source> ...`, see its "
        "doc/dataset_conversion.md for where to download each source) and put the output folder (dataset_spec.json "
        "and <class>.tfrecords files) in DATA_ROOT/meta_dataset/<source>/.")

# -- CRC-32C (Castagnoli), as TFRecord's masked checksums ---------------------------------------------------------
_TABLE = []
for _i in range(256):
    _c = _i
    for _ in range(8):
        _c = (_c >> 1) ^ 0x82F63B78 if _c & 1 else _c >> 1
    _TABLE.append(_c)


def crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    table = _TABLE
    for b in data:
        crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked_crc(data: bytes) -> int:
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def read_records(path: Path, verify_data: bool = False):
    """Yield the payload of every record of a TFRecord file (uncompressed), checking its framing."""
    with open(path, "rb") as f:
        n = 0
        while True:
            head = f.read(12)
            if not head:
                return
            if len(head) < 12:
                raise DataFileError(f"{path}: record {n} is cut short in its header; the file is truncated")
            length, crc = struct.unpack("<QI", head)
            if masked_crc(head[:8]) != crc:
                raise DataFileError(f"{path}: record {n}: the length's checksum does not match; not a TFRecord file "
                                    f"or corrupt (compressed records are not supported)")
            if length > MAX_RECORD_BYTES:
                raise DataFileError(f"{path}: record {n} announces {length:,} bytes, more than any image record")
            data = f.read(length)
            tail = f.read(4)
            if len(data) != length or len(tail) != 4:
                raise DataFileError(f"{path}: record {n} is cut short ({len(data)} of {length} bytes); the file is "
                                    f"truncated")
            if verify_data and masked_crc(data) != struct.unpack("<I", tail)[0]:
                raise DataFileError(f"{path}: record {n}: the data's checksum does not match; the file is corrupt")
            n += 1
            yield data


# -- tf.train.Example, decoded by hand ----------------------------------------------------------------------------
def _varint(buf: bytes, i: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        if i >= len(buf):
            raise ValueError("truncated varint")
        b = buf[i]
        i += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, i
        shift += 7
        if shift > 63:
            raise ValueError("varint longer than 64 bits")


def _fields(buf: bytes):
    """(field number, wire type, value) of a protobuf message: varints as int, length-delimited as bytes."""
    i = 0
    while i < len(buf):
        key, i = _varint(buf, i)
        num, wire = key >> 3, key & 7
        if wire == 0:
            v, i = _varint(buf, i)
        elif wire == 2:
            n, i = _varint(buf, i)
            v, i = buf[i:i + n], i + n
            if len(v) != n:
                raise ValueError("truncated length-delimited field")
        elif wire == 1:
            v, i = buf[i:i + 8], i + 8
        elif wire == 5:
            v, i = buf[i:i + 4], i + 4
        else:
            raise ValueError(f"unsupported wire type {wire}")
        yield num, wire, v


def parse_example(buf: bytes) -> dict[str, list]:
    """A serialized tf.train.Example as {feature name: list of values} (bytes, int or float)."""
    out: dict[str, list] = {}
    for num, _, features in _fields(buf):
        if num != 1:
            continue
        for fnum, _, entry in _fields(features):
            if fnum != 1:
                continue
            key, value = "", b""
            for enum_, _, v in _fields(entry):
                if enum_ == 1:
                    key = bytes(v).decode("utf-8")
                elif enum_ == 2:
                    value = v
            vals: list = []
            for kind, _, lst in _fields(value):
                for vnum, wire, v in _fields(lst):
                    if vnum != 1:
                        continue
                    if kind == 1:  # BytesList
                        vals.append(bytes(v))
                    elif kind == 3:  # Int64List: packed (wire 2) or not
                        if wire == 2:
                            j = 0
                            while j < len(v):
                                x, j = _varint(v, j)
                                vals.append(x - (1 << 64) if x >= 1 << 63 else x)
                        else:
                            vals.append(v - (1 << 64) if v >= 1 << 63 else v)
                    elif kind == 2:  # FloatList
                        vals.extend(struct.unpack(f"<{len(v) // 4}f", v) if wire == 2 else struct.unpack("<f", v))
            out[key] = vals
    return out


# -- the data sets -------------------------------------------------------------------------------------------------
def _folder(root: Path, source: str) -> Path:
    for base in (root / "meta_dataset" / source, root / source):
        if (base / "dataset_spec.json").is_file():
            return base
    raise missing(f"md_{source}", root, [f"meta_dataset/{source}/dataset_spec.json", f"{source}/dataset_spec.json"],
                  _HOW.replace("<source>", source))


def split_classes(spec: dict, split: str) -> tuple[list[int], list[str]]:
    """Class ids of `split` (the spec's contiguous ranges, TRAIN then VALID then TEST) and their names."""
    names = {int(k): str(v) for k, v in spec.get("class_names", {}).items()}
    key = SPLIT_KEYS[split]
    order = ("TRAIN", "VALID", "TEST")
    if spec.get("__class__") == "BiLevelDatasetSpecification":
        sup = spec["superclasses_per_split"]
        per = {int(k): int(v) for k, v in spec["classes_per_superclass"].items()}
        sup_names = {int(k): str(v) for k, v in spec.get("superclass_names", {}).items()}
        first_sup = sum(int(sup.get(s, 0)) for s in order[:order.index(key)])
        first = sum(per[s] for s in range(first_sup))
        ids, labels = [], []
        c = first
        for s in range(first_sup, first_sup + int(sup.get(key, 0))):
            for _ in range(per[s]):
                ids.append(c)
                labels.append(f"{sup_names.get(s, s)}/{names.get(c, c)}")
                c += 1
        return ids, labels
    per_split = spec["classes_per_split"]
    first = sum(int(per_split.get(s, 0)) for s in order[:order.index(key)])
    ids = list(range(first, first + int(per_split.get(key, 0))))
    return ids, [names.get(c, str(c)) for c in ids]


def _make_load(source: str):
    def load(root: Path, split: str, size: int, options: dict) -> ClassSplit:
        base = _folder(root, source)
        spec_file = base / "dataset_spec.json"
        try:
            spec = json.loads(spec_file.read_text())
            ids, names = split_classes(spec, split)
        except (ValueError, KeyError, TypeError) as e:
            raise DataFileError(f"{spec_file}: not a Meta-Dataset dataset_spec.json ({type(e).__name__}: {e})") from e
        if not ids:
            raise DataFileError(f"{spec_file}: the {split} split of {source} has no classes (Meta-Dataset uses some "
                                f"sources for evaluation only); use another split")
        pattern = str(spec.get("file_pattern", "{}.tfrecords"))
        files = [base / pattern.format(c) for c in ids]
        absent = [str(f) for f in files if not f.is_file()]
        if absent:
            raise missing(f"md_{source}", root, absent[:3], _HOW.replace("<source>", source))
        verify = bool(options.get("verify_crc", False))

        def build():
            arrays, labels = [], []
            for k, f in enumerate(files):
                for rec in read_records(f, verify):
                    try:
                        ex = parse_example(rec)
                        img = ex["image"][0]
                    except (ValueError, KeyError, IndexError) as e:
                        raise DataFileError(f"{f}: a record is not a tf.train.Example with an `image` feature "
                                            f"({e})") from e
                    arrays.append(decode_image(img, 3, name=str(f)))
                    labels.append(k)
            if not arrays:
                raise DataFileError(f"{base}: no records in the {split} split's files")
            return {"images": stack_hwc(arrays, size), "labels": torch.tensor(labels)}, {"names": names}

        tensors, meta = cached_tensors(f"md_{source}-{split}-{size}", files + [spec_file], build)
        return ClassSplit.from_labels(tensors["images"], tensors["labels"], list(meta["names"]),
                                      name=f"md_{source}/{split}", preprocess=PREPROCESS)

    return load


for _s in SOURCES:
    register_dataset(DatasetSpec(
        name=f"md_{_s}", splits=tuple(SPLIT_KEYS), image_size=84, channels=3,
        description=f"Meta-Dataset source {_s} from its converted TFRecords (DATA_ROOT/meta_dataset/{_s}/), 84x84 RGB",
        load=_make_load(_s), locate=lambda root, s=_s: _folder(root, s), takes_options=True))
