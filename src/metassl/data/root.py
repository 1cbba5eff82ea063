"""Where data sets are read from and where decoded copies are cached.

The data root is `--data-root`, else `$METASSL_DATA`, else `~/.cache/metassl/data`. Decoded tensors are cached
under `$METASSL_CACHE`, else `~/.cache/metassl/cache` -- never inside the data root, which may be read-only. The
cache is optional: when it cannot be read or written (a full disk, a read-only home) the data is decoded again and
one warning says so; `METASSL_NO_CACHE=1` turns it off.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Callable, Iterator

import torch
from safetensors.torch import load_file, save_file

from ..atomic import atomic_write_path


class DatasetNotFoundError(FileNotFoundError):
    """A data set's files are missing; the message names what was looked for and where to put it."""


class DataFileError(ValueError):
    """A data set's file exists but cannot be read as what it should be (truncated, corrupt, another format, too
    large); the message names the file and says what to do."""


# what reading a damaged archive, pickle's contents or compressed stream raises (zipfile.BadZipFile, tarfile.TarError,
# lzma.LZMAError and zlib.error are not OSErrors); none of them names the file
def _read_errors() -> tuple[type[BaseException], ...]:
    import lzma
    import pickle
    import tarfile
    import zipfile
    import zlib

    return (zipfile.BadZipFile, tarfile.TarError, lzma.LZMAError, zlib.error, pickle.UnpicklingError, EOFError,
            OSError, MemoryError, KeyError, TypeError, AttributeError, IndexError, ValueError, OverflowError)


@contextlib.contextmanager
def reading(path: str | os.PathLike, what: str) -> Iterator[None]:
    """Errors while reading `path` (as `what`, e.g. "a CIFAR python batch") become one `DataFileError` naming the
    file; errors that already name it (and a missing data set) pass unchanged."""
    try:
        yield
    except (DatasetNotFoundError, DataFileError):
        raise
    except _read_errors() as e:
        if str(path) in str(e) and isinstance(e, ValueError):
            raise
        if isinstance(e, MemoryError):
            raise DataFileError(f"{path}: not enough memory to read it as {what} (a corrupt file can announce "
                                f"sizes it does not hold); re-download it or free memory") from e
        raise DataFileError(f"{path}: cannot read it as {what} ({type(e).__name__}: {e}); the file may be "
                            f"truncated, corrupt or of another format: re-download it") from e


class CacheWarning(UserWarning):
    """The decoded-data cache could not be used; loading goes on without it."""


_warned: set[str] = set()  # cache folders already warned about (one warning per folder and process)


def _cache_failed(folder: Path, e: BaseException) -> None:
    if str(folder) in _warned:
        return
    _warned.add(str(folder))
    reason = os.strerror(e.errno) if isinstance(e, OSError) and e.errno else f"{type(e).__name__}: {e}"
    warnings.warn(f"the decoded-data cache {folder} cannot be written ({reason}); continuing without it, so data "
                  f"sets are decoded again at every start. Free space there, set METASSL_CACHE to a writable folder, "
                  f"or METASSL_NO_CACHE=1 to turn the cache off", CacheWarning, stacklevel=3)


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
    try:
        if tensor_file.is_file() and meta_file.is_file():
            return load_file(str(tensor_file)), json.loads(meta_file.read_text())
    except Exception:  # noqa: BLE001 - a corrupt or unreadable cache entry is rebuilt, never trusted
        pass
    tensors, meta = build()
    write_cache(folder, tensor_file, meta_file, tensors, meta)
    return tensors, meta


def write_cache(folder: Path, tensor_file: Path, meta_file: Path, tensors: dict[str, torch.Tensor], meta: dict
                ) -> bool:
    """Store one cache entry (tensors first, metadata last: an entry without its metadata is never read). Any
    failure (a full disk: safetensors raises its own error type, not OSError) warns once and returns False."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with atomic_write_path(tensor_file) as tmp:
            save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp))
        with atomic_write_path(meta_file) as tmp:
            tmp.write_text(json.dumps(meta))
        return True
    except Exception as e:  # noqa: BLE001 - caching is an optimisation; its failure must never stop loading
        _cache_failed(folder, e)
        return False
