"""`hybridc report`: the hardware cost model (crossbar tiles, analog MACs, digital FLOPs, DAC/ADC conversions,
energy) of MODEL partitioned with the same policy flags as `hybridc partition`. Registered on the main typer
app by `register(app)`; the counting rules and the constants' sources live in `hybridc.report` and
`hybridc.energy_constants`.
"""


import sys
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer


class _RFmt(str, Enum):
    table = "table"
    json = "json"


class _Precision(str, Enum):
    fp32 = "fp32"
    fp16 = "fp16"
    int32 = "int32"
    int8 = "int8"


def register(app: typer.Typer) -> None:
    """Add the `report` command to the `hybridc` typer app (reusing `partition`'s option declarations)."""
    # imported here, not at module level: hybridc.cli imports this module at its end (and no
    # `from __future__ import annotations` in this file: typer must see these annotations as objects)
    from hybridc.cli import Command, _emit, console
    from hybridc.cli_options import (
        FLAG,
        ActOpt,
        AttnOpt,
        EBOpt,
        InputShape,
        LNOpt,
        MaxBlock,
        ModelArg,
        ModelKwargs,
        NonMonoOpt,
        NormOpt,
        PoolOpt,
        ReadoutOpt,
        SlopeOpt,
        check_output_file,
        load_zoo_or_file,
        policies,
        shown,
    )

    @app.command("report", cls=Command)
    def report_command(
        model: ModelArg,
        max_block_size: MaxBlock = None,
        tile: Annotated[str, typer.Option("--tile", help="crossbar array size ROWSxCOLS")] = "256x256",
        t1: Annotated[int | None, typer.Option("--t1", help="free-phase relaxation steps" + shown(20),
                                               min=1)] = None,
        t2: Annotated[int | None, typer.Option("--t2", help="nudged-phase relaxation steps" + shown(5),
                                               min=1)] = None,
        constants: Annotated[Path | None, typer.Option(
            "--constants", help="JSON/YAML file overriding energy constants (unknown keys are errors)")] = None,
        digital_precision: Annotated[_Precision | None, typer.Option(
            "--digital-precision", help="digital op energies from Horowitz 45 nm" + shown("fp32"))] = None,
        memory: Annotated[bool, typer.Option("--memory/--no-memory", **FLAG,
                                             help="add SRAM access energy (one word per moved value)")] = False,
        input_shape: InputShape = None,
        model_kwargs: ModelKwargs = None,
        norm: NormOpt = None,
        layer_norm: LNOpt = None,
        pool: PoolOpt = None,
        attention: AttnOpt = None,
        activation: ActOpt = None,
        hardsigmoid_slope: SlopeOpt = None,
        non_monotone: NonMonoOpt = None,
        eb_kind: EBOpt = None,
        readout: ReadoutOpt = None,
        fmt: Annotated[_RFmt, typer.Option("--format", "-f", help="table or json")] = _RFmt.table,
        output: Annotated[Path | None, typer.Option("--output", "-o", help="write to FILE instead of stdout")] = None,
        constants_table: Annotated[bool, typer.Option("--show-constants/--hide-constants", **FLAG,
                                                      help="print the constants and their sources")] = True,
        quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress lines on stderr", **FLAG)] = False,
    ) -> None:
        """Hardware cost per block: crossbar tiles, analog MACs and digital FLOPs per inference and per EP
        training step, DAC/ADC conversions, and an energy estimate from cited per-operation constants.
        Progress on stderr (unless --quiet): a line as each phase (load, partition, compile, count) starts and
        ends."""
        from rich.console import Console

        from hybridc.api import make_config
        from hybridc.energy_constants import load_constants
        from hybridc.progress import StepProgress
        from hybridc.report import breakdown_table, cost_report, parse_tile, report_table
        from hybridc.report import constants_table as consts_table

        pol = policies(norm=norm, layer_norm=layer_norm, pool=pool, attention=attention, activation=activation,
                       hardsigmoid_slope=hardsigmoid_slope, non_monotone=non_monotone, eb_kind=eb_kind,
                       readout=readout)
        make_config(max_block_size, **pol)  # validate flags before loading anything
        check_output_file(output, "--output")
        tile_rc = parse_tile(tile)
        consts = load_constants(constants, digital_precision.value if digital_precision else None)
        # loading is quick and is where a mistyped model or --model-kwargs fails: it runs before any progress
        # line, so such a mistake stays one `error:` line
        lm = load_zoo_or_file(model, input_shape, model_kwargs)
        progress = None if quiet else StepProgress("report", 3)  # partition, compile, count
        try:
            rep = cost_report(lm.model, lm.example_inputs, max_block_size=max_block_size, tile=tile_rc, t1=t1,
                              t2=t2, constants=consts, include_memory=memory, model_name=model, progress=progress,
                              **pol)
        finally:
            if progress is not None:
                progress.close()
        if fmt == _RFmt.json:
            _emit(rep.model_dump_json(indent=2) + "\n", output)
            return
        con = console if output is None else Console(file=open(output, "w"), width=160)  # noqa: SIM115
        con.print(report_table(rep))
        con.print(breakdown_table(rep))
        if constants_table:
            con.print(consts_table(rep))
        if output is not None:
            con.file.close()
            sys.stderr.write(f"wrote {output}\n")
