"""Read a training run directory back: the trained model exactly as the run built it, with its input transform.

One reader for every consumer of a finished (or interrupted) run: `hybridc.load_run` and `hybridc eval`
(`hybridc.evaluate`), `hybridc export RUN_DIR` (`hybridc.export.run_dir`). It reads the files named in
`hybridc.train.run_dir` and nothing else:

* the checkpoint (`checkpoint.pt`, the last epoch; `best.pt`, the best epoch's weights; or a path), loaded
  with `weights_only=True`, its content digest checked;
* the run's config (the one stored in the checkpoint, which the weights belong to; `config.json` for a
  checkpoint without one);
* `plan.json` for a compiled run, refused when it changed after the run recorded its SHA-256;
* the input transform the run trained on (stored in the checkpoint; for runs written before it was, derived
  from the config's dataset and the plan's input shape).

The model is rebuilt by the trainer's own `build_model`/`compile_model` (zoo models fitted to the data as
the run fitted them, the embedded default MLP when `model` is null) and the checkpoint's state is loaded
strictly. Every problem is a CheckpointError naming the file and what to do.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hybridc.data.preprocess import InputTransform, input_transform
from hybridc.errors import HybridcError
from hybridc.files import sha256_file
from hybridc.train.checkpoint import CheckpointError, check_digest, read_torch_file
from hybridc.train.experiment import ExperimentConfig, validate_config
from hybridc.train.run_dir import CHECKPOINTS, CONFIG_NAME, PLAN_NAME

__all__ = ["SavedRun", "checkpoint_path", "read_run"]


@dataclass
class SavedRun:
    """A run's trained model (CPU, eval mode) and where it came from.

    `module` takes what the run's model took: inputs already transformed by `transform` (resized and
    normalised); `hybridc.load_run` wraps it with that transform for raw images."""

    run_dir: Path
    checkpoint: Path
    config: ExperimentConfig
    module: nn.Module
    plan: Any
    transform: InputTransform
    example_inputs: tuple[torch.Tensor, ...]
    epoch: int | None
    test_acc: float | None


def checkpoint_path(run_dir: Path, checkpoint: str | Path | None) -> Path:
    """The checkpoint file meant by `checkpoint`: None or "last" (checkpoint.pt), "best" (best.pt), or a path."""
    if checkpoint is None or str(checkpoint) in CHECKPOINTS:
        name = CHECKPOINTS[str(checkpoint or "last")]
        path = run_dir / name
        if not path.is_file():
            if checkpoint == "best":
                raise CheckpointError(
                    f"run directory {run_dir} has no {name} (written by each epoch that improves "
                    "the test accuracy since this hybridc version); use the last checkpoint"
                )
            raise CheckpointError(
                f"run directory {run_dir} has no checkpoint ({name}): the run never finished "
                "an epoch, or this is not a run directory"
            )
        return path
    path = Path(checkpoint)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    return path


def _config(run_dir: Path, state: dict[str, Any], ckpt: Path) -> ExperimentConfig:
    raw = state.get("config")
    where = f"{ckpt} (its config)"
    if not isinstance(raw, dict):
        path = run_dir / CONFIG_NAME
        if not path.is_file():
            raise CheckpointError(
                f"{ckpt} stores no config and {run_dir} has no {CONFIG_NAME}: cannot tell which "
                "model was trained"
            )
        try:
            raw = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise CheckpointError(f"{path} is not valid JSON ({exc})") from None
        where = str(path)
    if not isinstance(raw, dict):
        raise CheckpointError(f"{where}: the config must be a mapping of settings")
    try:
        return validate_config(raw, where)
    except HybridcError as exc:
        raise CheckpointError(str(exc)) from None


def _plan(run_dir: Path, state: dict[str, Any], ckpt: Path) -> Any:
    from hybridc.plan import PlanFileError, read_plan

    path = run_dir / PLAN_NAME
    if not path.is_file():
        raise CheckpointError(
            f"{run_dir} has no {PLAN_NAME}: the run's partition is needed to rebuild its model"
        )
    recorded = state.get("plan_sha256")
    if recorded is not None and sha256_file(path) != recorded:
        raise CheckpointError(
            f"{path} was changed after the run wrote it (its SHA-256 differs from the one "
            f"recorded in {ckpt}): the checkpoint's weights belong to the original plan; restore "
            "the file"
        )
    try:
        plan = read_plan(path)
    except PlanFileError as exc:
        raise CheckpointError(str(exc)) from None
    if not plan.model.example_shapes:
        raise CheckpointError(f"{path} records no example input shapes")
    return plan


def _transform(cfg: ExperimentConfig, state: dict[str, Any], plan: Any) -> InputTransform:
    """The run's input transform: stored by the trainer, else (older runs) the dataset's statistics with the
    input size of the config or, failing that, of the plan's example input."""
    stored = state.get("input_transform")
    if isinstance(stored, dict):
        try:
            return InputTransform.from_json(stored)
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"the checkpoint's input_transform is malformed ({exc})") from None
    size = (cfg.input_size, cfg.input_size) if cfg.input_size is not None else None
    if size is None and plan is not None:
        shape = plan.model.example_shapes[0]
        if len(shape) == 4:
            size = (int(shape[2]), int(shape[3]))
    return input_transform(cfg.data, size)


def _state_dict(state: dict[str, Any], path: Path) -> dict[str, torch.Tensor]:
    sd = state.get("model")
    if not isinstance(sd, dict):
        raise CheckpointError(f"{path} holds no model state (expected a dict with key 'model')")
    return {k.removeprefix("module."): v for k, v in sd.items()}


def read_run(run_dir: str | Path, checkpoint: str | Path | None = None) -> SavedRun:
    """Rebuild the trained model of `run_dir` from `checkpoint` (None/"last", "best" or a path)."""
    from hybridc.data.datasets import DATASETS
    from hybridc.train.build import build_model, compile_model

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(f"{run_dir} is not a run directory (no such directory)")
    ckpt = checkpoint_path(run_dir, checkpoint)
    state = read_torch_file(ckpt)
    if not isinstance(state, dict):
        raise CheckpointError(f"{ckpt} is not a hybridc checkpoint (top level is {type(state).__name__})")
    check_digest(state, ckpt)
    cfg = _config(run_dir, state, ckpt)
    plan = _plan(run_dir, state, ckpt) if cfg.algorithm != "bp" else None
    transform = _transform(cfg, state, plan)
    classes = DATASETS[cfg.data].num_classes
    try:
        model, example = build_model(cfg, transform.raw_shape, classes)
        if plan is not None and tuple(example[0].shape[1:]) != tuple(plan.model.example_shapes[0][1:]):
            raise CheckpointError(
                f"{run_dir / PLAN_NAME} records input shape {plan.model.example_shapes[0][1:]}, "
                f"but the run's model takes {list(example[0].shape[1:])}"
            )
        module = compile_model(cfg, model, example, plan)
    except CheckpointError:
        raise
    except HybridcError as exc:
        raise CheckpointError(f"cannot rebuild the model of run {run_dir}: {exc}") from None
    try:
        module.load_state_dict(_state_dict(state, ckpt), strict=True)
    except RuntimeError as exc:
        raise CheckpointError(
            f"checkpoint {ckpt} does not fit the rebuilt model: {str(exc).splitlines()[0]}"
        ) from None
    epoch = state.get("epoch")
    return SavedRun(
        run_dir=run_dir,
        checkpoint=ckpt,
        config=cfg,
        module=module.eval(),
        plan=plan,
        transform=transform,
        example_inputs=tuple(example),
        epoch=int(epoch) if isinstance(epoch, int) else None,
        test_acc=state.get("test_acc") if isinstance(state.get("test_acc"), float) else None,
    )
