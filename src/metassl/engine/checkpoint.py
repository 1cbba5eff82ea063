"""Checkpoints: tensors in safetensors files, everything else in JSON, each checkpoint a folder written atomically.

Layout of a run folder:
  config.yaml                 the resolved config
  checkpoints/step_00001000/  model.safetensors (parameters + buffers), training.safetensors (optimizer state,
                              random generator states), state.json (step, config, preprocessing, metadata)
  checkpoints/latest          name of the newest complete checkpoint folder
Loading never unpickles: safetensors and JSON only.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from ..atomic import atomic_directory, atomic_write_text

FORMAT = "metassl-checkpoint"
FORMAT_VERSION = 2  # 2: each task source owns its `tasks` keys (format 1 configs are upgraded on load)


class CheckpointError(ValueError):
    pass


def flatten_optimizer(state_dict: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """Split an optimizer state_dict into tensors and a JSON-able rest."""
    tensors, rest = {}, {"param_groups": state_dict["param_groups"], "state": {}}
    for idx, st in state_dict["state"].items():
        plain = {}
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"optim.{idx}.{k}"] = v.detach().cpu().contiguous()
            else:
                plain[k] = v
        rest["state"][str(idx)] = plain
    return tensors, rest


def unflatten_optimizer(tensors: dict[str, torch.Tensor], rest: dict) -> dict:
    state: dict[int, dict] = {int(i): dict(v) for i, v in rest["state"].items()}
    for key, v in tensors.items():
        if key.startswith("optim."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = v
    return {"state": state, "param_groups": rest["param_groups"]}


def save_checkpoint(run_dir: Path, step: int, model: dict[str, torch.Tensor], state: dict[str, Any],
                    training: dict[str, torch.Tensor] | None = None, keep: int = 2, name: str | None = None) -> Path:
    """Write checkpoints/<name or step_N> atomically, point `latest` at it, and prune old step folders."""
    ckdir = Path(run_dir) / "checkpoints"
    folder = ckdir / (name or f"step_{step:08d}")
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "step": step, **state}
    with atomic_directory(folder) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in model.items()}, str(tmp / "model.safetensors"),
                  metadata={"format": FORMAT})
        if training:
            save_file({k: v.detach().cpu().contiguous() for k, v in training.items()},
                      str(tmp / "training.safetensors"))
        (tmp / "state.json").write_text(json.dumps(meta, indent=1))
    if name is None:
        atomic_write_text(ckdir / "latest", folder.name + "\n")
        steps = sorted(p for p in ckdir.iterdir() if p.is_dir() and re.fullmatch(r"step_\d{8}", p.name))
        for old in steps[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    return folder


def find_checkpoint(path: str | Path, which: str = "latest") -> Path:
    """A checkpoint folder from a run folder (its latest or best) or a checkpoint folder itself."""
    p = Path(path)
    if (p / "state.json").is_file():
        return p
    ckdir = p / "checkpoints"
    if not p.exists():
        raise CheckpointError(f"{p} does not exist: give a run folder or a checkpoint folder")
    if which == "best":
        if (ckdir / "best" / "state.json").is_file():
            return ckdir / "best"
        raise CheckpointError(f"{p} has no best checkpoint (it is written when validation is enabled)")
    latest = ckdir / "latest"
    if latest.is_file():
        folder = ckdir / latest.read_text().strip()
        if (folder / "state.json").is_file():
            return folder
    steps = sorted(q for q in ckdir.glob("step_*") if (q / "state.json").is_file()) if ckdir.is_dir() else []
    if steps:
        return steps[-1]
    raise CheckpointError(f"{p} holds no checkpoint (looked for {ckdir}/latest and {ckdir}/step_*/state.json)")


def load_checkpoint(folder: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, torch.Tensor]]:
    """(model tensors, state.json, training tensors); only safetensors and JSON are read."""
    folder = Path(folder)
    try:
        state = json.loads((folder / "state.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{folder}/state.json cannot be read: {e}") from e
    if state.get("format") != FORMAT:
        raise CheckpointError(f"{folder} is not a metassl checkpoint (state.json has format {state.get('format')!r})")
    if int(state.get("format_version", 0)) > FORMAT_VERSION:
        raise CheckpointError(f"{folder} was written by a newer metassl (checkpoint format "
                              f"{state['format_version']}, this version reads up to {FORMAT_VERSION}); upgrade metassl")
    model = load_file(str(folder / "model.safetensors"))
    tr = folder / "training.safetensors"
    training = load_file(str(tr)) if tr.is_file() else {}
    return model, state, training


def read_run_learner(path: str | Path, which: str = "latest") -> str | None:
    """The learner name a run or checkpoint was trained with (its state.json only; no tensors are read)."""
    folder = find_checkpoint(path, which)
    try:
        return json.loads((folder / "state.json").read_text()).get("learner")
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{folder}/state.json cannot be read: {e}") from e
