"""The `hybridc` typer app every command registers on (`@app.command(cls=Command)` in its own module of
this package), the consoles, and `emit` for a command's text output."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from typer.core import TyperCommand, TyperGroup

from hybridc.cli.flags import FLAG


class _HelpFlag:
    """The --help/-h flag shown without a "<bool>" placeholder, like every other flag of hybridc (which
    declares `metavar=""`)."""

    def get_help_option(self, ctx):  # noqa: ANN001, ANN201 - typer's signature
        option = super().get_help_option(ctx)
        if option is not None:
            option.metavar = ""
        return option


class Command(_HelpFlag, TyperCommand):
    """typer's command with hybridc's --help/-h display. Passed as `cls=` to every `app.command`."""


#: The order `hybridc --help` lists the commands in: the path of a model through hybridc.
COMMAND_ORDER = ("partition", "gradcheck", "train", "report", "export", "verify", "zoo", "eval")


class Group(_HelpFlag, TyperGroup):
    """The `hybridc` group, with the same --help/-h display as `Command`; lists commands in COMMAND_ORDER."""

    def list_commands(self, ctx):  # noqa: ANN001, ANN201 - click's signature
        rank = {name: i for i, name in enumerate(COMMAND_ORDER)}
        return sorted(super().list_commands(ctx), key=lambda name: rank.get(name, len(rank)))


app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    cls=Group,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
    help="hybridc: compile PyTorch models into hybrid analog/digital ff-EBMs.",
)
console = Console(width=None if sys.stdout.isatty() else 160)
err_console = Console(stderr=True)


def _print_version(value: bool) -> None:
    if value:
        from hybridc import __version__

        sys.stdout.write(f"hybridc {__version__}\n")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            "-V",
            callback=_print_version,
            is_eager=True,
            help="print the version and exit",
            **FLAG,
        ),
    ] = False,
) -> None:
    """hybridc: compile PyTorch models into hybrid analog/digital ff-EBMs."""


def emit(text: str, out: Path | None) -> None:
    """`text` on stdout, or written atomically to `out` (with a "wrote" line on stderr)."""
    if out is None:
        sys.stdout.write(text)
        return
    from hybridc.files import atomic_write_text

    atomic_write_text(out, text)
    err_console.print(f"wrote {out}")
