"""The `hybridc` command line: partition, gradcheck (and, as they land, train, export, verify, report)."""

from __future__ import annotations

import json
import os
import signal
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.text import Text

from hybridc.cli_options import (
    ActOpt,
    AttnOpt,
    EBOpt,
    InputShape,
    LNOpt,
    MaxBlock,
    ModelArg,
    NonMonoOpt,
    NormOpt,
    PoolOpt,
    SlopeOpt,
    check_output_file,
)
from hybridc.errors import HybridcError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="hybridc: compile PyTorch models into hybrid analog/digital ff-EBMs.")
console = Console(width=None if sys.stdout.isatty() else 160)
err_console = Console(stderr=True)


class Fmt(str, Enum):
    table = "table"
    json = "json"
    dot = "dot"


class GFmt(str, Enum):
    table = "table"
    json = "json"


class DType(str, Enum):
    float64 = "float64"
    float32 = "float32"




def _policies(norm, layer_norm, pool, attention, activation, slope, non_monotone, eb_kind) -> dict:  # noqa: ANN001
    vals = {"norm": norm, "layer_norm": layer_norm, "pool": pool, "attention": attention,
            "activation": activation, "hardsigmoid_slope": slope, "non_monotone": non_monotone,
            "eb_kind": eb_kind}
    return {k: (v.value if isinstance(v, Enum) else v) for k, v in vals.items() if v is not None}


def _emit(text: str, out: Path | None) -> None:
    if out is None:
        sys.stdout.write(text)
        return
    from hybridc.runtime.files import atomic_write_text

    atomic_write_text(out, text)
    err_console.print(f"wrote {out}")


@app.command()
def partition(
    model: ModelArg,
    max_block_size: MaxBlock = None,
    input_shape: InputShape = None,
    norm: NormOpt = None,
    layer_norm: LNOpt = None,
    pool: PoolOpt = None,
    attention: AttnOpt = None,
    activation: ActOpt = None,
    hardsigmoid_slope: SlopeOpt = None,
    non_monotone: NonMonoOpt = None,
    eb_kind: EBOpt = None,
    fmt: Annotated[Fmt, typer.Option("--format", "-f", help="table, json (the plan) or dot (block graph)")] = Fmt.table,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="write to FILE instead of stdout")] = None,
) -> None:
    """Partition MODEL into analog (energy-based) and digital blocks and print or save the plan."""
    from hybridc.api import make_config
    from hybridc.api import partition as do_partition
    from hybridc.load import load_model

    pol = _policies(norm, layer_norm, pool, attention, activation, hardsigmoid_slope, non_monotone, eb_kind)
    make_config(max_block_size, **pol)  # validate flags before loading anything
    check_output_file(output, "--output")
    lm = load_model(model, input_shape)
    plan = do_partition(lm.model, lm.example_inputs, max_block_size=max_block_size, **pol)
    if fmt == Fmt.json:
        _emit(plan.to_json() + "\n", output)
    elif fmt == Fmt.dot:
        from hybridc.render import plan_dot

        _emit(plan_dot(plan), output)
    else:
        from hybridc.render import decisions_table, plan_table

        con = console if output is None else Console(file=open(output, "w"), width=160)  # noqa: SIM115
        con.print(plan_table(plan))
        if plan.decisions:
            con.print(decisions_table(plan))
        if output is not None:
            con.file.close()
            err_console.print(f"wrote {output}")


@app.command()
def gradcheck(
    model: ModelArg,
    max_block_size: MaxBlock = None,
    beta: Annotated[float | None, typer.Option(help="nudging strength (default 1e-6 for float64, 1e-2 for float32)")] = None,
    dtype: Annotated[DType, typer.Option(help="float64 for tight checks")] = DType.float64,
    input_shape: InputShape = None,
    norm: NormOpt = None,
    layer_norm: LNOpt = None,
    pool: PoolOpt = None,
    attention: AttnOpt = None,
    activation: ActOpt = None,
    hardsigmoid_slope: SlopeOpt = None,
    non_monotone: NonMonoOpt = None,
    eb_kind: EBOpt = None,
    init: Annotated[str, typer.Option(help="keep (model's weights) or goe")] = "keep",
    batch: Annotated[int, typer.Option(help="random batch size", min=1)] = 2,
    bptt_steps: Annotated[int | None, typer.Option(
        help="steps unrolled for the BPTT reference (default 1.5x the longest free phase, at least 20)", min=1)] = None,
    seed: Annotated[int, typer.Option()] = 0,
    device: Annotated[str, typer.Option(help="cpu or cuda")] = "cpu",
    output: Annotated[str | None, typer.Option(
        "--output", help="the output tensor the loss is taken on, by its path in the model's output "
                         "(logits, 0, hidden_states.2); default: the first tensor")] = None,
    fmt: Annotated[GFmt, typer.Option("--format", "-f")] = GFmt.table,
    plot: Annotated[Path | None, typer.Option(help="save a per-layer figure (PNG): cosines and relative errors")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress lines on stderr")] = False,
) -> None:
    """Static gradient analysis: EP vs implicit differentiation vs BPTT (and vs autograd of the original
    model when every analog block is a single layer), per parameter tensor. Tensors whose true gradient is
    structurally zero are marked and left out of the summary."""
    import torch

    from hybridc.api import make_config
    from hybridc.gradcheck import gradcheck as do_gradcheck
    from hybridc.gradcheck import plot_report
    from hybridc.gradcheck_progress import PHASES, PhaseProgress
    from hybridc.load import load_model
    from hybridc.render import gradcheck_table

    pol = _policies(norm, layer_norm, pool, attention, activation, hardsigmoid_slope, non_monotone, eb_kind)
    make_config(max_block_size, **pol)
    if init not in ("keep", "goe"):
        raise HybridcError(f"--init must be keep or goe, not {init!r}")
    if device.split(":")[0] not in ("cpu", "cuda"):
        raise HybridcError(f"--device must be cpu or cuda (optionally cuda:N), not {device!r}")
    check_output_file(plot, "--plot")  # before the analysis, which can take minutes
    lm = load_model(model, input_shape)
    progress = None if quiet else PhaseProgress(list(PHASES))
    try:
        report = do_gradcheck(lm.model, lm.example_inputs, max_block_size=max_block_size or 2, beta=beta,
                              dtype=getattr(torch, dtype.value), batch=batch, seed=seed, bptt_steps=bptt_steps,
                              init=init, device=device, output=output, progress=progress, **pol)
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


_OOM_MARKERS = ("can't allocate memory", "out of memory", "DefaultCPUAllocator", "not enough memory")


def user_error(exc: BaseException) -> str | None:
    """The message `main` prints after `error: ` for an exception meant for the user, or None for a bug
    (which keeps its traceback): hybridc's own errors, the operating system refusing a file (permissions,
    a missing directory, a full disk: the OS's words and the path), and running out of memory."""
    if isinstance(exc, HybridcError):
        return str(exc)
    if isinstance(exc, OSError) and exc.strerror:
        where = f": {exc.filename}" if exc.filename else ""
        return f"{exc.strerror}{where}"
    if isinstance(exc, MemoryError) or (isinstance(exc, RuntimeError) and any(m in str(exc) for m in _OOM_MARKERS)):
        return ("out of memory: the requested shapes or batch sizes are too large for this machine "
                "(smaller --input-shape, --batch or --batch-size)")
    return None


def _terminate(signum: int, _frame: object) -> None:
    """SIGTERM ends the command like Ctrl-C does: through Python's cleanup (locks released, staging
    directories removed), exit status 143."""
    raise SystemExit(128 + signum)


def main() -> None:
    if threading_main():
        signal.signal(signal.SIGTERM, _terminate)
    try:
        app()
    except Exception as exc:  # noqa: BLE001 - what is not a user error is re-raised (a bug: its traceback)
        message = user_error(exc)
        if message is None or os.environ.get("HYBRIDC_TRACEBACK"):
            raise
        err_console.print(Text.assemble(("error: ", "bold red"), message), soft_wrap=True)
        sys.exit(2)


def threading_main() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


if __name__ == "__main__":
    main()
