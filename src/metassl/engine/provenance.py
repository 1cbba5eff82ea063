"""Where a run came from, recorded in every checkpoint's state.json under `origin`: the config (preset or YAML
file) and the overrides it was trained with, what that config alone trains on (its data set and test split, so the
preset's paper numbers and description are shown only for runs still on that data), and the data root given to the
trainer (as given and absolute), which later `eval` / `report` / `compare` / `--resume` use while it still exists.
Runs written before `origin` existed have none: their labels are shown as before, their data root is not known."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["make_origin", "with_data_root", "recorded_data_root", "preset_applies", "paper_reference", "paper_note",
           "overrides_text"]


def make_origin(config: str | None, overrides: list[str] | None) -> dict[str, Any]:
    """What `metassl train CONFIG OVERRIDES...` records: the config, the overrides, and the data the config alone
    (without overrides) trains and tests on."""
    from ..config import ConfigError, load_config

    origin: dict[str, Any] = {"config": config, "overrides": list(overrides or [])}
    if config:
        try:
            base = load_config(config, [])
            origin["preset_data"] = {"dataset": base.data.dataset, "test_split": base.data.test_split,
                                     "options": dict(base.data.options)}
        except (ConfigError, OSError, ValueError):  # a YAML file that needs its overrides to be valid: unknown
            pass
    return origin


def with_data_root(origin: dict[str, Any] | None, data_root: str | None) -> dict[str, Any]:
    """`origin` with the data root the trainer read (`--data-root`, else data.root), as given and absolute."""
    out = dict(origin or {})
    if data_root:
        out["data_root"] = str(data_root)
        out["data_root_abs"] = str(Path(data_root).expanduser().resolve())
    return out


def recorded_data_root(origin: dict[str, Any] | None) -> str | None:
    """The recorded data root that still exists (the absolute path first, then the path as given, relative to the
    current folder), or None."""
    origin = origin or {}
    for key in ("data_root_abs", "data_root"):
        p = origin.get(key)
        if isinstance(p, str) and p and Path(p).expanduser().exists():
            return p
    return None


def preset_applies(cfg: Any, origin: dict[str, Any] | None, dataset: str | None = None,
                   split: str | None = None) -> bool:
    """Whether the config's labels (eval.paper, description) describe this run evaluated on `dataset`/`split`
    (default: the run's): the run trained on the data set its config names without overrides, and the evaluation
    uses that data set's test split."""
    data = cfg.data
    if dataset not in (None, data.dataset) or split not in (None, data.test_split):
        return False
    pd = (origin or {}).get("preset_data")
    if not pd:  # runs made before origins were recorded, or from the Python API: as before
        return True
    return (pd.get("dataset") == data.dataset and pd.get("test_split") == data.test_split
            and (pd.get("options") or {}) == dict(data.options))


def paper_reference(cfg: Any, origin: dict[str, Any] | None, protocol: dict[str, Any], tag: str | None = None
                    ) -> float | None:
    """The config's paper number for this protocol (`eval.paper[tag]`), or None where it does not apply: another
    data set or split than the preset's, or a protocol with unlabeled images or distractors."""
    if protocol.get("unlabeled") or protocol.get("distractors"):
        return None
    if not preset_applies(cfg, origin, protocol.get("dataset"), protocol.get("split")):
        return None
    return cfg.eval.paper.get(tag or f"{protocol.get('ways')}w{protocol.get('shots')}s")


def paper_note(cfg: Any, origin: dict[str, Any] | None, protocol: dict[str, Any], tag: str | None = None
               ) -> str | None:
    """`eval.paper_note` (what the paper gives instead of a number, e.g. only a figure) for a protocol that has no
    number in `eval.paper`, where the preset applies (as `paper_reference`); else None."""
    note = getattr(cfg.eval, "paper_note", "")
    if not note or protocol.get("unlabeled") or protocol.get("distractors"):
        return None
    if not preset_applies(cfg, origin, protocol.get("dataset"), protocol.get("split")):
        return None
    return None if (tag or f"{protocol.get('ways')}w{protocol.get('shots')}s") in cfg.eval.paper else note


def overrides_text(origin: dict[str, Any] | None) -> str | None:
    """`CONFIG key=value ...` as the run was started, or None when not recorded."""
    origin = origin or {}
    if not origin.get("config"):
        return None
    return " ".join([str(origin["config"]), *origin.get("overrides", [])])
