"""`hybridc gradcheck`: the static gradient analysis of a compiled model, EP against implicit
differentiation and BPTT (and autograd of the original when every analog block is one layer), per tensor."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any, Literal

import typer

from hybridc.cli.app import Command, app, console, err_console
from hybridc.cli.flags import FLAG, settings_flags, shown
from hybridc.cli.inputs import InputShape, ModelArg, ModelKwargs, check_output_file, load_zoo_or_file
from hybridc.errors import HybridcError
from hybridc.plan import PartitionConfig
from hybridc.train.experiment import ExperimentConfig


@app.command(cls=Command)
@settings_flags("policies", PartitionConfig)
@settings_flags(
    "choices",
    ExperimentConfig,
    ["init"],
    helps={"init": "analog weights: keep (the model's own) or goe (the paper's init)"},
)
def gradcheck(
    model: ModelArg,
    beta: Annotated[
        float | None, typer.Option(help="nudging strength" + shown("1e-6 for float64, 1e-2 for float32"))
    ] = None,
    dtype: Annotated[
        Literal["float64", "float32"], typer.Option(help="float64 for tight checks")
    ] = "float64",
    input_shape: InputShape = None,
    model_kwargs: ModelKwargs = None,
    batch: Annotated[int, typer.Option(help="random batch size", min=1)] = 2,
    bptt_steps: Annotated[
        int | None,
        typer.Option(
            help="steps unrolled for the BPTT reference; 0 skips it (its memory grows with the steps)"
            + shown("1.5x the longest free phase, at least 20"),
            min=0,
        ),
    ] = None,
    seed: Annotated[int, typer.Option(help="seed of the random batch and targets")] = 0,
    device: Annotated[str, typer.Option(help="cpu, cuda or cuda:N")] = "cpu",
    output: Annotated[
        str | None,
        typer.Option(
            "--output",
            help="the output tensor the loss is taken on, by its path in the model's output "
            "(logits, 0, hidden_states.2)" + shown("the first tensor"),
        ),
    ] = None,
    fmt: Annotated[Literal["table", "json"], typer.Option("--format", "-f", help="table or json")] = "table",
    plot: Annotated[
        Path | None,
        typer.Option(help="save a per-tensor figure (PNG): relative errors and 1 − cosine, log axes"),
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress lines on stderr", **FLAG)] = False,
    policies: dict[str, Any] | None = None,
    choices: dict[str, Any] | None = None,
) -> None:
    """Static gradient analysis: EP vs implicit differentiation vs BPTT (and vs autograd of the original
    model when every analog block is a single layer), per parameter tensor. Tensors whose true gradient is
    structurally zero are marked and left out of the summary."""
    import torch

    from hybridc.api import make_config
    from hybridc.gradcheck import gradcheck as do_gradcheck
    from hybridc.gradcheck_progress import PHASES, PhaseProgress
    from hybridc.gradcheck_report import plot_report
    from hybridc.render import gradcheck_table

    policies = policies or {}
    make_config(**policies)
    if device.split(":")[0] not in ("cpu", "cuda"):
        raise HybridcError(f"--device must be cpu or cuda (optionally cuda:N), not {device!r}")
    check_output_file(plot, "--plot")  # before the analysis, which can take minutes
    lm = load_zoo_or_file(model, input_shape, model_kwargs)
    progress = None if quiet else PhaseProgress(list(PHASES))
    try:
        report = do_gradcheck(
            lm.model,
            lm.example_inputs,
            beta=beta,
            dtype=getattr(torch, dtype),
            batch=batch,
            seed=seed,
            bptt_steps=bptt_steps,
            init=(choices or {}).get("init", ExperimentConfig.model_fields["init"].default),
            device=device,
            output=output,
            progress=progress,
            **policies,
        )
    finally:
        if progress is not None:
            progress.close()
    if fmt == "json":
        sys.stdout.write(json.dumps(report.public_json(), indent=2) + "\n")
    else:
        console.print(gradcheck_table(report))
        fd = report.forward_max_abs_diff
        console.print(
            f"forward max |compiled − original|: {'n/a (multi-layer blocks)' if fd is None else f'{fd:.3e}'}"
        )
        checked = report.checked()
        if checked:
            zero = sum(p.structural_zero for p in report.params if p.analog)
            bptt = [p.cos_id_bptt for p in checked if p.cos_id_bptt is not None]  # empty: BPTT was skipped
            console.print(
                f"analog tensors: min cos EP·ID {min(p.cos_ep_id for p in checked):.6f}, "
                f"max relerr EP·ID {max(p.relerr_ep_id for p in checked):.2e}"
                + (f", min cos ID·BPTT {min(bptt):.6f}" if bptt else ", BPTT skipped")
                + (f" ({zero} structurally zero left out)" if zero else "")
            )
    bad = report.unconverged()
    if bad:
        err_console.print(
            f"[yellow]warning:[/] free phase not converged to tolerance in {', '.join(bad)}: "
            "their gradients are not comparable"
        )
    if plot is not None:
        plot_report(report, str(plot))
        err_console.print(f"wrote {plot}")
