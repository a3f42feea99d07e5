"""What `--resume RUN_DIR` continues from: the run's saved config (the flags given now checked against it)
and its last checkpoint, checked to belong to that config."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hybridc.train.checkpoint import CheckpointError, load_checkpoint
from hybridc.train.experiment import (
    RESUMABLE_FIELDS,
    ConfigError,
    ExperimentConfig,
    check_resume_compatible,
    validate_config,
)
from hybridc.train.run_dir import CHECKPOINT_NAME, CONFIG_NAME


def resume_config(run_dir: Path, overrides: dict[str, Any]) -> tuple[ExperimentConfig, dict[str, Any]]:
    """The config a `--resume run_dir` continues with (the saved one, `overrides` checked against it) and the
    run's last checkpoint, checked to belong to that config."""
    if not run_dir.is_dir():
        raise CheckpointError(f"--resume {run_dir}: no such run directory")
    cfg_path = run_dir / CONFIG_NAME
    if not cfg_path.is_file():
        raise CheckpointError(
            f"--resume {run_dir}: {CONFIG_NAME} is missing; is this a hybridc run directory?"
        )
    try:
        saved = validate_config(json.loads(cfg_path.read_text()), str(cfg_path))
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{cfg_path} is not valid JSON ({exc})") from None
    cfg = check_resume_compatible(saved, overrides)
    ckpt = load_checkpoint(run_dir / CHECKPOINT_NAME)

    def semantic(d: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in d.items() if k not in RESUMABLE_FIELDS}

    try:  # validated, so that a run written before a field existed compares with its default
        ck_cfg = validate_config(ckpt["config"], f"{run_dir / CHECKPOINT_NAME} (its config)")
    except ConfigError:
        ck_cfg = None
    if ck_cfg is None or semantic(ck_cfg.model_dump(mode="json")) != semantic(saved.model_dump(mode="json")):
        raise CheckpointError(
            f"{run_dir}: the checkpoint belongs to a different config than {CONFIG_NAME} "
            "(files from two runs mixed?)"
        )
    return cfg, ckpt
