"""`hybridc train`: compile a model into an ff-EBM and train it (EP/ID/BPTT), or train the original model by
backprop (`--algorithm bp`) as the baseline. Registered on the main typer app by `register(app)`.

With no arguments it trains the embedded default: an MLP (64-256-256-10) whose two hidden layers form one
analog block (kept contractive: feedback gain ≤ 0.9), by EP, on scikit-learn's bundled 8x8 digits (no
download): 20 epochs, ~96 % test accuracy in about 15 s on 2 idle CPU cores.
"""

from __future__ import annotations

import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from hybridc.cli_options import (
    FLAG,
    ActOpt,
    AttnOpt,
    EBOpt,
    Init,
    LNOpt,
    MaxBlock,
    ModelKwargs,
    NonMonoOpt,
    NormOpt,
    PoolOpt,
    ReadoutOpt,
    SlopeOpt,
    SolverModeOpt,
    parse_json_object,
    shown,
)
from hybridc.plan import AnalogSpec


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


_DATA_HELP = ("digits (bundled with scikit-learn), fashion-mnist, mnist, kmnist, cifar10, cifar100, imagenet32"
              " (found in --data-dir, standard places or downloaded)")


def _d(field: str) -> str:
    """The help suffix " [default: X]" with X the experiment's built-in default of `field` (the flags default
    to None so that an experiment file can set them; --help shows what runs when neither does)."""
    from hybridc.runtime.experiment import ExperimentConfig

    return shown(ExperimentConfig.model_fields[field].default)


def train_command(
    model: Annotated[str | None, typer.Argument(
        help="zoo name (`hybridc zoo` lists them and how each is fitted to the data), path/model.py, "
             "path/model.py:factory" + shown("an MLP 64-256-256-10 fitted to the data"))] = None,
    data: Annotated[str | None, typer.Option("--data", help=_DATA_HELP + _d("data"))] = None,
    data_dir: Annotated[Path | None, typer.Option("--data-dir", help="directory with the dataset files" + shown("standard places"))] = None,
    max_block_size: MaxBlock = None,
    algorithm: Annotated[_Alg | None, typer.Option(
        "--algorithm", help="ep, id, bptt through analog blocks; bp = the original model by backprop" + _d("algorithm"))] = None,
    epochs: Annotated[int | None, typer.Option(help="passes over the training set" + _d("epochs"))] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size", help="global batch (split across torchrun processes)" + _d("batch_size"))] = None,
    lr: Annotated[float | None, typer.Option(help="learning rate" + _d("lr"))] = None,
    optimizer: Annotated[_Opt | None, typer.Option(help="optimizer of all parameters (see --analog-optimizer)" + _d("optimizer"))] = None,
    weight_decay: Annotated[float | None, typer.Option("--weight-decay", help="decoupled weight decay on ≥2-D weights" + _d("weight_decay"))] = None,
    schedule: Annotated[_Sched | None, typer.Option(help="per-epoch learning-rate schedule" + _d("schedule"))] = None,
    beta: Annotated[float | None, typer.Option(help="EP nudging strength, δ normalised" + _d("beta"))] = None,
    t1: Annotated[int | None, typer.Option("--t1", help="free-phase relaxation steps" + _d("t1"))] = None,
    t2: Annotated[int | None, typer.Option("--t2", help="nudged-phase relaxation steps" + _d("t2"))] = None,
    solver_mode: SolverModeOpt = None,
    feedback_gain: Annotated[float | None, typer.Option(
        "--feedback-gain", help="equilibrium by construction: bound every multi-layer Hopfield block's feedback "
                                "gain ρ (its free phase is then a contraction) at compile time and after every "
                                "step; 0 = off" + shown("0.8; 0.9 for the embedded default"))] = None,
    init: Annotated[Init | None, typer.Option(help="analog weights: keep (the model's init) or goe" + _d("init"))] = None,
    goe_variance: Annotated[float | None, typer.Option("--goe-variance", help="GOE init variance (--init goe)" + _d("goe_variance"))] = None,
    norm: NormOpt = None,
    layer_norm: LNOpt = None,
    pool: PoolOpt = None,
    attention: AttnOpt = None,
    activation: ActOpt = None,
    hardsigmoid_slope: SlopeOpt = None,
    non_monotone: NonMonoOpt = None,
    eb_kind: EBOpt = None,
    readout: ReadoutOpt = None,
    drn_gamma: Annotated[float | None, typer.Option("--drn-gamma", help="drn input voltage gain γ" + shown(1.0))] = None,
    analog: Annotated[str | None, typer.Option("--analog", help="device effects as JSON (AnalogSpec fields), "
                                               "e.g. '{\"read_noise\": 0.01}'; keys: " + ", ".join(AnalogSpec.model_fields)
                                               + shown("none (an ideal device)"))] = None,
    analog_optimizer: Annotated[_AnalogOpt | None, typer.Option(
        "--analog-optimizer", help="optimizer of the analog weights: sgd (ideal device), analog-sgd, tiki-taka "
                                   "(soft-bounds device, bound --analog-tau)" + shown("--optimizer"))] = None,
    analog_lr: Annotated[float | None, typer.Option("--analog-lr", help="learning rate of the analog optimizer" + shown("--lr"))] = None,
    analog_tau: Annotated[float | None, typer.Option("--analog-tau", help="soft-bounds device bound τ" + _d("analog_tau"))] = None,
    transfer_lr: Annotated[float | None, typer.Option("--transfer-lr", help="Tiki-Taka transfer rate"
                                                      + shown("--analog-lr"))] = None,
    transfer_every: Annotated[int | None, typer.Option("--transfer-every", help="Tiki-Taka transfer "
                                                       "period in optimizer steps" + _d("transfer_every"))] = None,
    plan: Annotated[Path | None, typer.Option(help="compile exactly this plan JSON (from hybridc partition)")] = None,
    model_kwargs: ModelKwargs = None,
    input_size: Annotated[int | None, typer.Option(
        "--input-size", min=1, max=4096, help="resize the images to N x N (bilinear) before the model; the header "
                                              "and config.json record the size used"
                                              + shown("the data's own size; a zoo model that needs more, the "
                                                      "smallest it accepts (VGG on 8x8 digits: 16)"))] = None,
    augment: Annotated[_Augment | None, typer.Option(help="auto = random crop + flip for 32x32 data, none otherwise" + _d("augment"))] = None,
    train_subset: Annotated[int | None, typer.Option("--train-subset", help="first N training samples" + shown("all"))] = None,
    test_subset: Annotated[int | None, typer.Option("--test-subset", help="first N test samples" + shown("all"))] = None,
    test_batch_size: Annotated[int | None, typer.Option("--test-batch-size", help="batch of the test evaluation" + _d("test_batch_size"))] = None,
    device: Annotated[_Dev | None, typer.Option(help="auto = cuda when torch sees a GPU, else cpu; torchrun: one GPU per process" + _d("device"))] = None,
    amp: Annotated[_Amp | None, typer.Option(help="bf16 autocast of digital blocks" + _d("amp"))] = None,
    compile_: Annotated[bool | None, typer.Option("--compile/--no-compile", **FLAG,
                                                  help="torch.compile digital blocks and the analog step map" + shown("no-compile"))] = None,
    seed: Annotated[int | None, typer.Option(help="random seed (init, data order)" + _d("seed"))] = None,
    log_every: Annotated[int | None, typer.Option("--log-every", help="batches between host reads of running loss/accuracy" + _d("log_every"))] = None,
    progress: Annotated[bool | None, typer.Option("--progress/--no-progress", **FLAG, help="progress bars on a terminal, periodic lines otherwise" + shown("progress"))] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="run directory" + shown("runs/TIME-MODEL-DATA-ALGORITHM"))] = None,
    resume: Annotated[Path | None, typer.Option("--resume", help="continue the run in RUN_DIR")] = None,
    config: Annotated[Path | None, typer.Option("--config", "-c", help="experiment file (YAML or JSON)")] = None,
    force: Annotated[bool, typer.Option("--force", **FLAG, help="train into a non-empty --out that is not a run "
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
        "readout": readout, "drn_gamma": drn_gamma,
        "analog": parse_json_object(analog, "--analog", '{"read_noise": 0.01}'),
        "analog_optimizer": analog_optimizer, "analog_lr": analog_lr, "analog_tau": analog_tau,
        "transfer_lr": transfer_lr, "transfer_every": transfer_every,
        "plan": str(plan) if plan else None, "input_size": input_size,
        "model_kwargs": parse_json_object(model_kwargs, "--model-kwargs", '{"width": 0.25}'),
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
    from hybridc.cli import Command

    app.command("train", cls=Command)(train_command)
