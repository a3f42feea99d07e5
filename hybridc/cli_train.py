"""`hybridc train`: compile a model into an ff-EBM and train it (EP/ID/BPTT), or train the original model by
backprop (`--algorithm bp`) as the baseline. Registered on the main typer app by `register(app)`.

With no arguments it trains the embedded default: an MLP (64-256-256-10) whose two hidden layers form one
analog block (kept contractive: feedback gain ≤ 0.9), by EP, on scikit-learn's bundled 8x8 digits (no
download): 20 epochs, ~96 % test accuracy in about 15 s on 2 idle CPU cores.
"""

from __future__ import annotations

import json
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from hybridc.cli_options import (
    ActOpt,
    AttnOpt,
    EBOpt,
    Init,
    LNOpt,
    MaxBlock,
    NonMonoOpt,
    NormOpt,
    PoolOpt,
    SlopeOpt,
    SolverModeOpt,
)
from hybridc.errors import HybridcError


class _Alg(str, Enum):
    ep = "ep"
    id = "id"
    bptt = "bptt"
    bp = "bp"


class _Opt(str, Enum):
    adam = "adam"
    sgd = "sgd"


class _Sched(str, Enum):
    cosine = "cosine"
    none = "none"


class _Dev(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class _Amp(str, Enum):
    none = "none"
    bf16 = "bf16"


class _AnalogOpt(str, Enum):
    sgd = "sgd"
    analog_sgd = "analog-sgd"
    tiki_taka = "tiki-taka"


class _Augment(str, Enum):
    auto = "auto"
    none = "none"
    crop_flip = "crop-flip"


_DATA_HELP = "digits, fashion-mnist, mnist, kmnist, cifar10, cifar100, imagenet32 [digits]"


def _parse_json_object(text: str | None, flag: str, example: str) -> dict[str, Any] | None:
    if text is None:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise HybridcError(f"{flag} must be a JSON object, e.g. '{example}' ({exc})") from None
    if not isinstance(value, dict):
        raise HybridcError(f"{flag} must be a JSON object, e.g. '{example}'")
    return value


def train_command(
    model: Annotated[str | None, typer.Argument(
        help="zoo name (mlp, vgg-paper, resnet18, vit, ...), path/model.py[:factory]; default: a small MLP "
             "fitted to the data")] = None,
    data: Annotated[str | None, typer.Option("--data", help=_DATA_HELP)] = None,
    data_dir: Annotated[Path | None, typer.Option("--data-dir", help="directory with the dataset files")] = None,
    max_block_size: MaxBlock = None,
    algorithm: Annotated[_Alg | None, typer.Option(
        "--algorithm", help="ep, id, bptt through analog blocks; bp = the original model by backprop [ep]")] = None,
    epochs: Annotated[int | None, typer.Option(help="[20]")] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size", help="global batch [64]")] = None,
    lr: Annotated[float | None, typer.Option(help="learning rate [1e-3]")] = None,
    optimizer: Annotated[_Opt | None, typer.Option(help="[adam]")] = None,
    weight_decay: Annotated[float | None, typer.Option("--weight-decay", help="on ≥2-D weights [0]")] = None,
    schedule: Annotated[_Sched | None, typer.Option(help="per-epoch learning-rate schedule [cosine]")] = None,
    beta: Annotated[float | None, typer.Option(help="EP nudging strength, δ normalised [0.05]")] = None,
    t1: Annotated[int | None, typer.Option("--t1", help="free-phase steps [20]")] = None,
    t2: Annotated[int | None, typer.Option("--t2", help="nudged-phase steps [5]")] = None,
    solver_mode: SolverModeOpt = None,
    feedback_gain: Annotated[float | None, typer.Option(
        "--feedback-gain", help="equilibrium by construction: bound every multi-layer Hopfield block's feedback "
                                "gain ρ (its free phase is then a contraction) at compile time and after every "
                                "step; 0 = off [0.8; 0.9 for the embedded default]")] = None,
    init: Annotated[Init | None, typer.Option(help="analog weights: keep (model's init) or goe [keep]")] = None,
    goe_variance: Annotated[float | None, typer.Option("--goe-variance", help="[5e-5]")] = None,
    norm: NormOpt = None,
    layer_norm: LNOpt = None,
    pool: PoolOpt = None,
    attention: AttnOpt = None,
    activation: ActOpt = None,
    hardsigmoid_slope: SlopeOpt = None,
    non_monotone: NonMonoOpt = None,
    eb_kind: EBOpt = None,
    drn_gamma: Annotated[float | None, typer.Option("--drn-gamma", help="drn input voltage gain γ [1]")] = None,
    analog: Annotated[str | None, typer.Option("--analog", help="device effects as JSON (AnalogSpec fields), "
                                               "e.g. '{\"read_noise\": 0.01}'")] = None,
    analog_optimizer: Annotated[_AnalogOpt | None, typer.Option(
        "--analog-optimizer", help="optimizer of the analog weights: sgd (ideal device), analog-sgd, tiki-taka "
                                   "(soft-bounds device, bound --analog-tau) [same as --optimizer]")] = None,
    analog_lr: Annotated[float | None, typer.Option("--analog-lr", help="its learning rate [--lr]")] = None,
    analog_tau: Annotated[float | None, typer.Option("--analog-tau", help="device bound τ [1.0]")] = None,
    transfer_lr: Annotated[float | None, typer.Option("--transfer-lr", help="Tiki-Taka transfer rate "
                                                      "[--analog-lr]")] = None,
    transfer_every: Annotated[int | None, typer.Option("--transfer-every", help="Tiki-Taka transfer "
                                                       "period in steps [1]")] = None,
    plan: Annotated[Path | None, typer.Option(help="compile exactly this plan JSON (from hybridc partition)")] = None,
    model_kwargs: Annotated[str | None, typer.Option("--model-kwargs", help="zoo factory arguments as JSON, "
                                                     "e.g. '{\"width\": 0.25}'")] = None,
    augment: Annotated[_Augment | None, typer.Option(help="auto = crop+flip for 32x32 data [auto]")] = None,
    train_subset: Annotated[int | None, typer.Option("--train-subset", help="first N training samples")] = None,
    test_subset: Annotated[int | None, typer.Option("--test-subset", help="first N test samples")] = None,
    test_batch_size: Annotated[int | None, typer.Option("--test-batch-size")] = None,
    device: Annotated[_Dev | None, typer.Option(help="[auto]")] = None,
    amp: Annotated[_Amp | None, typer.Option(help="bf16 autocast of digital blocks [none]")] = None,
    compile_: Annotated[bool | None, typer.Option("--compile/--no-compile",
                                                  help="torch.compile blocks [no]")] = None,
    seed: Annotated[int | None, typer.Option(help="[0]")] = None,
    log_every: Annotated[int | None, typer.Option("--log-every", help="batches between progress reads [20]")] = None,
    progress: Annotated[bool | None, typer.Option("--progress/--no-progress", help="progress bars [on]")] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="run directory [runs/<time>-<model>-...]")] = None,
    resume: Annotated[Path | None, typer.Option("--resume", help="continue the run in RUN_DIR")] = None,
    config: Annotated[Path | None, typer.Option("--config", "-c", help="experiment file (YAML or JSON)")] = None,
    force: Annotated[bool, typer.Option("--force", help="train into a non-empty --out that is not a run "
                                                       "directory (files of the same names are replaced)")] = False,
) -> None:
    """Train MODEL compiled into an ff-EBM (EP/ID/BPTT through its analog blocks) or, with --algorithm bp, the
    original model by backprop. Writes config, plan, metrics.jsonl, checkpoints, curves and a summary to the
    run directory; Ctrl-C saves a checkpoint, `--resume RUN_DIR` continues it exactly."""
    from hybridc.runtime.experiment import read_experiment_file, resolve_config
    from hybridc.runtime.train import train

    flags: dict[str, Any] = {
        "model": model, "data": data, "data_dir": str(data_dir) if data_dir else None,
        "max_block_size": max_block_size, "algorithm": algorithm, "epochs": epochs, "batch_size": batch_size,
        "lr": lr, "optimizer": optimizer, "weight_decay": weight_decay, "schedule": schedule, "beta": beta,
        "t1": t1, "t2": t2, "solver_mode": solver_mode, "feedback_gain": feedback_gain, "init": init, "goe_variance": goe_variance,
        "norm": norm, "layer_norm": layer_norm, "pool": pool, "attention": attention, "activation": activation,
        "hardsigmoid_slope": hardsigmoid_slope, "non_monotone": non_monotone, "eb_kind": eb_kind,
        "drn_gamma": drn_gamma,
        "analog": _parse_json_object(analog, "--analog", '{"read_noise": 0.01}'),
        "analog_optimizer": analog_optimizer, "analog_lr": analog_lr, "analog_tau": analog_tau,
        "transfer_lr": transfer_lr, "transfer_every": transfer_every,
        "plan": str(plan) if plan else None, "model_kwargs": _parse_json_object(model_kwargs, "--model-kwargs", '{"width": 0.25}'),
        "augment": augment, "train_subset": train_subset, "test_subset": test_subset,
        "test_batch_size": test_batch_size, "device": device, "amp": amp, "compile": compile_, "seed": seed,
        "log_every": log_every, "progress": progress,
    }
    flags = {k: (v.value if isinstance(v, Enum) else v) for k, v in flags.items() if v is not None}
    console = Console(width=None if sys.stdout.isatty() else 160)
    if resume is not None:
        overrides = (read_experiment_file(config) if config else {}) | flags
        result = train(resume=resume, resume_overrides=overrides, out=out, console=console)
    else:
        cfg = resolve_config(config, flags)
        result = train(cfg, out=out, console=console, force=force)
    if result.interrupted:
        raise typer.Exit(130)


def register(app: typer.Typer) -> None:
    """Add the `train` command to the `hybridc` typer app."""
    app.command("train")(train_command)
