"""`hybridc partition`: the plan of a model (which layers are analog, which digital) as a table, JSON, a
Graphviz graph or a picture."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import typer
from rich.console import Console

from hybridc.cli.app import Command, app, console, emit, err_console
from hybridc.cli.flags import settings_flags
from hybridc.cli.inputs import InputShape, ModelArg, ModelKwargs, check_output_file, load_zoo_or_file
from hybridc.errors import HybridcError
from hybridc.plan import PartitionConfig


@app.command(cls=Command)
@settings_flags("policies", PartitionConfig)
def partition(
    model: ModelArg,
    input_shape: InputShape = None,
    model_kwargs: ModelKwargs = None,
    fmt: Annotated[
        Literal["table", "json", "dot", "png", "svg"],
        typer.Option(
            "--format",
            "-f",
            help="table, json (the plan), dot (block graph for Graphviz), png or svg (block graph "
            "drawn with matplotlib; needs -o)",
        ),
    ] = "table",
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="write to FILE instead of stdout")
    ] = None,
    policies: dict[str, Any] | None = None,
) -> None:
    """Partition MODEL into analog (energy-based) and digital blocks and print or save the plan."""
    from hybridc.api import make_config
    from hybridc.api import partition as do_partition

    policies = policies or {}
    make_config(**policies)  # validate flags before loading anything
    if fmt in ("png", "svg") and output is None:
        raise HybridcError(f"--format {fmt} writes a picture: give the file with -o, e.g. -o blocks.{fmt}")
    check_output_file(output, "--output")
    lm = load_zoo_or_file(model, input_shape, model_kwargs)
    plan = do_partition(lm.model, lm.example_inputs, **policies)
    if fmt == "json":
        emit(plan.to_json() + "\n", output)
    elif fmt == "dot":
        from hybridc.render import plan_dot

        emit(plan_dot(plan), output)
    elif fmt in ("png", "svg"):
        from hybridc.render_graph import draw_plan

        draw_plan(plan, output, fmt)
        err_console.print(f"wrote {output}")
    else:
        from hybridc.render import decisions_table, plan_table

        con = console if output is None else Console(file=open(output, "w"), width=160)  # noqa: SIM115
        con.print(plan_table(plan))
        if plan.decisions:
            con.print(decisions_table(plan))
        if output is not None:
            con.file.close()
            err_console.print(f"wrote {output}")
