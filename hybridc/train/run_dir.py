"""A training run directory: the one place that names the files `hybridc train` writes, and tells a run
directory from anything else.

The trainer, `--resume`, `hybridc export RUN_DIR`, `hybridc eval RUN_DIR` and `hybridc.load_run` all read
these names from here, so a run directory means the same thing to every command::

    RUN_DIR/config.json      the experiment as it ran (ExperimentConfig, defaults resolved)
    RUN_DIR/plan.json        the partition the run compiled (absent for algorithm=bp)
    RUN_DIR/metrics.jsonl    one JSON record per finished epoch
    RUN_DIR/checkpoint.pt    the last state: model, optimizer, scheduler, RNG, data position (resumable)
    RUN_DIR/best.pt          the model of the epoch with the best test accuracy (weights only)
    RUN_DIR/curves.png       loss, accuracy and per-block equilibrium residual per epoch
    RUN_DIR/summary.json     the final summary (written when the run finishes)
    RUN_DIR/.lock            held while a process trains in the directory

Every file is written atomically (temporary sibling + fsync + rename, `hybridc.files`).
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from hybridc.errors import HybridcError
from hybridc.train.experiment import ConfigError, ExperimentConfig, validate_config
from hybridc.train.run_lock import LOCK_NAME, RunDirError, RunLock, create_unique_dir

CONFIG_NAME = "config.json"
PLAN_NAME = "plan.json"
METRICS_NAME = "metrics.jsonl"
CHECKPOINT_NAME = "checkpoint.pt"
BEST_CHECKPOINT_NAME = "best.pt"
CURVES_NAME = "curves.png"
SUMMARY_NAME = "summary.json"

#: every file a run directory holds (a non-empty directory with anything else is not a run)
RUN_FILES = frozenset(
    {
        CONFIG_NAME,
        PLAN_NAME,
        METRICS_NAME,
        CHECKPOINT_NAME,
        BEST_CHECKPOINT_NAME,
        CURVES_NAME,
        SUMMARY_NAME,
        LOCK_NAME,
    }
)

#: the checkpoints `load_run`/`eval`/`export` accept by name: the last epoch's, or the best one
CHECKPOINTS = {"last": CHECKPOINT_NAME, "best": BEST_CHECKPOINT_NAME}


def is_run_dir(path: str | Path) -> bool:
    """A directory with a run's config.json or plan.json that is not an export directory: what `hybridc
    export` and `hybridc eval` take as RUN_DIR rather than a model or an export (a run missing a file is
    then reported by the reader, `hybridc.train.saved_run.read_run`, naming the file)."""
    p = Path(path)
    return (
        p.is_dir()
        and ((p / CONFIG_NAME).is_file() or (p / PLAN_NAME).is_file())
        and not (p / "manifest.json").is_file()
    )


def default_run_name(cfg: ExperimentConfig) -> str:
    """`<YYYYmmdd-HHMMSS>-<model>-<data>-<alg>`; `create_unique_dir` appends a random suffix, so runs
    started in the same second never share a directory."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return f"{stamp}-{cfg.model_label()}-{cfg.data}-{cfg.algorithm}"


def is_hybridc_file(name: str) -> bool:
    """A file a run writes: its own names, or an atomic write's temporary `.<name>.<random>.tmp`."""
    if name in RUN_FILES:
        return True
    return (
        name.startswith(".")
        and name.endswith(".tmp")
        and name[1:].split(".tmp")[0].rsplit(".", 1)[0] in RUN_FILES
    )


def looks_like_run(path: Path) -> bool:
    """Whether directory `path` is empty or a run directory: nothing but files the trainer writes, a
    config.json that is a complete experiment config (hybridc writes every field) and metrics.jsonl lines
    that are epoch records. Anything else is somebody's own files, which training must not overwrite."""
    entries = list(path.iterdir())
    if not all(p.is_file() and is_hybridc_file(p.name) for p in entries):
        return False
    names = {p.name for p in entries if p.name in RUN_FILES} - {LOCK_NAME}
    if not names:
        return True
    try:
        data = json.loads((path / CONFIG_NAME).read_text())
        if not isinstance(data, dict) or not {"algorithm", "data", "epochs", "seed", "lr"} <= set(data):
            return False
        validate_config(data, str(path / CONFIG_NAME))
        metrics = path / METRICS_NAME
        lines = metrics.read_text().splitlines() if metrics.is_file() else []
        return all(isinstance(rec := json.loads(x), dict) and "epoch" in rec for x in lines if x.strip())
    except (OSError, ValueError, HybridcError):
        return False


def check_fresh_dir(path: Path, force: bool = False) -> None:
    """A fresh run may train into `path`: absent, empty, or a run directory that never finished an epoch
    (or anything, with `force`, that is not a run with a checkpoint). ConfigError/RunDirError otherwise."""
    if path.exists() and not path.is_dir():
        raise ConfigError(f"--out {path} exists and is not a directory")
    # A directory whose run never finished an epoch (no checkpoint) is simply started again.
    if path.is_dir() and (path / CHECKPOINT_NAME).exists():
        raise ConfigError(
            f"--out {path} already holds a run; continue it with `--resume {path}` or choose another --out"
        )
    if path.is_dir() and not force and not looks_like_run(path):
        raise RunDirError(
            f"refusing to train into {path}: it is not empty and not a hybridc run directory "
            f"(its files would be overwritten); choose another --out or pass --force"
        )


__all__ = [
    "BEST_CHECKPOINT_NAME",
    "CHECKPOINTS",
    "CHECKPOINT_NAME",
    "CONFIG_NAME",
    "CURVES_NAME",
    "LOCK_NAME",
    "METRICS_NAME",
    "PLAN_NAME",
    "RUN_FILES",
    "SUMMARY_NAME",
    "check_fresh_dir",
    "default_run_name",
    "is_hybridc_file",
    "is_run_dir",
    "looks_like_run",
]


@dataclass
class ClaimedRunDir:
    """A run directory one training process holds, locked, for the run's life."""

    path: Path
    created: bool  # this run made it (so it may remove it again when it fails before writing anything)
    lock: RunLock

    def release(self, failed: bool) -> None:
        """Drop the lock; a directory this run created and left empty (it failed before writing) goes too."""
        self.lock.release()
        if failed and self.created:
            with contextlib.suppress(OSError):
                self.path.rmdir()  # only when empty


def claim_run_dir(path: Path | None, cfg: ExperimentConfig, resuming: bool, force: bool) -> ClaimedRunDir:
    """Create the run directory (`path`, or a unique default name under runs/) and lock it; a fresh run's
    directory is checked again under the lock (another run may have just finished an epoch there), and
    half-written files of a process killed mid-write are removed (we hold the lock)."""
    created = False
    try:
        if path is None:
            path = create_unique_dir(Path("runs"), default_run_name(cfg))
            created = True
        else:
            created = not path.exists()
        lock = RunLock(path).acquire()
    except RunDirError:
        if created and path is not None:
            path.rmdir()
        raise
    except OSError as exc:
        where = path if path is not None else Path("runs")
        raise RunDirError(
            f"cannot create the run directory {where} ({exc.strerror or exc}); choose a writable --out"
        ) from None
    if not resuming:
        try:
            check_fresh_dir(path, force)
        except BaseException:
            ClaimedRunDir(path, created, lock).release(failed=True)
            raise
    for p in path.iterdir():
        if p.name.startswith(".") and p.name.endswith(".tmp") and is_hybridc_file(p.name) and p.is_file():
            p.unlink(missing_ok=True)
    return ClaimedRunDir(path, created, lock)
