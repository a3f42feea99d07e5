"""`hybridc report`: the hardware cost model (crossbar tiles, analog MACs, digital FLOPs, DAC/ADC conversions,
energy) of MODEL partitioned with the same policy flags as `hybridc partition`; the counting
rules and the constants' sources live in `hybridc.cost.report` and `hybridc.cost.constants`.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any, Literal

import typer

from hybridc.cli.app import Command, app, console, emit
from hybridc.cli.flags import FLAG, settings_flags, shown
from hybridc.cli.inputs import InputShape, ModelArg, ModelKwargs, check_output_file, load_zoo_or_file
from hybridc.plan import PartitionConfig
from hybridc.train.experiment import ExperimentConfig


@app.command("report", cls=Command)
@settings_flags("policies", PartitionConfig)
@settings_flags("choices", ExperimentConfig, ["t1", "t2"])
def report_command(
    model: ModelArg,
    tile: Annotated[str, typer.Option("--tile", help="crossbar array size ROWSxCOLS")] = "256x256",
    constants: Annotated[
        Path | None,
        typer.Option(
            "--constants", help="JSON/YAML file overriding energy constants (unknown keys are errors)"
        ),
    ] = None,
    digital_precision: Annotated[
        Literal["fp32", "fp16", "int32", "int8"] | None,
        typer.Option("--digital-precision", help="digital op energies from Horowitz 45 nm" + shown("fp32")),
    ] = None,
    memory: Annotated[
        bool,
        typer.Option(
            "--memory/--no-memory", **FLAG, help="add SRAM access energy (one word per moved value)"
        ),
    ] = False,
    input_shape: InputShape = None,
    model_kwargs: ModelKwargs = None,
    fmt: Annotated[Literal["table", "json"], typer.Option("--format", "-f", help="table or json")] = "table",
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="write to FILE instead of stdout")
    ] = None,
    constants_table: Annotated[
        bool,
        typer.Option(
            "--show-constants/--hide-constants", **FLAG, help="print the constants and their sources"
        ),
    ] = True,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress lines on stderr", **FLAG)] = False,
    policies: dict[str, Any] | None = None,
    choices: dict[str, Any] | None = None,
) -> None:
    """Hardware cost per block: crossbar tiles, analog MACs and digital FLOPs per inference and per EP
    training step, DAC/ADC conversions, and an energy estimate from cited per-operation constants.
    Progress on stderr (unless --quiet): a line as each phase (load, partition, compile, count) starts and
    ends."""
    from rich.console import Console

    from hybridc.api import make_config
    from hybridc.cost.constants import load_constants
    from hybridc.cost.report import breakdown_table, cost_report, parse_tile, report_table
    from hybridc.cost.report import constants_table as consts_table
    from hybridc.progress import StepProgress

    policies, choices = policies or {}, choices or {}
    make_config(**policies)  # validate flags before loading anything
    check_output_file(output, "--output")
    tile_rc = parse_tile(tile)
    consts = load_constants(constants, digital_precision)
    # loading is quick and is where a mistyped model or --model-kwargs fails: it runs before any progress
    # line, so such a mistake stays one `error:` line
    lm = load_zoo_or_file(model, input_shape, model_kwargs)
    progress = None if quiet else StepProgress("report", 3)  # partition, compile, count
    try:
        rep = cost_report(
            lm.model,
            lm.example_inputs,
            tile=tile_rc,
            t1=choices.get("t1"),
            t2=choices.get("t2"),
            constants=consts,
            include_memory=memory,
            model_name=model,
            progress=progress,
            **policies,
        )
    finally:
        if progress is not None:
            progress.close()
    if fmt == "json":
        emit(rep.model_dump_json(indent=2) + "\n", output)
        return
    con = console if output is None else Console(file=open(output, "w"), width=160)  # noqa: SIM115
    con.print(report_table(rep))
    con.print(breakdown_table(rep))
    if constants_table:
        con.print(consts_table(rep))
    if output is not None:
        con.file.close()
        sys.stderr.write(f"wrote {output}\n")
