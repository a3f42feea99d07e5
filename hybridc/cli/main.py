"""The `hybridc` entry point: `main` runs a command and turns every user mistake (command line, settings,
files, data, torchrun peers) into one `error:` line with exit status 2; `run_script` does the same for
benchmarks and scripts built on hybridc. A bug keeps its traceback."""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

import typer
from rich.text import Text

from hybridc.cli.app import app, err_console
from hybridc.errors import HybridcError

_OOM_MARKERS = ("can't allocate memory", "out of memory", "DefaultCPUAllocator", "not enough memory")


def validation_message(exc: BaseException) -> str:
    """One line for a pydantic ValidationError: every failing field as `field: reason`, an unknown key as
    "unknown key" (with the model's valid keys when pydantic names the model and it is one of hybridc's)."""
    fields: list[str] = []
    try:
        import hybridc.energy.settings as settings_models
        import hybridc.plan as plan_models

        cls = getattr(plan_models, exc.title, None) or getattr(settings_models, exc.title, None)
        fields = list(getattr(cls, "model_fields", {}))
    except ImportError:  # pragma: no cover - the package is importable when this runs
        pass
    parts = []
    for e in exc.errors():
        where = ".".join(map(str, e["loc"])) or exc.title
        if e["type"] == "extra_forbidden":
            parts.append(f"{where}: unknown key" + (f" (valid keys: {', '.join(fields)})" if fields else ""))
        else:
            parts.append(f"{where}: {e['msg']}")
    return f"invalid {exc.title} settings: " + "; ".join(parts)


_PEER_MARKERS = ("Connection closed by peer", "Connection reset by peer", "remote worker crashing")


def _peer_failed(exc: BaseException) -> bool:
    """Under torchrun: this process's collective (gloo/NCCL) failed because another process exited (the one
    with the real error: it prints its own `error:` line)."""
    return (
        os.environ.get("WORLD_SIZE") not in (None, "1")
        and isinstance(exc, RuntimeError)
        and any(m in str(exc) for m in _PEER_MARKERS)
    )


def user_error(exc: BaseException) -> str | None:
    """The message `main` prints after `error: ` for an exception meant for the user, or None for a bug
    (which keeps its traceback): hybridc's own errors, settings that fail validation (pydantic), the
    operating system refusing a file (permissions, a missing directory, a full disk: the OS's words and the
    path), and running out of memory."""
    from pydantic import ValidationError

    if isinstance(exc, HybridcError):
        return str(exc)
    if isinstance(exc, ValidationError):
        return validation_message(exc)
    if isinstance(exc, OSError) and exc.strerror:
        where = f": {exc.filename}" if exc.filename else ""
        return f"{exc.strerror}{where}"
    if _peer_failed(exc):
        return (
            "another torchrun process ended (its `error:` line is above, and in torchrun's summary under "
            '"Root Cause"); this one stopped waiting for it'
        )
    if isinstance(exc, MemoryError) or (
        isinstance(exc, RuntimeError) and any(m in str(exc) for m in _OOM_MARKERS)
    ):
        return (
            "out of memory: the requested shapes or batch sizes are too large for this machine "
            "(smaller --input-shape, --batch or --batch-size; in gradcheck, --bptt-steps 0 skips the BPTT "
            "reference, whose memory grows with the steps it unrolls)"
        )
    return None


def _click_exceptions():  # noqa: ANN202 - the module
    """typer's click exceptions module: vendored in typer >= 0.2x (typer._click), click's own before."""
    try:
        from typer._click import exceptions
    except ImportError:  # older typer on click
        from click import exceptions
    return exceptions


def usage_message(exc: BaseException) -> str:
    """One line for a command-line usage mistake (unknown option, bad value, missing argument): click's
    message without pydantic's "Value error, " prefix, and where to look (`hybridc CMD --help`)."""
    text = " ".join(exc.format_message().replace("Value error, ", "").split()).rstrip(".")
    ctx = getattr(exc, "ctx", None)
    where = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
    return text[:1].lower() + text[1:] + where


def _terminate(signum: int, _frame: object) -> None:
    """SIGTERM ends the command like Ctrl-C does: through Python's cleanup (locks released, staging
    directories removed), exit status 143."""
    raise SystemExit(128 + signum)


def print_error(message: str) -> None:
    """The one `error: ` line on stderr (red on a terminal). Under torchrun it names the process's rank and
    is also written to torchrun's per-process error file (TORCHELASTIC_ERROR_FILE), so torchrun's failure
    summary shows this line (instead of "To enable traceback see ...") below its own ChildFailedError report."""
    rank, world = os.environ.get("RANK"), os.environ.get("WORLD_SIZE")
    where = f" [torchrun rank {rank} of {world}]" if rank is not None and world not in (None, "1") else ""
    err_console.print(Text.assemble(("error: ", "bold red"), message + where), soft_wrap=True)
    error_file = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if error_file:
        import time

        try:
            Path(error_file).write_text(
                json.dumps({"message": f"error: {message}", "timestamp": str(int(time.time()))})
            )
        except OSError:  # torchrun's summary then says what it always says; the line above stands
            pass


def main(argv: list[str] | None = None) -> None:
    """The `hybridc` entry point: run the command; a user's mistake at any layer (the command line itself,
    settings, files, data) ends in one `error: ` line and exit status 2; a bug keeps its traceback
    (HYBRIDC_TRACEBACK=1 shows one for user errors too)."""
    if threading_main():
        signal.signal(signal.SIGTERM, _terminate)
    click_ex = _click_exceptions()
    try:
        rc = app(args=argv, standalone_mode=False, prog_name="hybridc")
    except click_ex.UsageError as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":  # `hybridc` / `hybridc CMD` alone: the help
            exc.show()
            sys.exit(exc.exit_code)
        if os.environ.get("HYBRIDC_TRACEBACK"):
            raise
        print_error(usage_message(exc))
        sys.exit(2)
    except typer.Abort:
        sys.exit(130)
    except click_ex.ClickException as exc:
        print_error(exc.format_message())
        sys.exit(2)
    except Exception as exc:  # noqa: BLE001 - what is not a user error is re-raised (a bug: its traceback)
        _exit_if_user_error(exc)
        raise
    sys.exit(rc if isinstance(rc, int) else 0)


def _exit_if_user_error(exc: BaseException) -> None:
    """For a user's mistake (`user_error`): its one `error: ` line and exit status 2. Returns for a bug (and
    with HYBRIDC_TRACEBACK=1), so that the caller re-raises it with its traceback."""
    message = user_error(exc)
    if message is None or os.environ.get("HYBRIDC_TRACEBACK"):
        return
    print_error(message)
    sys.exit(2)


def run_script(fn: Callable[[], object]) -> NoReturn:
    """`sys.exit(fn())` for a benchmark or script built on hybridc (`if __name__ == "__main__":
    run_script(main)`): a user's mistake inside it (a dataset that is not there, a bad setting, a file the OS
    refuses) ends in the same one `error: ` line and exit status 2 as `hybridc` itself, not a traceback; a bug
    keeps its traceback."""
    try:
        rc = fn()
    except Exception as exc:  # noqa: BLE001 - re-raised unless it is a user error
        _exit_if_user_error(exc)
        raise
    sys.exit(rc)


def threading_main() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()
