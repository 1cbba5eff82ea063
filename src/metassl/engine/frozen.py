"""Frozen encoders of saved runs: load a split of a run's data at the run's image size, and embed a split with
another run's encoder.

`load_run_split` is "load a run's split" for `engine/evaluate.py` (few-shot, kNN and linear-probe evaluation) and
the report; `embed_with_run` gives CACTUs (`tasks.embed_from`, in the trainer) its embeddings. The embedding loop
itself is `eval.features.embed_images`, which the kNN and linear-probe protocols, prediction
(`api.FewShotClassifier`) and the report's t-SNE map use too.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..data.episodic import ClassSplit
from ..data.images import to_channels
from ..data.registry import load_dataset
from ..errors import ConfigError
from ..eval.features import embed_images
from .build import Model, load_model

__all__ = ["embed_with_run", "load_run_split"]


def _match_inputs(model: Model, data: ClassSplit, ds: str, polarity: str, notes: list[str] | None) -> ClassSplit:
    """The split's images in the model's channels and, for data other than the run's own, inverted where their
    background is on the other side of the training images'."""
    from dataclasses import replace

    from ..data.input_stats import InputCheck
    from ..data.registry import get_dataset

    if len(model.image_shape) != 3 or data.images.dtype != torch.uint8 or data.images.dim() != 4:
        return data
    c, say = model.image_shape[0], (notes.append if notes is not None else lambda _: None)
    if data.image_shape[0] != c and {data.image_shape[0], c} == {1, 3}:
        data = replace(data, images=to_channels(data.images, c))
        say(f"{data.name}: images converted to {'grayscale' if c == 1 else 'RGB'}, as the model was trained")
    if ds != model.config.data.dataset or get_dataset(ds).generic:
        check = InputCheck(model.preprocess.stats, model.preprocess, polarity)
        flips = check.flips(data.images)
        if bool(flips.any()):
            data = replace(data, images=check.fix(data.images))
            say(f"{data.name}: inverted {int(flips.sum())} of {flips.numel()} images whose background is on the other "
                f"side of the training images' (--polarity keep: use them as given)")
    return data


def load_run_split(model: Model, dataset: str | None = None, split: str | None = None, data_root: str | None = None,
                   device: torch.device | str | None = None, polarity: str = "auto",
                   notes: list[str] | None = None) -> ClassSplit:
    """A split of `dataset` (default: the run's data set; split default: its test split; data root default: the
    run's data.root) at the model's image size and channels (converted as prediction converts), on `device` (default:
    the model's), checked against the image shape the model was trained on. Images of another data set than the
    run's (or of a folder) are inverted where their background is on the other side of the training images'
    (`polarity="keep"`: never); what was done is appended to `notes`. The run's recorded data root (where it was
    trained from, `--data-root` or data.root) comes before data.root when it still exists and the data set is the
    run's own; an explicit `data_root` wins."""
    from .provenance import recorded_data_root

    cfg = model.config
    ds, sp = dataset or cfg.data.dataset, split or cfg.data.test_split
    # images: the model's image size; other inputs (vectors, functions) are never resized
    size = model.image_shape[-1] if len(model.image_shape) == 3 else None
    recorded = (recorded_data_root(getattr(model, "origin", None))
                if ds == cfg.data.dataset or ds in (getattr(cfg.data, "datasets", None) or []) else None)
    data = load_dataset(ds, sp, data_root or recorded or cfg.data.root, size,
                        device if device is not None else model.params[next(iter(model.params))].device,
                        cfg.data.options)
    if getattr(cfg.data, "datasets", None) and len(model.image_shape) == 3:
        # a multi-domain run: every data set (trained on or not) gets the run's one recorded conversion
        from ..data.multidomain import to_common

        data, rec = to_common(data, model.image_shape[0], model.image_shape[-1])
        if notes is not None and (rec["inverted"] or rec["from"] != rec["to"]):
            notes.append(f"{data.name}: converted as the multi-domain run's data ({rec['from']} -> {rec['to']}"
                         f"{', inverted' if rec['inverted'] else ''})")
    else:
        data = _match_inputs(model, data, ds, polarity, notes)
    if data.image_shape != tuple(model.image_shape):
        raise ValueError(f"{ds}/{sp} images are {data.image_shape} but the model was trained on "
                         f"{tuple(model.image_shape)} images")
    return data


def embed_with_run(run: str | Path, split: ClassSplit, device: torch.device | str = "cpu",
                   batch_size: int = 1024) -> torch.Tensor:
    """Encoder features [M, D] (float32, eval mode, the run's recorded preprocessing) of every image of `split`."""
    model, _ = load_model(run, device)
    if tuple(model.image_shape) != split.image_shape:
        raise ConfigError(f"{run}: its encoder takes {tuple(model.image_shape)} images but {split.name} has "
                          f"{split.image_shape}; use an encoder trained at this image size")
    return embed_images(model, split.images, model.preprocess, batch_size)
