"""From a config (or a checkpoint) to the things a step needs: encoder shape, learner, parameter and buffer dicts."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import ConfigError, RunConfig, apply_overrides, resolve_stored
from ..data.episodic import Preprocess
from ..learners.base import EngineOptions, Learner, get_learner
from ..models import build_backbone, feature_dim
from ..models.layers import use_global_batch_statistics
from ..ssl.auxiliary import SelfSupervisedAuxiliary
from .checkpoint import CheckpointError, check_finite, open_checkpoint, state_value

Tensors = dict[str, torch.Tensor]


def tensor_mismatch(source: Tensors, target: Tensors) -> tuple[list[str], list[str], list[str]]:
    """(names missing in source, names unexpected in source, 'name: source shape vs target shape' mismatches)."""
    missing = sorted(set(target) - set(source))
    unexpected = sorted(set(source) - set(target))
    shapes = [f"{k}: source {tuple(source[k].shape)} vs model {tuple(target[k].shape)}"
              for k in sorted(set(source) & set(target)) if source[k].shape != target[k].shape]
    return missing, unexpected, shapes


@dataclass
class Model:
    """A learner with the tensors it works on. `params` are leaf tensors the optimizer updates."""

    config: RunConfig
    learner: Learner
    encoder: nn.Module
    params: Tensors
    buffers: Tensors
    image_shape: tuple[int, int, int]
    preprocess: Preprocess
    # where the run came from (state.json's `origin`: config, overrides, data root; engine/provenance.py)
    origin: dict = field(default_factory=dict)

    def state_tensors(self) -> Tensors:
        return {**self.params, **self.buffers}

    def train(self, mode: bool = True) -> None:
        self.encoder.train(mode)

    def predict(self, support_x, support_y, query_x, ways, unlabeled_x=None):
        if unlabeled_x is None:  # learners written before semi-supervised episodes take no `unlabeled_x`
            return self.learner.predict(self.params, self.buffers, support_x, support_y, query_x, ways)
        return self.learner.predict(self.params, self.buffers, support_x, support_y, query_x, ways,
                                    unlabeled_x=unlabeled_x)

    def load_tensors(self, tensors: Tensors, source: str) -> None:
        """Copy saved tensors in place; any missing or unexpected name is reported, nothing is half-loaded."""
        mine = self.state_tensors()
        missing, unexpected, bad_shape = tensor_mismatch(tensors, mine)
        if missing or unexpected or bad_shape:
            raise CheckpointError(
                f"{source}: its tensors do not match the model built from the checkpoint's config "
                f"(missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
                f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}, shape mismatches "
                f"{bad_shape[:3]}): the file is not this checkpoint's model (replaced or renamed?); use another "
                f"checkpoint of the run or train again")
        with torch.no_grad():
            for k, t in mine.items():
                t.copy_(tensors[k])


def build_model(cfg: RunConfig, image_shape: tuple[int, int, int], preprocess: Preprocess,
                device: torch.device | str = "cpu", global_batchnorm: bool = False) -> Model:
    """The learner, its encoder and their tensors for `cfg`. `global_batchnorm` (training on several processes):
    BatchNorm layers that normalize over the whole batch (ProtoNet's, the SSL encoders' and heads') use the
    statistics of the global batch over all processes (`models.layers.GlobalBatchNorm`); the MAML family's per-task
    BatchNorm stays per task."""
    encoder = build_backbone(cfg.model, image_shape[0], tuple(image_shape)).to(device)
    options = EngineOptions.from_config(cfg, encoder).for_inputs(tuple(image_shape))
    if options.channels_last:
        encoder.to(memory_format=torch.channels_last)
    learner = get_learner(cfg.learner.name).build(cfg.learner, encoder).with_options(
        options, global_batchnorm=global_batchnorm)
    if global_batchnorm:
        use_global_batch_statistics(encoder)  # after the learner: the MAML family has replaced its own by then
    if cfg.aux.rotation > 0 or cfg.aux.contrastive > 0 or cfg.aux.jigsaw > 0:
        learner = SelfSupervisedAuxiliary(learner, cfg.aux.rotation, cfg.aux.contrastive, cfg.aux.temperature,
                                          cfg.aux.jigsaw, cfg.aux.jigsaw_permutations)
    dim = feature_dim(encoder, image_shape)
    params = {f"encoder.{k}": v for k, v in encoder.named_parameters()}
    buffers = {f"encoder.{k}": v for k, v in encoder.named_buffers()}
    for k, v in learner.init_params(dim, cfg.tasks.outputs()).items():
        if not k.startswith("learner."):
            raise ValueError(f"learner {cfg.learner.name}: extra parameter {k!r} must be named learner.*")
        params[k] = nn.Parameter(v.to(device))
    for k, v in learner.init_buffers(params, buffers).items():
        if not k.startswith("learner."):
            raise ValueError(f"learner {cfg.learner.name}: extra buffer {k!r} must be named learner.*")
        buffers[k] = v.to(device)
    return Model(cfg, learner, encoder, params, buffers, tuple(image_shape), preprocess)


BN_STATISTICS = ("running_mean", "running_var", "num_batches_tracked")


def init_encoder_from(model: Model, path: str | Path, prefix: str = "encoder.") -> dict[str, Any]:
    """Copy the encoder tensors of another run or checkpoint into `model`, matched by name.

    Every encoder tensor must match in name and shape; otherwise nothing is copied and the error lists the missing,
    unexpected and mismatched names. Tensors outside the encoder (heads, learner state) are not transferred. One
    exception: BatchNorm running statistics of the source are skipped (and reported) when this model keeps none
    (`model.track_running_stats: false`, the MAML family), since such a model normalizes with batch statistics;
    this is what lets a self-supervised encoder initialize MAML."""
    folder, tensors, state, _ = open_checkpoint(path)
    check_finite(tensors, folder / "model.safetensors")
    src = {k: v for k, v in tensors.items() if k.startswith(prefix)}
    dst = {k: v for k, v in model.state_tensors().items() if k.startswith(prefix)}
    stats = sorted(k for k in src if k not in dst and k.rsplit(".", 1)[-1] in BN_STATISTICS)
    for k in stats:
        del src[k]
    missing, unexpected, mismatched = tensor_mismatch(src, dst)
    if missing or unexpected or mismatched:
        sb = (state.get("config") or {}).get("model", {}) if isinstance(state.get("config"), dict) else {}
        raise CheckpointError(
            f"init_from {folder}: its encoder does not fit this model (source model config {sb}, this model "
            f"{model.config.model}).\n  missing in the source: {missing or 'none'}\n  unexpected in the source: "
            f"{unexpected or 'none'}\n  shape mismatches: {mismatched or 'none'}\n"
            f"Use the same model section as the source run, or start without init_from.")
    with torch.no_grad():
        for k, t in dst.items():
            t.copy_(src[k])
    skipped = sorted(k for k in tensors if not k.startswith(prefix)) + stats
    return {"init_from": str(folder), "source_learner": state.get("learner"), "source_step": state.get("step"),
            "copied": len(dst), "skipped_statistics": len(stats), "not_transferred": skipped}


def load_model(path: str | Path, device: torch.device | str = "cpu", which: str = "latest",
               learner_overrides: list[str] | None = None) -> tuple[Model, dict]:
    """Rebuild a model from a run folder or checkpoint folder, without executing code from the files.
    `learner_overrides` (`learner.key=value`) change how the learner evaluates (e.g. MAML's evaluation inner steps,
    PsCo's `eval_head`); they cannot change which tensors the model has (that would not load)."""
    folder, tensors, state, _ = open_checkpoint(path, which)  # training.safetensors is for resuming only
    check_finite(tensors, folder / "model.safetensors")
    config = state_value(state, "config", dict, folder)
    image_shape = state_value(state, "image_shape", list, folder)
    pre = state_value(state, "preprocess", dict, folder)
    if learner_overrides:
        bad = [o for o in learner_overrides if not o.startswith("learner.") or o.startswith("learner.name=")]
        if bad:
            raise ConfigError(f"evaluation overrides must be learner.KEY=VALUE (not learner.name); got {bad}")
        config = apply_overrides(config, list(learner_overrides))
    try:
        cfg = resolve_stored(config)
    except ConfigError as e:
        if learner_overrides:
            raise
        raise CheckpointError(f"{folder / 'state.json'}: its config is not valid ({e}); use another checkpoint of "
                              f"the run or train again") from e
    try:
        preprocess = Preprocess.from_dict(pre)
        shape = tuple(int(v) for v in image_shape)
        if not 1 <= len(shape) <= 3:  # images [C, H, W]; vectors [D]; signals [C, L]
            raise ValueError(f"image_shape {image_shape} is not [channels, height, width] (or [D], [C, L])")
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{folder / 'state.json'}: bad 'preprocess' or 'image_shape' ({e}); use another "
                              f"checkpoint of the run or train again") from e
    model = build_model(cfg, shape, preprocess, device)
    model.load_tensors(tensors, str(folder / "model.safetensors"))
    model.train(False)
    model.origin = state.get("origin") if isinstance(state.get("origin"), dict) else {}
    return model, {**state, "checkpoint": str(folder)}
