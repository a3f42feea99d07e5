"""Atomic publication of an export directory: staging, swap-in, and keeping a failed export aside.

An export is written into a temporary sibling `.DIR.tmp-<pid>-<random>` (`staging_dir`) and moved to DIR
only when complete (`publish`): an existing export is replaced whole, in one step where the kernel allows
(Linux renameat2 RENAME_EXCHANGE), never half-overwritten. A staged export whose check failed goes to
`DIR.failed-<UTC stamp>` with its report instead (`keep_failed`). Staging directories of exports that were
killed (kill -9: no Python cleanup ran) are recognised by their dead pid and removed by the next export to
the same place (`remove_stale_staging`).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import datetime
import json
import os
import re
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

from hybridc.export.manifest import MANIFEST_NAME, ExportError
from hybridc.files import atomic_write_text
from hybridc.train.run_lock import pid_alive

if TYPE_CHECKING:
    from hybridc.export.verify import VerifyReport

#: the report written into an export kept aside after a failed check
FAILED_REPORT = "verify-report.json"

_RENAME_EXCHANGE = 2
_AT_FDCWD = -100
#: a staging (`.NAME.tmp-<pid>-<random>`) or backup (`.NAME.old-<pid>-<random>`) sibling of export NAME
_STAGING = re.compile(r"^\.(?P<name>.+)\.(?:tmp|old)-(?:(?P<pid>\d+)-)?[0-9A-Za-z_]+$")


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2 RENAME_EXCHANGE); False where unavailable."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    return fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0


def normalize_permissions(root: Path) -> None:
    """Ordinary permissions (umask applied) for the export: temporary files and directories are created
    private (0600/0700), which would otherwise survive into the published directory."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(root, 0o777 & ~mask)
    for path in root.rglob("*"):
        os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~mask)


def check_destination(out: Path, force: bool) -> None:
    """Refuse to replace anything that is not a previous export unless `force`."""
    if out.exists() and not out.is_dir():
        raise ExportError(f"{out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not (out / MANIFEST_NAME).is_file() and not force:
        raise ExportError(
            f"refusing to replace {out}: it is not empty and not a hybridc export directory "
            f"(no {MANIFEST_NAME}); choose another --output or pass --force"
        )


def remove_stale_staging(out: Path) -> list[Path]:
    """Remove `.NAME.tmp-*` / `.NAME.old-*` siblings of `out` left by exports that were killed: those whose
    pid is no longer running (names without a pid come from older hybridc versions: always stale)."""
    removed: list[Path] = []
    if not out.parent.is_dir():
        return removed
    for p in out.parent.iterdir():
        m = _STAGING.match(p.name)
        if m is None or m.group("name") != out.name or not p.is_dir():
            continue
        pid = m.group("pid")
        if pid is not None and int(pid) != os.getpid() and pid_alive(int(pid)):
            continue  # another export to the same place is running
        shutil.rmtree(p, ignore_errors=True)
        removed.append(p)
    return removed


def staging_dir(out: Path) -> Path:
    """A new empty staging directory `.NAME.tmp-<pid>-<random>` next to `out` (creating `out`'s parent),
    after removing those that killed exports to `out` left behind."""
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(out)
    return Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-{os.getpid()}-", dir=out.parent))


def keep_failed(staging: Path, out: Path, report: VerifyReport) -> Path:
    """Move a staged export whose check failed to `DIR.failed-<UTC stamp>` with its report; return it."""
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    kept = out.parent / f"{out.name}.failed-{stamp}"
    n = 1
    while kept.exists():
        n += 1
        kept = out.parent / f"{out.name}.failed-{stamp}-{n}"
    atomic_write_text(
        staging / FAILED_REPORT, json.dumps(report.to_json() | {"directory": str(kept)}, indent=2) + "\n"
    )
    os.replace(staging, kept)
    return kept


def publish(staging: Path, out: Path) -> None:
    """Move the complete `staging` directory to `out`, replacing a previous `out` in one step."""
    if not out.exists():
        os.replace(staging, out)
        return
    if _exchange(staging, out):
        shutil.rmtree(staging, ignore_errors=True)  # now holds the previous export
        return
    backup = out.parent / f".{out.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    os.replace(out, backup)
    try:
        os.replace(staging, out)
    except BaseException:
        os.replace(backup, out)
        raise
    shutil.rmtree(backup, ignore_errors=True)


__all__ = [
    "FAILED_REPORT",
    "check_destination",
    "keep_failed",
    "normalize_permissions",
    "publish",
    "remove_stale_staging",
    "staging_dir",
]
