"""Exclusive ownership of a run directory: one writer at a time, unique default names.

Two trainings writing the same directory interleave their checkpoints and metrics and leave a run that
belongs to neither (issue 15: three `hybridc train --seed $s &` started in the same second shared one
default directory). Here:

* `create_unique_dir` makes a fresh directory with `mkdir` (atomic: exactly one process creates a name)
  under a name with a short random suffix, so runs started in the same second get different directories;
* `RunLock` holds `RUN_DIR/.lock` (created with O_EXCL, holding the owner's pid and host) for the run's life
  and removes it on any exit (normal end, error, Ctrl-C, SIGTERM). A lock left by a process that was killed
  (kill -9, power loss) is recognised by its pid no longer running on this host and taken over.
"""

from __future__ import annotations

import errno
import json
import os
import secrets
import socket
import time
from pathlib import Path
from types import TracebackType

from hybridc.errors import HybridcError

LOCK_NAME = ".lock"


class RunDirError(HybridcError):
    """A run directory cannot be used: another process writes it, or it holds someone else's files."""


def pid_alive(pid: int) -> bool:
    """Whether process `pid` exists on this machine (a zombie or another user's process counts as alive)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OverflowError:
        return False
    return True


def create_unique_dir(parent: Path, stem: str, attempts: int = 20) -> Path:
    """Create and return `parent/<stem>-<6 hex>`, a directory no other process can have created too."""
    parent.mkdir(parents=True, exist_ok=True)
    for _ in range(attempts):
        path = parent / f"{stem}-{secrets.token_hex(3)}"
        try:
            path.mkdir()
        except FileExistsError:
            continue
        return path
    raise RunDirError(f"could not create a new run directory under {parent} ({attempts} names taken)")


def _read_owner(path: Path) -> dict[str, object] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


class RunLock:
    """`RUN_DIR/.lock`, held from `acquire()` to `release()` (or as a context manager)."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self.held = False

    def acquire(self) -> RunLock:
        """Take the lock, or raise RunDirError naming the process that holds it."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        owner = json.dumps({"pid": os.getpid(), "host": socket.gethostname()})
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                if self._remove_if_stale():
                    continue
                holder = _read_owner(self.path) or {}
                raise RunDirError(
                    f"run directory {self.run_dir} is in use by another hybridc process (pid "
                    f"{holder.get('pid', '?')} on {holder.get('host', '?')}, lock file {self.path}): two runs "
                    "writing one directory would mix their files. Wait for it to finish, or choose another "
                    "--out."
                ) from None
            except OSError as exc:
                if exc.errno in (errno.EACCES, errno.EROFS, errno.EPERM):
                    raise RunDirError(
                        f"cannot write the run directory {self.run_dir} ({exc.strerror}); "
                        "choose a writable --out"
                    ) from None
                raise
            with os.fdopen(fd, "w") as fh:
                fh.write(owner + "\n")
            self.held = True
            return self
        raise RunDirError(f"could not take the lock {self.path} (it keeps reappearing)")

    def _remove_if_stale(self) -> bool:
        """Remove a lock whose process is gone (same host, pid not running); True when removed."""
        holder = _read_owner(self.path)
        if holder is None:  # being written this instant, or left half-written by a killed process
            try:
                age = time.time() - self.path.stat().st_mtime
            except FileNotFoundError:
                return True
            if age < 5.0:
                return False
        else:
            pid = holder.get("pid")
            if holder.get("host") != socket.gethostname() or not isinstance(pid, int) or pid_alive(pid):
                return False
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass
        return True

    def release(self) -> None:
        if self.held:
            self.held = False
            holder = _read_owner(self.path)
            if holder is not None and holder.get("pid") == os.getpid():
                self.path.unlink(missing_ok=True)

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()
