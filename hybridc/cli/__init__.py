"""The `hybridc` command line: one module per command (partition, gradcheck, train, report, export/verify,
zoo, eval), each registering on the typer app of `hybridc.cli.app`; their settings flags are generated
from the settings models (`hybridc.cli.flags`); `hybridc.cli.main` is the entry point and its error
handling."""

from hybridc.cli import eval as _eval  # noqa: F401 - each import registers its command
from hybridc.cli import export as _export  # noqa: F401
from hybridc.cli import gradcheck as _gradcheck  # noqa: F401
from hybridc.cli import partition as _partition  # noqa: F401
from hybridc.cli import report as _report  # noqa: F401
from hybridc.cli import train as _train  # noqa: F401
from hybridc.cli import zoo as _zoo  # noqa: F401
from hybridc.cli.app import app
from hybridc.cli.main import main, print_error, run_script, user_error, validation_message

__all__ = ["app", "main", "print_error", "run_script", "user_error", "validation_message"]
