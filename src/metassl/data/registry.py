"""Data sets: a data set is one module in `data/loaders/` (or a plugin package) that calls `register_dataset` once;
it is found by plugin discovery (`metassl.registry.discover`)."""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from ..registry import DATASETS
from .episodic import ClassSplit
from .root import resolve_data_root


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    splits: tuple[str, ...]
    image_size: int | None  # default side length images are resized to (None: the loader decides from the images)
    channels: int | None
    description: str
    # load(root, split, image_size) -> ClassSplit on the CPU; raises DatasetNotFoundError naming the files
    load: Callable[[Path, str, int], ClassSplit]
    # locate(root) -> the file or folder the data set would be read from; raises DatasetNotFoundError
    locate: Callable[[Path], Path]
    # a generic layout (e.g. an image folder) that reads the data root itself: not probed by `metassl datasets`
    generic: bool = False
    # the augmentation preset `augment.preset: auto` picks for this data set (a registered preset name)
    augment: str = "generic"
    # what one example is: "images" (uint8 [C, H, W], resized to image_size); anything else ("vectors", "signals",
    # "text", "functions") is not resized, and `load` takes the config's `data.options` as a 4th argument
    inputs: str = "images"
    # an image data set whose `load` takes the config's `data.options` as a 4th argument (e.g. folder's channels)
    takes_options: bool = False


def register_dataset(spec: DatasetSpec) -> DatasetSpec:
    return DATASETS.add(spec.name, spec)


def get_dataset(name: str) -> DatasetSpec:
    return DATASETS.lookup(name)


def list_datasets() -> list[DatasetSpec]:
    return DATASETS.values()


def load_dataset(name: str, split: str, data_root: str | Path | None = None, image_size: int | None = None,
                 device: str | torch.device = "cpu", options: dict | None = None) -> ClassSplit:
    """Load one split of a registered data set as a `ClassSplit` on `device` (a data set of other inputs may
    return another split type, e.g. `data.regression.RegressionSplit`; `options`: its `data.options`)."""
    spec = get_dataset(name)
    if spec.inputs != "images":  # no image size; the data set reads its own options (file, columns, ...)
        if split not in spec.splits:
            raise ValueError(f"data set {name!r} has no split {split!r}; its splits are: {', '.join(spec.splits)}")
        return spec.load(resolve_data_root(data_root), split, None, dict(options or {})).to(device)
    if split not in spec.splits:
        close = difflib.get_close_matches(split, spec.splits, n=2)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ValueError(f"data set {name!r} has no split {split!r}{hint}; its splits are: {', '.join(spec.splits)}")
    size = image_size or spec.image_size
    if (size is not None or spec.image_size is not None) and (not isinstance(size, int) or size < 4 or size > 1024):
        raise ValueError(f"image_size must be an integer in [4, 1024], got {size!r}")
    root = resolve_data_root(data_root)
    out = spec.load(root, split, size, dict(options or {})) if spec.takes_options else spec.load(root, split, size)
    return out.to(device)
