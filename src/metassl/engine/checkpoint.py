"""Checkpoints: tensors in safetensors files, everything else in JSON, each checkpoint a folder written atomically.

Layout of a run folder:
  config.yaml                 the resolved config
  checkpoints/step_00001000/  model.safetensors (parameters + buffers), training.safetensors (optimizer state,
                              random generator states), state.json (step, config, preprocessing, metadata)
  checkpoints/latest          name of the newest complete checkpoint folder
Loading never unpickles: safetensors and JSON only. Every problem with a checkpoint's files (missing, damaged,
from another checkpoint, a missing key, a full disk while writing) is a `CheckpointError` naming the file and what
to do. Evaluation reads model.safetensors and state.json only; training.safetensors is for resuming.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..atomic import atomic_directory, atomic_write_text, remove_directory

FORMAT = "metassl-checkpoint"
FORMAT_VERSION = 2  # 2: each task source owns its `tasks` keys (format 1 configs are upgraded on load)
OTHER = "use another checkpoint of the run (checkpoints/step_*, checkpoints/best) or train again"


class CheckpointError(ValueError):
    pass


class CheckpointWriteError(CheckpointError):
    """A checkpoint could not be written (full disk, read-only folder); nothing half-written is left."""


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


def non_finite(tensors: dict[str, torch.Tensor]) -> list[str]:
    """Names of the floating-point tensors holding NaN or inf (one device sync for all of them)."""
    names = [k for k, v in tensors.items() if v.is_floating_point() or v.is_complex()]
    if not names:
        return []
    return [k for k, good in zip(names, _gather([torch.isfinite(tensors[k]).all() for k in names])) if not good]


def _gather(values: list[torch.Tensor]) -> list:
    try:
        return torch.stack(values).tolist()  # one transfer from the device
    except RuntimeError:  # tensors on several devices
        return [v.item() for v in values]


def max_abs(tensors: dict[str, torch.Tensor]) -> float:
    """The largest |value| of the floating-point tensors (0.0 for none)."""
    vals = [v.detach().abs().max().float() for v in tensors.values() if v.is_floating_point() and v.numel()]
    return float(max(_gather(vals))) if vals else 0.0


def _reason(e: BaseException) -> str:
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    return (str(e).splitlines() or [type(e).__name__])[0][:200]


def save_checkpoint(run_dir: Path, step: int, model: dict[str, torch.Tensor], state: dict[str, Any],
                    training: dict[str, torch.Tensor] | None = None, keep: int = 2, name: str | None = None) -> Path:
    """Write checkpoints/<name or step_N> atomically, point `latest` at it, and prune old step folders.
    A write failure (full disk, read-only folder) is a CheckpointWriteError naming the folder; the temporary
    folder is removed, so the previous checkpoints stay as they were."""
    ckdir = Path(run_dir) / "checkpoints"
    folder = ckdir / (name or f"step_{step:08d}")
    # one id in all three files: a training.safetensors copied from another checkpoint is recognized
    ident = uuid.uuid4().hex
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "step": step, "checkpoint_id": ident, **state}
    try:
        with atomic_directory(folder) as tmp:
            save_file({k: v.detach().cpu().contiguous() for k, v in model.items()}, str(tmp / "model.safetensors"),
                      metadata={"format": FORMAT, "checkpoint_id": ident})
            if training:
                save_file({k: v.detach().cpu().contiguous() for k, v in training.items()},
                          str(tmp / "training.safetensors"), metadata={"format": FORMAT, "checkpoint_id": ident})
            (tmp / "state.json").write_text(json.dumps(meta, indent=1))
        if name is None:
            atomic_write_text(ckdir / "latest", folder.name + "\n")
    except OSError as e:
        raise CheckpointWriteError(
            f"{folder}: cannot write the checkpoint of step {step} ({_reason(e)}); nothing half-written was kept. "
            f"Free disk space or make {ckdir} writable, then continue with `metassl train --resume "
            f"{Path(run_dir)}`") from e
    if name is None:
        steps = sorted(p for p in ckdir.iterdir() if p.is_dir() and re.fullmatch(r"step_\d{8}", p.name))
        for old in steps[:-keep]:
            remove_directory(old)  # renamed away first: a reader never finds it half-deleted
    return folder


def find_checkpoint(path: str | Path, which: str = "latest") -> Path:
    """A checkpoint folder from a run folder (its latest or best) or a checkpoint folder itself."""
    p = Path(path)
    if (p / "state.json").exists() or (p / "model.safetensors").exists():
        return p  # a checkpoint folder (load_checkpoint says what is wrong with it, if anything)
    ckdir = p / "checkpoints"
    if not p.exists():
        raise CheckpointError(f"{p} does not exist: give a run folder or a checkpoint folder")
    if which == "best":
        for attempt in range(2):
            if (ckdir / "best" / "state.json").is_file():
                return ckdir / "best"
            if not (ckdir / ".best.old").is_dir():
                break
            if attempt == 0:
                time.sleep(0.2)  # a training is replacing `best` right now: it is back within milliseconds
            elif (ckdir / ".best.old" / "state.json").is_file():
                return ckdir / ".best.old"  # left by a killed replacement: the last complete best
        raise CheckpointError(f"{p} has no best checkpoint (it is written when validation is enabled)")
    latest = ckdir / "latest"
    if latest.is_file():
        try:
            folder = ckdir / latest.read_text().strip()
        except (OSError, UnicodeDecodeError):
            folder = None
        if folder is not None and folder.name and (folder / "state.json").is_file():
            return folder
    steps = sorted(q for q in ckdir.glob("step_*") if (q / "state.json").is_file()) if ckdir.is_dir() else []
    if steps:
        return steps[-1]
    raise CheckpointError(f"{p} holds no checkpoint (looked for {ckdir}/latest and {ckdir}/step_*/state.json)")


def _load_state(folder: Path) -> dict[str, Any]:
    f = folder / "state.json"
    try:
        text = f.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CheckpointError(f"{f}: missing, so {folder} is not a complete checkpoint; {OTHER}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{f}: cannot be read ({_reason(e)}); {OTHER}") from e
    try:
        state = json.loads(text)
    except ValueError as e:
        raise CheckpointError(f"{f}: not valid JSON ({_reason(e)}): the file is damaged; {OTHER}") from e
    if not isinstance(state, dict):
        raise CheckpointError(f"{f}: holds a {type(state).__name__}, not a JSON object: the file is damaged; {OTHER}")
    if state.get("format") != FORMAT:
        raise CheckpointError(f"{folder} is not a metassl checkpoint (state.json has format {state.get('format')!r})")
    try:
        version = int(state.get("format_version", 0))
    except (TypeError, ValueError):
        raise CheckpointError(f"{f}: 'format_version' is {state.get('format_version')!r}, not a number: the file "
                              f"is damaged; {OTHER}") from None
    if version > FORMAT_VERSION:
        raise CheckpointError(f"{folder} was written by a newer metassl (checkpoint format "
                              f"{state['format_version']}, this version reads up to {FORMAT_VERSION}); upgrade metassl")
    step = state.get("step")
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        raise CheckpointError(f"{f}: 'step' is {'missing' if step is None else repr(step)}, not a step number: the "
                              f"file is damaged; {OTHER}")
    return state


def state_value(state: dict[str, Any], key: str, kind: type | tuple[type, ...], folder: str | Path) -> Any:
    """state.json's `key`, which must be of `kind`, or a CheckpointError naming the file and the key."""
    v = state.get(key)
    if not isinstance(v, kind):
        what = "missing" if key not in state else f"a {type(v).__name__}"
        raise CheckpointError(f"{Path(folder) / 'state.json'}: key {key!r} is {what}: the file is damaged or was not "
                              f"written by metassl; {OTHER}")
    return v


def load_tensors_file(file: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, metadata) of one safetensors file, or a CheckpointError naming it."""
    if not file.exists():
        raise CheckpointError(f"{file}: missing; {OTHER}")
    if not file.is_file():
        raise CheckpointError(f"{file}: not a file; {OTHER}")
    try:
        with safe_open(str(file), framework="pt") as h:
            meta = h.metadata() or {}
            return {k: h.get_tensor(k) for k in h.keys()}, meta
    except Exception as e:  # noqa: BLE001 - whatever the decoder says, the file is not a usable safetensors file
        raise CheckpointError(f"{file}: not a readable safetensors file ({_reason(e)}): it is damaged or "
                              f"truncated; {OTHER}") from e


def load_checkpoint(folder: str | Path, training: bool = True
                    ) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, torch.Tensor]]:
    """(model tensors, state.json, training tensors); only safetensors and JSON are read. With `training=False`
    (evaluation, prediction) training.safetensors is not read and {} is returned for it."""
    folder = Path(folder)
    state = _load_state(folder)
    model, meta = load_tensors_file(folder / "model.safetensors")
    ident = state.get("checkpoint_id")
    if ident and meta.get("checkpoint_id") not in (None, ident):
        raise CheckpointError(f"{folder / 'model.safetensors'}: belongs to another checkpoint than its state.json "
                              f"(copied from elsewhere?); {OTHER}")
    tensors: dict[str, torch.Tensor] = {}
    tr = folder / "training.safetensors"
    if training and tr.exists():
        tensors, tmeta = load_tensors_file(tr)
        if ident and tmeta.get("checkpoint_id") not in (None, ident):
            raise CheckpointError(f"{tr}: belongs to another checkpoint than its state.json (copied from another "
                                  f"run?): resuming with it would continue another run's optimizer; {OTHER}")
    return model, state, tensors


def open_checkpoint(path: str | Path, which: str = "latest", training: bool = False
                    ) -> tuple[Path, dict[str, torch.Tensor], dict[str, Any], dict[str, torch.Tensor]]:
    """find_checkpoint + load_checkpoint for readers of a run that may still be training: a checkpoint pruned
    between choosing and reading it is replaced by the run's new latest (one retry)."""
    for attempt in range(2):
        folder = find_checkpoint(path, which)
        try:
            return (folder, *load_checkpoint(folder, training))
        except CheckpointError:
            if attempt or folder.exists() or folder == Path(path):
                raise
    raise AssertionError("unreachable")


def check_finite(tensors: dict[str, torch.Tensor], file: str | Path) -> None:
    """A CheckpointError when any tensor holds NaN/inf (a run that diverged): nothing is evaluated on it."""
    bad = non_finite(tensors)
    if bad:
        raise CheckpointError(f"{file}: {len(bad)} tensors hold NaN or inf ({', '.join(bad[:3])}"
                              f"{'...' if len(bad) > 3 else ''}): the run diverged before this checkpoint; use an "
                              f"earlier checkpoint (checkpoints/step_*, checkpoints/best) or train again with a lower "
                              f"optim.lr")


def read_run_learner(path: str | Path, which: str = "latest") -> str | None:
    """The learner name a run or checkpoint was trained with (its state.json only; no tensors are read)."""
    folder = find_checkpoint(path, which)
    return _load_state(folder).get("learner")
