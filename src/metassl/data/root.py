"""Where data sets are read from and where decoded copies are cached.

The data root is `--data-root`, else `$METASSL_DATA`, else `~/.cache/metassl/data`. Decoded tensors are cached
under `$METASSL_CACHE`, else `~/.cache/metassl/cache` -- never inside the data root, which may be read-only.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import load_file, save_file

from ..atomic import atomic_write_path


class DatasetNotFoundError(FileNotFoundError):
    """A data set's files are missing; the message names what was looked for and where to put it."""


def _user_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "metassl"


def resolve_data_root(data_root: str | os.PathLike | None = None) -> Path:
    if data_root:
        return Path(data_root).expanduser()
    env = os.environ.get("METASSL_DATA")
    if env:
        return Path(env).expanduser()
    return _user_cache() / "data"


def cache_dir() -> Path:
    env = os.environ.get("METASSL_CACHE")
    return Path(env).expanduser() if env else _user_cache() / "cache"


def missing(dataset: str, root: Path, looked_for: list[str], how: str) -> DatasetNotFoundError:
    paths = "\n".join(f"  - {root / p}" for p in looked_for)
    return DatasetNotFoundError(
        f"data set {dataset!r} not found under the data root {root}.\nLooked for any of:\n{paths}\n{how}\n"
        f"Set the data root with --data-root DIR or the METASSL_DATA environment variable.")


def fingerprint(paths: list[Path]) -> str:
    """Identity of source files by path, size and modification time (cheap; no hashing of contents)."""
    h = hashlib.sha256()
    for p in paths:
        st = p.stat()
        h.update(f"{p.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def cached_tensors(key: str, sources: list[Path], build: Callable[[], tuple[dict[str, torch.Tensor], dict]]
                   ) -> tuple[dict[str, torch.Tensor], dict]:
    """Load tensors + JSON metadata cached under `key` for these source files, or build and cache them."""
    if os.environ.get("METASSL_NO_CACHE"):
        return build()
    folder = cache_dir()
    stem = f"{key}-{fingerprint(sources)}"
    tensor_file, meta_file = folder / f"{stem}.safetensors", folder / f"{stem}.json"
    if tensor_file.exists() and meta_file.exists():
        try:
            return load_file(str(tensor_file)), json.loads(meta_file.read_text())
        except Exception:  # a corrupt cache entry is rebuilt, never trusted
            pass
    tensors, meta = build()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with atomic_write_path(tensor_file) as tmp:
            save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp))
        with atomic_write_path(meta_file) as tmp:
            tmp.write_text(json.dumps(meta))
    except OSError:
        pass  # caching is an optimisation; a read-only home must not break loading
    return tensors, meta
