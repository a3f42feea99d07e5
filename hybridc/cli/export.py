"""`hybridc export` and `hybridc verify`, registered on the main typer app by `register(app)`.

    hybridc export MODEL|RUN_DIR -o DIR [--max-block-size N | --plan plan.json] [policy flags] [--full]
    hybridc verify DIR [--tol 1e-4] [--format table|json]

`export` writes per-block ONNX files, analog weights (safetensors) and energy specifications, reference
samples and manifest.json (see `hybridc.export.exporter`), checks every file in onnxruntime before
publishing the directory (unless --no-check), and exits 1 when a check exceeds the tolerance.
`verify` re-runs those checks on an export directory; exit 1 beyond the tolerance, 2 for a broken directory.
"""

import sys
from pathlib import Path
from typing import Annotated, Any, Literal

import typer
from rich.console import Console

from hybridc.cli.app import Command, app
from hybridc.cli.flags import FLAG, flag_name, settings_flags, shown
from hybridc.cli.inputs import InputShape, ModelKwargs, load_zoo_or_file, parse_model_kwargs
from hybridc.plan import PartitionConfig
from hybridc.train.experiment import ExperimentConfig


def _console() -> Console:
    return Console(width=None if sys.stdout.isatty() else 160)


@app.command("export", cls=Command)
@settings_flags("policies", PartitionConfig)
@settings_flags(
    "choices",
    ExperimentConfig,
    ["init", "t1", "solver_mode"],
    helps={"t1": "solver free-phase steps of the compiled model"},
)
def export_command(
    target: Annotated[
        str,
        typer.Argument(
            metavar="MODEL|RUN_DIR",
            help="zoo name, path/model.py[:factory], or a training run directory "
            "(with plan.json and checkpoint.pt)",
        ),
    ],
    output: Annotated[Path, typer.Option("--output", "-o", help="export directory (replaced atomically)")],
    plan: Annotated[Path | None, typer.Option("--plan", help="compile exactly this plan JSON")] = None,
    input_shape: InputShape = None,
    model_kwargs: ModelKwargs = None,
    steps: Annotated[
        int | None,
        typer.Option(
            help="relaxation steps every analog block runs in the export "
            "(tolerance solvers need this)" + shown("each block's t1"),
            min=1,
        ),
    ] = None,
    full: Annotated[
        bool,
        typer.Option(
            "--full", **FLAG, help="also export the whole model as one ONNX file (model.onnx) for inference"
        ),
    ] = False,
    relaxation: Annotated[
        Literal["unroll", "loop"],
        typer.Option(
            help="--full: each relaxation unrolled (loop-free graph) or as an ONNX Loop (compact for many steps)"
        ),
    ] = "unroll",
    checkpoint: Annotated[
        Path | None, typer.Option(help="RUN_DIR: this checkpoint file instead of the run's checkpoint.pt")
    ] = None,
    opset: Annotated[int, typer.Option(help="ONNX opset (17 to the newest the installed onnx knows)")] = 18,
    batch: Annotated[int, typer.Option(help="samples in the stored reference batch", min=1)] = 3,
    seed: Annotated[
        int, typer.Option(help="seed of the model's init (MODEL) and of the samples", min=0, max=2**32 - 1)
    ] = 0,
    tol: Annotated[float, typer.Option(help="max abs error the check accepts (float32)")] = 1e-4,
    check: Annotated[
        bool, typer.Option("--check/--no-check", **FLAG, help="verify in onnxruntime before publishing")
    ] = True,
    force: Annotated[
        bool, typer.Option("--force", **FLAG, help="replace a non-empty directory that is not an export")
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress lines on stderr", **FLAG)] = False,
    policies: dict[str, Any] | None = None,
    choices: dict[str, Any] | None = None,
) -> None:
    """Export MODEL (or a training RUN_DIR's trained model) as a hybrid graph: one ONNX file per digital
    block, each analog block's weights (safetensors) and energy specification, manifest.json, and with
    --full one ONNX model of the whole ff-EBM for inference. Progress on stderr (unless --quiet): one line as
    each step starts and ends (load/compile, reference samples, every block, --full, the check), a rich bar
    with ETA on a terminal."""
    import torch

    from hybridc.export.exportable import validate_export_settings
    from hybridc.export.exporter import export_ffebm
    from hybridc.export.manifest import ExportError, SourceInfo
    from hybridc.export.run_dir import load_run
    from hybridc.export.verify import report_table
    from hybridc.progress import StepProgress
    from hybridc.train.run_dir import is_run_dir

    validate_export_settings(opset, batch, tol)  # before any work

    policies, choices = policies or {}, choices or {}
    console = _console()
    progress = None if quiet else StepProgress("export", None)  # export_ffebm sets the total
    try:
        if is_run_dir(target):
            given = [
                flag
                for flag, v in (
                    ("--plan", plan),
                    ("--input-shape", input_shape),
                    ("--model-kwargs", model_kwargs),
                )
                if v is not None
            ]
            given += [flag_name(k) for k in (*policies, *choices)]
            if given:
                raise ExportError(
                    f"{target} is a run directory: it is exported as trained, with its own plan and "
                    f"settings; drop {', '.join(given)} (use --steps to change the relaxation steps)"
                )
            if progress is not None:
                progress.start(f"load {target}")
            run = load_run(target, checkpoint)
            ff, source = run.ff, run.source
        else:
            if (Path(target) / "manifest.json").is_file():
                raise ExportError(
                    f"{target} is an export directory; export a MODEL or a training RUN_DIR "
                    "(`hybridc verify` checks an export)"
                )
            if Path(target).is_dir():
                raise ExportError(
                    f"{target} is a directory without plan.json: neither a model file nor a run directory"
                )
            if checkpoint is not None:
                raise ExportError("--checkpoint applies to a RUN_DIR only")
            from hybridc.api import compile as hc_compile
            from hybridc.api import make_config
            from hybridc.plan import PlanFileError, read_plan

            kwargs = parse_model_kwargs(model_kwargs)
            if plan is None:
                make_config(**policies)  # validate flags before loading anything
            the_plan = None
            if plan is not None:
                try:
                    the_plan = read_plan(plan)
                except PlanFileError as exc:
                    raise ExportError(str(exc)) from None
            torch.manual_seed(seed)
            batch_kw: dict[str, Any] = {}
            if (
                the_plan is not None and the_plan.model.example_shapes
            ):  # the plan's example shapes, unless given
                shape0 = the_plan.model.example_shapes[0]
                batch_kw = {"batch": shape0[0]}
                input_shape = input_shape or ",".join(map(str, shape0[1:]))
            if progress is not None:
                progress.start(f"load and compile {target}")
            lm = load_zoo_or_file(target, input_shape, model_kwargs, **batch_kw)
            solver = {k: choices[c] for k, c in (("t1", "t1"), ("mode", "solver_mode")) if c in choices}
            ff = hc_compile(
                lm.model,
                lm.example_inputs,
                plan=the_plan,
                solver=solver,
                init=choices.get("init", ExperimentConfig.model_fields["init"].default),
                **policies,
            )
            source = SourceInfo(
                kind="model", spec=target, model_kwargs=kwargs, model_class=type(lm.model).__name__
            )

        if progress is not None:
            progress.done(f"{len(ff.blocks)} blocks ({len(ff.analog_blocks)} analog)")
        result = export_ffebm(
            ff,
            output,
            source=source,
            full=full,
            relaxation=relaxation,
            steps=steps,
            opset=opset,
            batch=batch,
            seed=seed,
            force=force,
            check=check,
            tol=tol,
            progress=progress or False,
        )
    finally:
        if progress is not None:
            progress.close()
    m = result.manifest
    n_dig = sum(b.kind == "digital" for b in m.blocks)
    n_ana = len(m.blocks) - n_dig
    what = [f"{n_dig} digital block(s) (.onnx)", f"{n_ana} analog block(s) (.safetensors + .step.onnx)"]
    if m.full is not None:
        what.append(f"{m.full.onnx} (whole model)")
    written = ", ".join(what) + ", manifest.json, plan.json, samples.npz"
    if result.published:
        console.print(f"wrote {result.directory}: {written}", highlight=False)
    else:
        console.print(
            f"exported {written} into {result.kept} (not published: see the check below)", highlight=False
        )
    for w in m.warnings:
        console.print(f"[yellow]warning:[/] {w}", highlight=False)
    if result.report is not None:
        console.print(report_table(result.report))
        if not result.report.ok:
            names = ", ".join(f"{r.name} ({r.kind})" for r in result.report.failures)
            console.print(
                f"[bold red]check failed:[/] {names} exceed {tol:g}; nothing was published: "
                f"{result.directory} is as it was"
                + (
                    f"; the failed export is kept in {result.kept} (with verify-report.json)"
                    if result.kept
                    else ""
                ),
                highlight=False,
            )
            raise typer.Exit(1)


@app.command("verify", cls=Command)
def verify_command(
    directory: Annotated[
        Path, typer.Argument(metavar="DIR", help="an export directory (hybridc export -o DIR)")
    ],
    tol: Annotated[float, typer.Option(help="max abs error accepted (float32)")] = 1e-4,
    fmt: Annotated[Literal["table", "json"], typer.Option("--format", "-f", help="table or json")] = "table",
) -> None:
    """Run every exported file in onnxruntime against the torch model's reference samples: the max abs error
    per block and end to end. Exit 1 when any exceeds --tol."""
    from hybridc.export.verify import report_json, report_table, verify_export

    report = verify_export(directory, tol=tol)  # (checks --tol first)
    if fmt == "json":
        sys.stdout.write(report_json(report) + "\n")
    else:
        console = _console()
        console.print(report_table(report))
        if report.ok:
            console.print(f"[green]ok:[/] every check within {tol:g}", highlight=False)
        else:
            names = ", ".join(f"{r.name} ({r.kind})" for r in report.failures)
            console.print(f"[bold red]FAILED:[/] {names} exceed {tol:g}", highlight=False)
    if not report.ok:
        raise typer.Exit(1)
