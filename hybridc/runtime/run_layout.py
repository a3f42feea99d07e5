"""The layout of a training run directory: the one place that names the files `hybridc train` writes.

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

Every file is written atomically (temporary sibling + fsync + rename, `hybridc.runtime.files`).
"""

from __future__ import annotations

from pathlib import Path

from hybridc.runtime.run_lock import LOCK_NAME

CONFIG_NAME = "config.json"
PLAN_NAME = "plan.json"
METRICS_NAME = "metrics.jsonl"
CHECKPOINT_NAME = "checkpoint.pt"
BEST_CHECKPOINT_NAME = "best.pt"
CURVES_NAME = "curves.png"
SUMMARY_NAME = "summary.json"

#: every file a run directory holds (a non-empty directory with anything else is not a run)
RUN_FILES = frozenset({CONFIG_NAME, PLAN_NAME, METRICS_NAME, CHECKPOINT_NAME, BEST_CHECKPOINT_NAME, CURVES_NAME,
                       SUMMARY_NAME, LOCK_NAME})

#: the checkpoints `load_run`/`eval`/`export` accept by name: the last epoch's, or the best one
CHECKPOINTS = {"last": CHECKPOINT_NAME, "best": BEST_CHECKPOINT_NAME}


def is_run_dir(path: str | Path) -> bool:
    """A directory holding a training run's config.json (what `export`/`eval` take as RUN_DIR rather than a
    model or an export directory)."""
    p = Path(path)
    return p.is_dir() and (p / CONFIG_NAME).is_file() and not (p / "manifest.json").is_file()


__all__ = ["BEST_CHECKPOINT_NAME", "CHECKPOINTS", "CHECKPOINT_NAME", "CONFIG_NAME", "CURVES_NAME", "LOCK_NAME",
           "METRICS_NAME", "PLAN_NAME", "RUN_FILES", "SUMMARY_NAME", "is_run_dir"]
