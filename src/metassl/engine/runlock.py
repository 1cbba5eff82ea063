"""One writer per run folder: the training holds an exclusive lock file, RUN/.lock, while it runs.

The file says who holds it (PID, host, start time, command). It is locked with `flock`, which the kernel releases
when the process ends however it ends, so a lock file left by a killed run is stale: the next run takes it over and
says so. A live holder makes a second writer stop with an error naming the PID, the host and the file. Where
`flock` is not supported (some network file systems) the file is created exclusively instead and a lock is stale
when its PID no longer runs on this host (a lock from another host is never assumed stale: the message says how
to remove it). Readers (eval, predict, report) take no lock. Under torchrun only rank 0 takes it (the trainer).
"""

from __future__ import annotations

import errno
import json
import os
import socket
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

try:
    import fcntl
except ImportError:  # not POSIX: the PID fallback
    fcntl = None

LOCK_NAME = ".lock"
UNSUPPORTED = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL, errno.ENOSYS}


class RunLockedError(FileExistsError):
    """Another live process holds the run folder's lock."""

    def __str__(self) -> str:  # one line, without OSError's "[Errno None]"
        return str(self.args[0]) if self.args else "run folder is locked"


def _process_start(pid: int) -> str | None:
    """The kernel's start time of `pid` (tells a reused PID from the lock's process), or None where unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[19]  # field 22, counted from field 3 after the command name
    except (OSError, IndexError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: it exists, owned by someone else
        return True
    return True


def _me() -> dict[str, Any]:
    return {"pid": os.getpid(), "host": socket.gethostname(), "started": datetime.now().isoformat(timespec="seconds"),
            "pid_start": _process_start(os.getpid()), "command": " ".join(sys.argv)[:300]}


def _parse(text: str) -> dict[str, Any] | None:
    try:
        d = json.loads(text)
    except ValueError:
        return None
    return d if isinstance(d, dict) and isinstance(d.get("pid"), int) else None


def _read(path: Path) -> dict[str, Any] | None:
    try:
        return _parse(path.read_text(encoding="utf-8", errors="replace"))
    except OSError:
        return None


def _write(fd: int, info: dict[str, Any]) -> None:
    data = (json.dumps(info) + "\n").encode()
    os.ftruncate(fd, 0)
    os.pwrite(fd, data, 0)
    os.fsync(fd)


def _who(h: dict[str, Any] | None) -> str:
    if not h:
        return "another process (it has not written its details yet)"
    return f"PID {h.get('pid')} on host {h.get('host')}, since {h.get('started')}"


def locked_message(run_dir: Path, holder: dict[str, Any] | None) -> str:
    path = Path(run_dir) / LOCK_NAME
    here = holder and holder.get("host") == socket.gethostname()
    hint = "stop it or wait for it to end" if here else \
        "stop it or wait for it to end; if it no longer runs (e.g. its machine went down), delete the lock file"
    return (f"{path}: run folder {run_dir} is in use by another training ({_who(holder)}); one process writes a run "
            f"folder at a time: {hint}, or use another --run-dir")


def _held_by_pid(h: dict[str, Any] | None, path: Path) -> bool:
    """The PID fallback: is the process named in the lock file still the one that took it?"""
    if h is None:  # unreadable: being written right now, or the remains of a crash
        try:
            return time.time() - path.stat().st_mtime < 10
        except OSError:
            return False
    if h.get("host") != socket.gethostname():
        return True
    pid = int(h["pid"])
    if not _alive(pid):
        return False
    start = _process_start(pid)
    return start is None or h.get("pid_start") is None or start == h.get("pid_start")


def _flock(fd: int) -> bool | None:
    """True: locked; False: another open file holds it; None: flock unsupported here."""
    if fcntl is None:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    except OSError as e:
        if e.errno in UNSUPPORTED:
            return None
        raise


def _stale_note(path: Path, prev: dict[str, Any] | None) -> str:
    return (f"{path}: took over a stale lock ({_who(prev) if prev else 'no readable details'}; that process no longer "
            f"holds it: it was killed or crashed)")


class RunLock:
    """The held lock of one run folder; `release()` removes the lock file (and a folder that only it created).
    `active` is true while its holder trains (Trainer.run): a lock of this process that is not active belongs to
    a Trainer that was made and never run (or dropped), and a new Trainer of the same folder takes it over."""

    def __init__(self, run_dir: Path, fd: int, created_dir: bool):
        self.run_dir, self.path, self.fd, self.created_dir = run_dir, run_dir / LOCK_NAME, fd, created_dir
        self.active = False
        _HELD[_key(run_dir)] = self

    def release(self) -> None:
        if self.fd is None:
            return
        if _HELD.get(_key(self.run_dir)) is self:
            del _HELD[_key(self.run_dir)]
        try:
            try:  # remove the file only while it is ours (it always is, unless someone deleted it by hand)
                if os.stat(self.path).st_ino == os.fstat(self.fd).st_ino:
                    os.unlink(self.path)
            except FileNotFoundError:
                pass
        finally:
            os.close(self.fd)
            self.fd = None
        if self.created_dir:
            try:
                self.run_dir.rmdir()  # a run that failed before writing anything leaves no empty folder
            except OSError:
                pass

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


_HELD: dict[str, RunLock] = {}  # the locks this process holds, by folder


def _key(run_dir: Path) -> str:
    return os.path.realpath(run_dir)


def acquire(run_dir: str | Path, echo: Callable[[str], Any] = print) -> RunLock:
    """Take the run folder's lock (creating the folder), or raise RunLockedError naming the holder."""
    run_dir = Path(run_dir)
    created = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK_NAME
    mine = _HELD.get(_key(run_dir))
    if mine is not None:
        if mine.active:
            raise RunLockedError(locked_message(run_dir, _read(path)) + " (a Trainer of this process is running in it)")
        created = created or mine.created_dir
        mine.created_dir = False
        mine.release()  # an idle Trainer of this process (never run): the new one takes over
    for _ in range(10):
        try:
            fd, fresh = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666), True
        except FileExistsError:
            try:
                fd, fresh = os.open(path, os.O_RDWR), False
            except FileNotFoundError:  # released meanwhile
                continue
        ok = False
        try:
            got = _flock(fd)
            if got is False:
                raise RunLockedError(locked_message(run_dir, _read(path)))
            if got is None:  # no flock here: the exclusive create is the lock, and the PID tells a stale one
                if not fresh:
                    prev = _read(path)
                    if _held_by_pid(prev, path):
                        raise RunLockedError(locked_message(run_dir, prev))
                    echo(_stale_note(path, prev))
                    try:
                        os.unlink(path)
                    except FileNotFoundError:
                        pass
                    continue
            else:
                try:  # the file we locked may have been unlinked by a holder releasing it meanwhile: try again
                    same = os.stat(path).st_ino == os.fstat(fd).st_ino
                except FileNotFoundError:
                    same = False
                if not same:
                    continue
                if not fresh and os.fstat(fd).st_size:
                    prev = _parse(os.pread(fd, 65536, 0).decode("utf-8", "replace"))
                    if prev is None or prev.get("pid") != os.getpid() or prev.get("host") != socket.gethostname():
                        echo(_stale_note(path, prev))
            _write(fd, _me())
            ok = True
            return RunLock(run_dir, fd, created)
        finally:
            if not ok:
                os.close(fd)
    raise RunLockedError(f"{path}: the lock of {run_dir} kept changing hands; try again")


def holder(run_dir: str | Path) -> dict[str, Any] | None:
    """Who holds the run folder's lock now ({} when a live holder wrote no details yet), or None when it is free."""
    path = Path(run_dir) / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # no lock file (or none this user may read: then it is not this user's run to write)
        return None
    try:
        got = _flock(fd)
        if got is None:
            h = _read(path)
            return (h or {}) if _held_by_pid(h, path) else None
        if got:
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
        return _read(path) or {}
    finally:
        os.close(fd)


def check_free(run_dir: str | Path) -> None:
    """Raise RunLockedError when a live process holds the run folder's lock."""
    h = holder(run_dir)
    if h is not None:
        raise RunLockedError(locked_message(Path(run_dir), h or None))
