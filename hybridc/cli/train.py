"""`hybridc train`: compile a model into an ff-EBM and train it (EP/ID/BPTT), or train the original model by
backprop (`--algorithm bp`) as the baseline. Its settings flags are generated from `ExperimentConfig`, one
per field (`hybridc.cli.flags`).

With no arguments it trains the embedded default: an MLP (64-256-256-10) whose two hidden layers form one
analog block (kept contractive: feedback gain ≤ 0.9), by EP, on scikit-learn's bundled 8x8 digits (no
download): 20 epochs, ~96 % test accuracy in about 15 s on 2 idle CPU cores.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from hybridc.cli.app import Command, app
from hybridc.cli.flags import FLAG, settings_flags, shown
from hybridc.train.experiment import ExperimentConfig


@app.command("train", cls=Command)
@settings_flags("settings", ExperimentConfig, exclude=["model"])
def train_command(
    model: Annotated[
        str | None,
        typer.Argument(
            help="zoo name (`hybridc zoo` lists them and how each is fitted to the data), path/model.py, "
            "path/model.py:factory" + shown("an MLP 64-256-256-10 fitted to the data")
        ),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="run directory" + shown("runs/TIME-MODEL-DATA-ALGORITHM")),
    ] = None,
    resume: Annotated[Path | None, typer.Option("--resume", help="continue the run in RUN_DIR")] = None,
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="experiment file (YAML or JSON)")
    ] = None,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            **FLAG,
            help="train into a non-empty --out that is not a run "
            "directory (files of the same names are replaced)",
        ),
    ] = False,
    settings: dict[str, Any] | None = None,
) -> None:
    """Train MODEL compiled into an ff-EBM (EP/ID/BPTT through its analog blocks) or, with --algorithm bp, the
    original model by backprop. Writes config, plan, metrics.jsonl, checkpoints, curves and a summary to the
    run directory; Ctrl-C saves a checkpoint, `--resume RUN_DIR` continues it exactly."""
    from hybridc.train.experiment import read_experiment_file, resolve_config
    from hybridc.train.loop import train

    flags = {"model": model, **(settings or {})}
    console = Console(width=None if sys.stdout.isatty() else 160)
    if resume is not None:
        overrides = (read_experiment_file(config) if config else {}) | flags
        result = train(resume=resume, resume_overrides=overrides, out=out, console=console)
    else:
        cfg = resolve_config(config, flags)
        result = train(cfg, out=out, console=console, force=force)
    if result.interrupted:
        raise typer.Exit(130)
