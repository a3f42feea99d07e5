"""The `hybridc` command line: partition and gradcheck here; train, report, export/verify, zoo and eval
registered from hybridc/cli_*.py. `main` turns every user mistake (command line, settings, files, data,
torchrun peers) into one `error:` line with exit status 2; `run_script` does the same for benchmarks."""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console
from rich.text import Text
from typer.core import TyperCommand, TyperGroup

from hybridc.cli_options import (
    FLAG,
    ActOpt,
    AttnOpt,
    EBOpt,
    Init,
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
from hybridc.errors import HybridcError


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


class Group(_HelpFlag, TyperGroup):
    """The `hybridc` group, with the same --help/-h display as `Command`; lists commands in declaration order."""


app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False, cls=Group,
                  rich_markup_mode="rich", context_settings={"help_option_names": ["-h", "--help"]},
                  help="hybridc: compile PyTorch models into hybrid analog/digital ff-EBMs.")
console = Console(width=None if sys.stdout.isatty() else 160)
err_console = Console(stderr=True)


def _print_version(value: bool) -> None:
    if value:
        from hybridc import __version__

        sys.stdout.write(f"hybridc {__version__}\n")
        raise typer.Exit(0)


@app.callback()
def _root(version: Annotated[bool, typer.Option("--version", "-V", callback=_print_version, is_eager=True,
                                                help="print the version and exit", **FLAG)] = False) -> None:
    """hybridc: compile PyTorch models into hybrid analog/digital ff-EBMs."""


class Fmt(str, Enum):
    table = "table"
    json = "json"
    dot = "dot"
    png = "png"
    svg = "svg"


class GFmt(str, Enum):
    table = "table"
    json = "json"


class DType(str, Enum):
    float64 = "float64"
    float32 = "float32"




def _emit(text: str, out: Path | None) -> None:
    if out is None:
        sys.stdout.write(text)
        return
    from hybridc.runtime.files import atomic_write_text

    atomic_write_text(out, text)
    err_console.print(f"wrote {out}")


@app.command(cls=Command)
def partition(
    model: ModelArg,
    max_block_size: MaxBlock = None,
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
    fmt: Annotated[Fmt, typer.Option("--format", "-f", help="table, json (the plan), dot (block graph for "
                                     "Graphviz), png or svg (block graph drawn with matplotlib; needs -o)")
                   ] = Fmt.table,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="write to FILE instead of stdout")] = None,
) -> None:
    """Partition MODEL into analog (energy-based) and digital blocks and print or save the plan."""
    from hybridc.api import make_config
    from hybridc.api import partition as do_partition

    pol = policies(norm=norm, layer_norm=layer_norm, pool=pool, attention=attention, activation=activation,
                   hardsigmoid_slope=hardsigmoid_slope, non_monotone=non_monotone, eb_kind=eb_kind,
                   readout=readout)
    make_config(max_block_size, **pol)  # validate flags before loading anything
    if fmt in (Fmt.png, Fmt.svg) and output is None:
        raise HybridcError(f"--format {fmt.value} writes a picture: give the file with -o, e.g. -o blocks.{fmt.value}")
    check_output_file(output, "--output")
    lm = load_zoo_or_file(model, input_shape, model_kwargs)
    plan = do_partition(lm.model, lm.example_inputs, max_block_size=max_block_size, **pol)
    if fmt == Fmt.json:
        _emit(plan.to_json() + "\n", output)
    elif fmt == Fmt.dot:
        from hybridc.render import plan_dot

        _emit(plan_dot(plan), output)
    elif fmt in (Fmt.png, Fmt.svg):
        from hybridc.render_graph import draw_plan

        draw_plan(plan, output, fmt.value)
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


@app.command(cls=Command)
def gradcheck(
    model: ModelArg,
    max_block_size: MaxBlock = None,
    beta: Annotated[float | None, typer.Option(help="nudging strength" + shown("1e-6 for float64, 1e-2 for float32"))
                    ] = None,
    dtype: Annotated[DType, typer.Option(help="float64 for tight checks")] = DType.float64,
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
    init: Annotated[Init, typer.Option(help="analog weights: keep (the model's own) or goe (the paper's init)")
                    ] = Init.keep,
    batch: Annotated[int, typer.Option(help="random batch size", min=1)] = 2,
    bptt_steps: Annotated[int | None, typer.Option(
        help="steps unrolled for the BPTT reference" + shown("1.5x the longest free phase, at least 20"), min=1)] = None,
    seed: Annotated[int, typer.Option(help="seed of the random batch and targets")] = 0,
    device: Annotated[str, typer.Option(help="cpu, cuda or cuda:N")] = "cpu",
    output: Annotated[str | None, typer.Option(
        "--output", help="the output tensor the loss is taken on, by its path in the model's output "
                         "(logits, 0, hidden_states.2)" + shown("the first tensor"))] = None,
    fmt: Annotated[GFmt, typer.Option("--format", "-f", help="table or json")] = GFmt.table,
    plot: Annotated[Path | None, typer.Option(help="save a per-tensor figure (PNG): relative errors and 1 − cosine, "
                                                   "log axes")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress lines on stderr", **FLAG)] = False,
) -> None:
    """Static gradient analysis: EP vs implicit differentiation vs BPTT (and vs autograd of the original
    model when every analog block is a single layer), per parameter tensor. Tensors whose true gradient is
    structurally zero are marked and left out of the summary."""
    import torch

    from hybridc.api import make_config
    from hybridc.gradcheck import gradcheck as do_gradcheck
    from hybridc.gradcheck import plot_report
    from hybridc.gradcheck_progress import PHASES, PhaseProgress
    from hybridc.render import gradcheck_table

    pol = policies(norm=norm, layer_norm=layer_norm, pool=pool, attention=attention, activation=activation,
                   hardsigmoid_slope=hardsigmoid_slope, non_monotone=non_monotone, eb_kind=eb_kind,
                   readout=readout)
    make_config(max_block_size, **pol)
    if device.split(":")[0] not in ("cpu", "cuda"):
        raise HybridcError(f"--device must be cpu or cuda (optionally cuda:N), not {device!r}")
    check_output_file(plot, "--plot")  # before the analysis, which can take minutes
    lm = load_zoo_or_file(model, input_shape, model_kwargs)
    progress = None if quiet else PhaseProgress(list(PHASES))
    try:
        report = do_gradcheck(lm.model, lm.example_inputs, max_block_size=max_block_size or 2, beta=beta,
                              dtype=getattr(torch, dtype.value), batch=batch, seed=seed, bptt_steps=bptt_steps,
                              init=init.value, device=device, output=output, progress=progress, **pol)
    finally:
        if progress is not None:
            progress.close()
    if fmt == GFmt.json:
        sys.stdout.write(json.dumps(report.public_json(), indent=2) + "\n")
    else:
        console.print(gradcheck_table(report))
        fd = report.forward_max_abs_diff
        console.print(f"forward max |compiled − original|: {'n/a (multi-layer blocks)' if fd is None else f'{fd:.3e}'}")
        checked = report.checked()
        if checked:
            zero = sum(p.structural_zero for p in report.params if p.analog)
            console.print(f"analog tensors: min cos EP·ID {min(p.cos_ep_id for p in checked):.6f}, "
                          f"max relerr EP·ID {max(p.relerr_ep_id for p in checked):.2e}, "
                          f"min cos ID·BPTT {min(p.cos_id_bptt for p in checked):.6f}"
                          + (f" ({zero} structurally zero left out)" if zero else ""))
    bad = report.unconverged()
    if bad:
        err_console.print(f"[yellow]warning:[/] free phase not converged to tolerance in {', '.join(bad)}: "
                          "their gradients are not comparable")
    if plot is not None:
        plot_report(report, str(plot))
        err_console.print(f"wrote {plot}")


from hybridc.cli_train import register as _register_train; _register_train(app)  # noqa: E402, E702, I001
from hybridc.cli_report import register as _register_report; _register_report(app)  # noqa: E402, E702, I001
from hybridc.cli_export import register as _register_export; _register_export(app)  # noqa: E402, E702, I001
from hybridc.cli_zoo import register as _register_zoo; _register_zoo(app)  # noqa: E402, E702, I001
from hybridc.cli_eval import register as _register_eval; _register_eval(app)  # noqa: E402, E702, I001


_OOM_MARKERS = ("can't allocate memory", "out of memory", "DefaultCPUAllocator", "not enough memory")


def validation_message(exc: BaseException) -> str:
    """One line for a pydantic ValidationError: every failing field as `field: reason`, an unknown key as
    "unknown key" (with the model's valid keys when pydantic names the model and it is one of hybridc's)."""
    fields: list[str] = []
    try:
        import hybridc.plan as plan_models
        import hybridc.runtime.settings as settings_models

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
    return (os.environ.get("WORLD_SIZE") not in (None, "1") and isinstance(exc, RuntimeError)
            and any(m in str(exc) for m in _PEER_MARKERS))


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
        return ("another torchrun process ended (its `error:` line is above, and in torchrun's summary under "
                "\"Root Cause\"); this one stopped waiting for it")
    if isinstance(exc, MemoryError) or (isinstance(exc, RuntimeError) and any(m in str(exc) for m in _OOM_MARKERS)):
        return ("out of memory: the requested shapes or batch sizes are too large for this machine "
                "(smaller --input-shape, --batch or --batch-size)")
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
            Path(error_file).write_text(json.dumps({"message": f"error: {message}",
                                                    "timestamp": str(int(time.time()))}))
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


if __name__ == "__main__":
    main()
