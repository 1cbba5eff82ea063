"""Several data sets as one split (`data.datasets: [omniglot, double_mnist, ...]`), as Meta-Dataset trains on many
sources (Triantafillou et al. 2020).

Every domain is brought to one image shape by one recorded rule (`to_common`), applied alike in training and in
evaluation (also on held-out data sets): images resized to `data.image_size` (default the first data set's size),
converted to `data.channels` channels (gray to RGB by repetition, RGB to gray by ITU-R 601-2 luma; data sets with
different channel counts need `data.channels` set), and inverted when the data set's own preprocessing inverts
(Omniglot's dark ink becomes bright, as MNIST's), so that one plain [0, 1] scaling is the network input of every
domain. Classes are named `domain:class`; `ClassSplit.domains` holds each class's domain, the domain weights and the
conversions, which the trainer records in every checkpoint (`state.json`, key `domains`).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from ..config import ConfigError
from ..registry import DATASETS
from .episodic import ClassSplit, Preprocess
from .images import resize_uint8, to_channels

__all__ = ["Domains", "COMMON_PREPROCESS", "check_datasets", "common_shape", "to_common", "load_domains"]

#: the network input of a multi-domain run: [0, 1], no inversion or normalization (done per domain in uint8)
COMMON_PREPROCESS = Preprocess(invert=False)


@dataclass
class Domains:
    """The data sets of a multi-domain split: names [D], sampling weights [D], the domain of each class [C] (host
    tensor) and per domain how its images were converted (`to_common`)."""

    names: list[str]
    weights: list[float]
    class_domain: torch.Tensor
    conversions: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        counts = torch.bincount(self.class_domain, minlength=len(self.names)).tolist()
        return {"names": list(self.names), "weights": list(self.weights), "classes": counts,
                "conversions": list(self.conversions)}


def check_datasets(names: list[str], weights: list[float] | None = None) -> None:
    """ConfigErrors for `data.datasets` / `data.domain_weights`: unknown names (with the closest known ones),
    repeats, non-image data sets, weights of the wrong length or not positive."""
    if not names:
        raise ConfigError("data.datasets is empty: list at least one data set, e.g. data.datasets=[omniglot,mnist]")
    known = sorted(DATASETS)
    for n in names:
        if n not in known:
            close = difflib.get_close_matches(str(n), known, n=3)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            raise ConfigError(f"unknown data set {n!r} in data.datasets.{hint} Known: {', '.join(known)}")
        if DATASETS[n].inputs != "images":
            raise ConfigError(f"data.datasets: {n} holds {DATASETS[n].inputs}, not images; several data sets can be "
                              f"combined only when all hold images")
    if len(set(names)) != len(names):
        raise ConfigError(f"data.datasets lists a data set twice: {names}")
    if weights:
        if len(weights) != len(names):
            raise ConfigError(f"data.domain_weights has {len(weights)} values for {len(names)} data sets "
                              f"({', '.join(names)}); give one per data set or none (uniform)")
        if any(not w > 0 for w in weights):
            raise ConfigError(f"data.domain_weights must all be > 0, got {weights}")


def common_shape(names: list[str], image_size: int | None, channels: int | None) -> tuple[int, int]:
    """(channels, side) every domain is converted to; a ConfigError when the data sets' channel counts differ and
    `data.channels` does not say how to convert them."""
    specs = [DATASETS[n] for n in names]
    size = image_size or next((s.image_size for s in specs if s.image_size), None)
    if size is None:
        raise ConfigError(f"data.image_size is not set and none of {', '.join(names)} has a default size; set it")
    if channels is None:
        found = {n: s.channels for n, s in zip(names, specs)}
        kinds = {c for c in found.values() if c is not None}
        if len(kinds) > 1:
            raise ConfigError(f"data.datasets mixes channel counts ({', '.join(f'{n}: {c}' for n, c in found.items())})"
                              f" and data.channels is not set: set data.channels=1 (RGB to gray by luma) or "
                              f"data.channels=3 (gray repeated); the conversion is recorded in the checkpoint")
        channels = kinds.pop() if kinds else 3
    return int(channels), int(size)


def to_common(split: ClassSplit, channels: int, size: int) -> tuple[ClassSplit, dict[str, Any]]:
    """`split` in the common shape and polarity of a multi-domain run, and the record of what was done."""
    x = split.images
    if x.dtype != torch.uint8 or x.dim() != 4:
        raise ConfigError(f"{split.name}: only image data sets can be combined (got {x.dtype} {tuple(x.shape)})")
    record = {"dataset": split.name.split("/")[0], "split": split.name.split("/", 1)[-1],
              "from": list(split.image_shape), "to": [channels, size, size],
              "inverted": bool(split.preprocess.invert)}
    x = x.cpu()
    if split.preprocess.invert:
        x = 255 - x
    x = to_channels(x, channels, strict=True)
    x = resize_uint8(x, size)
    return replace(split, images=x.to(split.device), preprocess=COMMON_PREPROCESS), record


def load_domains(names: list[str], split: str, data_root: Any, image_size: int | None, channels: int | None,
                 weights: list[float] | None = None, device: Any = "cpu", options: dict | None = None) -> ClassSplit:
    """One ClassSplit of the union of the data sets' `split` splits in the common shape, classes `domain:class`."""
    from .registry import load_dataset

    check_datasets(names, weights)
    c, size = common_shape(names, image_size, channels)
    parts, records, doms = [], [], []
    for d, n in enumerate(names):
        spec = DATASETS[n]
        if split not in spec.splits:
            raise ConfigError(f"data.datasets: {n} has no split {split!r} (its splits: {', '.join(spec.splits)}); "
                              f"use a split every data set has, or leave {n} out")
        s = load_dataset(n, split, data_root, size, "cpu", options)  # resized as it is read
        s, rec = to_common(s, c, size)
        if spec.image_size and spec.channels:
            rec["from"] = [spec.channels, spec.image_size, spec.image_size]
        parts.append(s)
        records.append(rec)
        doms.append(torch.full((s.num_classes,), d, dtype=torch.int64))
    images = torch.cat([p.images for p in parts])
    counts = torch.cat([p.counts for p in parts])
    class_names = [f"{n}:{cn}" for n, p in zip(names, parts) for cn in p.class_names]
    w = [float(x) for x in weights] if weights else [1.0] * len(names)
    out = ClassSplit(images, counts, class_names, name=f"{'+'.join(names)}/{split}", preprocess=COMMON_PREPROCESS,
                     domains=Domains(list(names), w, torch.cat(doms), records))
    return out.to(device)
