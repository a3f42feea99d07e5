"""Rebuild the trained ff-EBM of a training run directory, for export.

The contract this module assumes of a run directory (what `hybridc train` writes; everything the exporter
needs from a run goes through `load_run`, and the one place that knows how a run built its model is
`rebuild_model`, so adapting to the trainer is a change here only):

    RUN_DIR/plan.json        the plan the run compiled (required; JSON of hybridc.plan.Plan); its example
                             shapes give the input shape, its output tensor's last dim the class count
    RUN_DIR/checkpoint.pt    torch.save'd dict, loadable with weights_only=True (or --checkpoint PATH;
                             also looked for: RUN_DIR/checkpoints/last.pt, the newest RUN_DIR/checkpoints/*.pt)
                               "model":  state_dict of the FFEBM: trained weights and batchnorm statistics
                                         (a DDP "module." prefix is stripped; "state_dict" also accepted)
                               "config": the run's config mapping (optional: else RUN_DIR/config.json|yaml)

The config mapping is `hybridc.runtime.experiment.ExperimentConfig` (keys `model`, `model_kwargs`, `t1`,
`t2`, `solver_mode`, `algorithm`, ...). The original model is rebuilt with the trainer's own
`hybridc.runtime.train.build_model(cfg, shape, classes)` (which fits zoo models to the data exactly as the
run did, and builds the embedded default MLP when `model` is null). Without that function (or for a config
it rejects), the generic fallback is `hybridc.load.load_model(cfg["model"], shape, **cfg["model_kwargs"])`.
The rebuilt model is then compiled with exactly the run's plan (validated against the model) and the
checkpoint's state is loaded strictly.

Integrity: a checkpoint written by `hybridc train` carries the digest of its content and the SHA-256 of the
run's plan.json; both are checked here (a damaged checkpoint or an edited plan is refused, naming the file),
so an export is always of the weights and the plan the run trained.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hybridc.errors import HybridcError
from hybridc.export.manifest import ExportError, SourceInfo
from hybridc.plan import Plan, PlanFileError, read_plan
from hybridc.runtime.checkpoint import CheckpointError, check_digest, read_torch_file
from hybridc.runtime.ffebm import FFEBM
from hybridc.runtime.files import sha256_file

CONFIG_NAMES = ("config.json", "config.yaml", "config.yml")
PLAN_NAME = "plan.json"
CHECKPOINT_NAMES = ("checkpoint.pt", "checkpoints/last.pt")


@dataclass
class LoadedRun:
    """A run's compiled model with its trained state, and where it came from."""

    ff: FFEBM
    source: SourceInfo
    example_inputs: tuple[torch.Tensor, ...]


def is_run_dir(path: str | Path) -> bool:
    """A directory with a plan.json that is not an export directory (what `hybridc export` takes as RUN_DIR
    rather than MODEL)."""
    p = Path(path)
    return p.is_dir() and (p / PLAN_NAME).is_file() and not (p / "manifest.json").is_file()


def find_checkpoint(run_dir: Path) -> Path:
    for name in CHECKPOINT_NAMES:
        if (run_dir / name).is_file():
            return run_dir / name
    ckpt_dir = run_dir / "checkpoints"
    found = sorted(ckpt_dir.glob("*.pt"), key=lambda p: p.stat().st_mtime) if ckpt_dir.is_dir() else []
    if not found:
        raise ExportError(f"run directory {run_dir} has no checkpoint ({' or '.join(CHECKPOINT_NAMES)}); "
                          "pass --checkpoint")
    return found[-1]


def _read_config(run_dir: Path, ckpt: dict[str, Any]) -> dict[str, Any]:
    cfg = ckpt.get("config")
    if isinstance(cfg, dict):
        return cfg
    for name in CONFIG_NAMES:
        path = run_dir / name
        if path.is_file():
            text = path.read_text()
            try:
                if path.suffix == ".json":
                    data = json.loads(text)
                else:
                    import yaml

                    data = yaml.safe_load(text)
            except Exception as exc:
                raise ExportError(f"{path} is not valid {path.suffix.lstrip('.').upper()}: {exc}") from None
            if not isinstance(data, dict):
                raise ExportError(f"{path} must hold a mapping")
            return data
    raise ExportError(f"run directory {run_dir} has no config ({', '.join(CONFIG_NAMES)}) and its checkpoint "
                      "stores none: cannot tell which model was trained")


def _state_dict(ckpt: Any, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(ckpt, dict):
        for key in ("model", "state_dict", "model_state"):
            sd = ckpt.get(key)
            if isinstance(sd, dict):
                return {k.removeprefix("module."): v for k, v in sd.items()}
    raise ExportError(f"{path} holds no model state_dict (expected a dict with key 'model')")


def _solver(cfg: dict[str, Any]) -> dict[str, Any]:
    if isinstance(cfg.get("solver"), dict):
        return dict(cfg["solver"])
    keys = {"t1": "t1", "t2": "t2", "solver_mode": "mode"}
    return {dst: cfg[src] for src, dst in keys.items() if cfg.get(src) is not None}


def _classes(plan: Plan) -> int | None:
    """Last dim of the plan's (first) output tensor, from the block that produces it."""
    if not plan.graph_outputs:
        return None
    target = plan.graph_outputs[0]
    for b in plan.blocks:
        for ref in b.outputs:
            if ref.node == target and ref.shape:
                return int(ref.shape[-1])
    return None


def rebuild_model(cfg: dict[str, Any], plan: Plan) -> tuple[nn.Module, str | None, dict[str, Any]]:
    """The original (uncompiled) model a run trained: (model, model spec, model kwargs).

    The adapter between a run's config and a model: the trainer's `build_model` when available, else the
    generic `load_model(cfg["model"], shape, **cfg["model_kwargs"])`.
    """
    from hybridc.load import load_model

    if cfg.get("algorithm") == "bp":
        raise ExportError("this run trained the original model by backprop (algorithm=bp): it has no ff-EBM "
                          "to export; export the model itself (hybridc export MODEL)")
    shape = tuple(plan.model.example_shapes[0][1:])
    kwargs = dict(cfg.get("model_kwargs") or {})
    spec = cfg.get("model")
    try:
        from hybridc.runtime.experiment import validate_config
        from hybridc.runtime.train import build_model
    except ImportError:
        build_model = None
    classes = _classes(plan)
    if build_model is not None and classes is not None:
        try:
            ecfg = validate_config(cfg, "run config")
        except HybridcError:
            ecfg = None
        if ecfg is not None:
            model, _ = build_model(ecfg, shape, classes)
            return model, spec, kwargs
    if not isinstance(spec, str) or not spec:
        raise ExportError("the run config names no model (key 'model'); export needs the model spec (zoo name "
                          "or path/model.py[:factory]) the run was trained with")
    return load_model(spec, shape, **kwargs).model, spec, kwargs


def load_run(run_dir: str | Path, checkpoint: str | Path | None = None) -> LoadedRun:
    """Rebuild a run's FFEBM (see the module docstring for the contract) with its trained state."""
    from hybridc.api import compile as hc_compile

    run_dir = Path(run_dir)
    plan_path = run_dir / PLAN_NAME
    if not plan_path.is_file():
        raise ExportError(f"{run_dir} is not a run directory: it has no {PLAN_NAME}")
    try:
        plan = read_plan(plan_path)
    except PlanFileError as exc:
        raise ExportError(str(exc)) from None
    if not plan.model.example_shapes:
        raise ExportError(f"{plan_path} records no example input shapes")
    ckpt_path = Path(checkpoint) if checkpoint is not None else find_checkpoint(run_dir)
    if not ckpt_path.is_file():
        raise ExportError(f"checkpoint {ckpt_path} does not exist")
    try:
        ckpt = read_torch_file(ckpt_path)
        if isinstance(ckpt, dict):
            check_digest(ckpt, ckpt_path)
    except CheckpointError as exc:
        raise ExportError(str(exc)) from None
    recorded = ckpt.get("plan_sha256") if isinstance(ckpt, dict) else None
    if recorded is not None and sha256_file(plan_path) != recorded:
        raise ExportError(f"{plan_path} was changed after the run wrote it (its SHA-256 differs from the one "
                          f"recorded in {ckpt_path}): the checkpoint's weights belong to the original plan; "
                          "restore the file")
    cfg = _read_config(run_dir, ckpt if isinstance(ckpt, dict) else {})
    example = tuple(torch.randn(*s) for s in plan.model.example_shapes)
    try:
        model, spec, kwargs = rebuild_model(cfg, plan)
        ff = hc_compile(model, example, plan=plan, solver=_solver(cfg))
    except ExportError:
        raise
    except HybridcError as exc:
        raise ExportError(f"cannot rebuild the model of run {run_dir}: {exc}") from None
    try:
        ff.load_state_dict(_state_dict(ckpt, ckpt_path), strict=True)
    except RuntimeError as exc:
        raise ExportError(f"checkpoint {ckpt_path} does not fit the rebuilt model: "
                          f"{str(exc).splitlines()[0]} ...") from None
    source = SourceInfo(kind="run", spec=spec, model_kwargs=kwargs, run_dir=str(run_dir),
                        checkpoint=str(ckpt_path), model_class=plan.model.model_class)
    return LoadedRun(ff=ff.eval(), source=source, example_inputs=example)
