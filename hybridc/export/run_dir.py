"""A training run directory as the exporter sees it: its trained ff-EBM, where it came from, and the input
transform it was trained with (recorded in the manifest; the full ONNX model applies it).

The run is read by `hybridc.train.saved_run.read_run`, the one reader of run directories (file names in
`hybridc.train.run_dir`): the checkpoint's digest and the plan's SHA-256 are checked there, so an export
is always of the weights and the plan the run trained. This module only turns its errors into ExportErrors
and refuses runs that have no ff-EBM (algorithm=bp).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from hybridc.data.preprocess import InputTransform
from hybridc.export.manifest import ExportError, SourceInfo
from hybridc.runtime.ffebm import FFEBM
from hybridc.train.checkpoint import CheckpointError


@dataclass
class LoadedRun:
    """A run's compiled model with its trained state, where it came from, and its input transform."""

    ff: FFEBM
    source: SourceInfo
    example_inputs: tuple[torch.Tensor, ...]
    transform: InputTransform | None = None


def load_run(run_dir: str | Path, checkpoint: str | Path | None = None) -> LoadedRun:
    """The trained FFEBM of `run_dir` (`checkpoint`: None/"last", "best" or a path), for export."""
    from hybridc.train.saved_run import read_run

    try:
        run = read_run(run_dir, checkpoint)
    except CheckpointError as exc:
        raise ExportError(str(exc)) from None
    if not isinstance(run.module, FFEBM):
        raise ExportError(
            "this run trained the original model by backprop (algorithm=bp): it has no ff-EBM "
            "to export; export the model itself (hybridc export MODEL)"
        )
    cfg = run.config
    source = SourceInfo(
        kind="run",
        spec=cfg.model,
        model_kwargs=dict(cfg.model_kwargs),
        run_dir=str(run.run_dir),
        checkpoint=str(run.checkpoint),
        model_class=run.plan.model.model_class,
    )
    run.module.input_transform = run.transform  # export_ffebm records it (and model.onnx applies it)
    return LoadedRun(ff=run.module, source=source, example_inputs=run.example_inputs, transform=run.transform)
