"""`hybridc zoo`: the bundled models, their input shapes, their factory arguments (`--model-kwargs`) and
which datasets each trains on.

The facts (and how each model is fitted to each dataset) come from the zoo's one table,
`hybridc.models.zoo_facts`; the factory arguments from the model class's constructor.
"""

from __future__ import annotations

import inspect
import json
import sys
from typing import Annotated, Any, Literal

import typer

from hybridc.cli.app import Command, app


def _factory_arguments(model: Any) -> dict[str, Any]:
    """Keyword arguments of the model class's constructor (what --model-kwargs sets) with the values the
    factory built it with: the model's attribute of that name where it keeps one (vgg-paper-12's factory
    passes layers=12 over the class default 6), else the constructor's default."""
    out = {}
    for name, p in inspect.signature(type(model).__init__).parameters.items():
        if name == "self" or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        default = p.default if p.default is not inspect.Parameter.empty else None
        kept = getattr(model, name, None)
        if isinstance(kept, (int, float, str, bool)):
            default = kept
        out[name] = list(default) if isinstance(default, tuple) else default
    return out


def zoo_rows() -> list[dict[str, Any]]:
    """The zoo facts (`hybridc.models.zoo_facts`: name, file, summary, native input shape, per dataset how
    it is fitted or why it does not fit) with each model's factory arguments and their defaults."""
    import torch

    from hybridc.models import build_zoo_model, zoo_facts

    rows = []
    for row in zoo_facts():
        with torch.device("meta"):  # shapes only: no memory, no init arithmetic
            model = build_zoo_model(row["name"])
        rows.append({**row, "input_shape": list(row["input_shape"]), "kwargs": _factory_arguments(model)})
    return rows


@app.command("zoo", cls=Command)
def zoo_command(
    fmt: Annotated[Literal["table", "json"], typer.Option("--format", "-f", help="table or json")] = "table",
) -> None:
    """List the zoo models: input shape, the arguments --model-kwargs can set, and which datasets each one
    trains on (`hybridc train NAME --data DATASET`; the rest with the reason)."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    rows = zoo_rows()
    if fmt == "json":
        sys.stdout.write(json.dumps(rows, indent=2) + "\n")
        return
    console = Console(width=None if sys.stdout.isatty() else 160)
    t = Table(title="hybridc zoo: MODEL by name (or by file: hybridc/models/FILE)", title_justify="left")
    for col in ("name", "input shape", "model", "--model-kwargs (defaults)"):
        t.add_column(col, overflow="fold")
    for r in rows:
        kwargs = ", ".join(f"{k}={json.dumps(v)}" for k, v in r["kwargs"].items())
        about = r["summary"] + (f"; {r['note']}" if r.get("note") else "") + f" ({r['file']})"
        t.add_row(r["name"], "×".join(map(str, r["input_shape"])), escape(about), escape(kwargs))
    console.print(t)
    datasets = list(rows[0]["fits"]) if rows else []
    f = Table(
        title="how `hybridc train MODEL --data DATASET` fits each model to each dataset", title_justify="left"
    )
    f.add_column("name")
    for d in datasets:
        f.add_column(d, overflow="fold")
    for r in rows:
        f.add_row(
            r["name"],
            *(
                f"[red]{escape(how)}[/]" if how.startswith("does not") else escape(how)
                for how in r["fits"].values()
            ),
        )
    console.print(f)
