"""Atomic file and folder writes: a reader sees the old version or the new one, never half of one.

Temporaries are hidden entries beside their target: `.NAME.XXXXXXXX.tmp` (a file or folder being written, or a
folder being deleted) and `.NAME.old` (the previous folder during a replacement). A process killed mid-write
leaves them behind; `clean_leftovers` removes them (and puts back a `.NAME.old` whose replacement never arrived).
Files and folders get the permissions the umask gives (tempfile alone would make them private: 0600 / 0700).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

LEFTOVER = re.compile(r"\.(?P<name>.+?)\.(?:[A-Za-z0-9_]{8}|pruned)\.tmp|\.(?P<old>.+)\.old")


def current_umask() -> int:
    """The process umask; read from /proc where possible, since setting it to read it races with other threads."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _honour_umask(path: Path, directory: bool) -> None:
    os.chmod(path, (0o777 if directory else 0o666) & ~current_umask())


@contextlib.contextmanager
def atomic_write_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it is fsynced and renamed over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        _honour_umask(tmp_path, directory=False)
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_write_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder beside `path`; on success it replaces `path` (which may exist) in one rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        _honour_umask(tmp, directory=True)
        yield tmp
        for f in tmp.iterdir():
            if f.is_file():
                _honour_umask(f, directory=False)  # some writers (safetensors) create their files 0600
                with open(f, "rb+") as fh:
                    os.fsync(fh.fileno())
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            if old.exists():
                shutil.rmtree(old)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old)
        else:
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def remove_directory(path: str | os.PathLike) -> None:
    """Delete a folder so that readers never see it half-deleted: renamed away (one step), then removed."""
    path = Path(path)
    gone = path.with_name(f".{path.name}.pruned.tmp")
    try:
        os.replace(path, gone)
    except FileNotFoundError:
        return
    except OSError:  # e.g. a stale `gone` folder that is not empty: delete in place
        gone = path
    shutil.rmtree(gone, ignore_errors=True)


def clean_leftovers(folder: str | os.PathLike) -> list[str]:
    """Remove the temporaries an interrupted write left in `folder` (not recursive); a `.NAME.old` whose NAME is
    missing is the last complete version (the process died between the two renames): it is renamed back. Returns
    what was done, one entry per name."""
    folder = Path(folder)
    done: list[str] = []
    if not folder.is_dir():
        return done
    for p in sorted(folder.iterdir()):
        m = LEFTOVER.fullmatch(p.name)
        if m is None:
            continue
        target = folder / m.group("old") if m.group("old") else None
        if target is not None and not p.is_dir():
            continue  # only atomic_directory makes `.NAME.old`, and always a folder
        try:
            if target is not None and not target.exists():
                os.replace(p, target)
                done.append(f"{p.name} -> {target.name} (restored)")
                continue
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()
            done.append(p.name)
        except FileNotFoundError:  # removed meanwhile
            continue
    return done
