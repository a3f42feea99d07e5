"""Export a compiled ff-EBM into a directory: per-block ONNX files, analog weights and energy
specifications, reference samples, the plan, optionally the whole model as one ONNX file, and the manifest.

Layout of DIR::

    manifest.json               what everything is (hybridc.export.manifest.Manifest)
    plan.json                   the plan the model was compiled with
    samples.npz                 reference values from the torch model: graph inputs and every block output
    blocks/<digital>.onnx       forward(inputs...) -> outputs
    blocks/<analog>.step.onnx   one step of T: (inputs..., states...) -> next states
    blocks/<analog>.safetensors synapse weights, named as in the manifest's synapse paths
    model.onnx                  (--full) the whole ff-EBM, relaxations unrolled

The directory is written into a temporary sibling `.DIR.tmp-<pid>-<random>` and swapped in only when complete
and, unless `check=False`, only after every check in onnxruntime passed: an existing export is replaced whole
or left as it was, never half-overwritten and never replaced by a failing one. A failing export is kept aside
as `DIR.failed-<UTC stamp>` (with `verify-report.json`) for inspection. The staging directory is removed on any
exit that runs Python's cleanup (errors, Ctrl-C, SIGTERM through the CLI); one left by a killed process
(kill -9) is recognised by its dead pid and removed by the next export to the same place.

This module is the driver: it checks what is asked (`hybridc.export.exportable`), puts the model in its
export state (`hybridc.export.view`), computes the reference values (`hybridc.export.reference`), writes the
block files (`hybridc.export.block_files`), model.onnx (`hybridc.export.full`), plan, samples and file
inventory (`hybridc.export.bundle`) and the manifest, checks the result and publishes it
(`hybridc.export.publish`).
"""

from __future__ import annotations

import contextlib
import datetime
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from hybridc.data.preprocess import InputTransform
from hybridc.export.block_files import (
    BLOCK_DIR,
    block_file_paths,
    write_analog_block,
    write_digital_block,
)
from hybridc.export.bundle import file_inventory, hybridc_version, write_plan, write_samples
from hybridc.export.exportable import check_exportable, check_onnx_opsets, validate_export_settings
from hybridc.export.full import RELAXATIONS, full_model, preprocess_samples, write_full_model
from hybridc.export.manifest import (
    MANIFEST_NAME,
    AnalogBlockInfo,
    DigitalBlockInfo,
    ExportError,
    FullModelInfo,
    Manifest,
    SourceInfo,
    structure_names,
)
from hybridc.export.onnx_blocks import DEFAULT_OPSET
from hybridc.export.publish import (
    check_destination,
    keep_failed,
    normalize_permissions,
    publish,
    staging_dir,
)
from hybridc.export.reference import output_structure, random_inputs, reference_envs, tensor_table
from hybridc.export.view import ExportView, export_view
from hybridc.progress import StepProgress

if TYPE_CHECKING:
    from hybridc.export.verify import VerifyReport
    from hybridc.runtime.ffebm import FFEBM


@dataclass
class ExportResult:
    """Where an export went, what it holds, and (when checked) how it verified."""

    directory: Path
    manifest: Manifest
    report: VerifyReport | None = None
    #: False when a check failed: `directory` was left as it was and the export is in `kept`
    published: bool = True
    kept: Path | None = None


def export_ffebm(
    ff: FFEBM,
    out: str | Path,
    *,
    source: SourceInfo | None = None,
    full: bool = False,
    relaxation: str = "unroll",
    steps: int | None = None,
    opset: int = DEFAULT_OPSET,
    batch: int = 3,
    seed: int = 0,
    force: bool = False,
    check: bool = True,
    tol: float = 1e-4,
    preprocess: InputTransform | None = None,
    progress: bool | StepProgress = False,
) -> ExportResult:
    """Export the compiled ff-EBM `ff` into directory `out` (see the module docstring for the layout).

    `full`: also write model.onnx, the whole model, every analog relaxation unrolled (`relaxation="unroll"`,
    loop-free) or as an ONNX Loop (`"loop"`: T steps cost one copy of the step, for long relaxations). `steps`: the
    relaxation steps every analog block runs in the export (default: each block's solver t1; a tolerance
    solver is exported as fixed steps, see `hybridc.export.full.export_solver`). `batch`/`seed`: the
    reference samples stored for `hybridc verify`. `check`: verify the files in onnxruntime before
    publishing them (a file that does not load or run aborts the export; numeric results are returned in
    `report`; an export beyond `tol` is not published: `out` stays as it was and the export is kept aside, see
    `ExportResult.kept`). Digital blocks are exported in eval mode (batchnorm running statistics, no dropout),
    float32. `preprocess`: the input transform the model was trained with (a run's; see
    `hybridc.data.preprocess`): recorded in the manifest, applied by model.onnx (whose input is then the raw
    images), and checked by verify through raw reference samples. `progress`: True for a line per step on
    stderr (reference samples, each block, --full, the check; a rich bar with ETA on a terminal), or a
    `hybridc.progress.StepProgress` to report to (its total grows by these steps; closed here).
    """
    validate_export_settings(opset, batch, tol)
    if preprocess is None:  # a model loaded from a run directory carries its trained input transform
        preprocess = getattr(ff, "input_transform", None)
    if relaxation not in RELAXATIONS:
        raise ExportError(f"relaxation must be one of {', '.join(RELAXATIONS)}, not {relaxation!r}")
    out = Path(out)
    check_destination(out, force)
    check_exportable(ff)
    total = 1 + len(ff.blocks) + int(full) + int(check)
    bar = (
        progress
        if isinstance(progress, StepProgress)
        else StepProgress("export", total)
        if progress
        else None
    )
    if isinstance(progress, StepProgress):  # steps the caller already ran (compile) count towards the total
        progress.set_total(progress.index + total)
    try:
        with export_view(ff, steps) as view:
            return _export(
                ff,
                out,
                view,
                source=source,
                full=full,
                relaxation=relaxation,
                opset=opset,
                batch=batch,
                seed=seed,
                check=check,
                tol=tol,
                preprocess=preprocess,
                progress=bar,
            )
    finally:
        if bar is not None:
            bar.close()


class _Steps:
    """`with steps("block x"):` around each export step: start/done on the progress (if any)."""

    def __init__(self, progress: StepProgress | None):
        self.progress = progress

    @contextlib.contextmanager
    def __call__(self, step: str) -> Iterator[list[str]]:
        """Yields a list: a string appended to it becomes the step's done-line detail."""
        detail: list[str] = []
        if self.progress is not None:
            self.progress.start(step)
        yield detail
        if self.progress is not None:
            self.progress.done("; ".join(detail))


def _export(
    model: FFEBM,
    out: Path,
    view: ExportView,
    *,
    source: SourceInfo | None,
    full: bool,
    relaxation: str,
    opset: int,
    batch: int,
    seed: int,
    check: bool,
    tol: float,
    preprocess: InputTransform | None = None,
    progress: StepProgress | None = None,
) -> ExportResult:
    """The export itself, `model` already in its export state (`view`): see `export_ffebm`."""
    step = _Steps(progress)
    plan = model.plan
    analog = model.analog_blocks
    gen = torch.Generator().manual_seed(seed)
    trace_batch = 2 if batch != 2 else 3
    sample_inputs = random_inputs(model, batch, gen)
    trace_inputs = random_inputs(model, trace_batch, gen)
    raw = None
    if preprocess is not None:  # reference samples from raw images, through the trained transform
        pre_info, raw, sample_inputs, trace_inputs = preprocess_samples(
            model, preprocess, batch, trace_batch, gen, full
        )
    structure = output_structure(model)
    outputs = structure_names(structure)

    warnings = [f"{name}: {note}" for name, note in view.notes.items()]
    checks: dict[str, float] = {}
    with step(f"reference samples (batch {batch})"):
        env_s, env_t, dev = reference_envs(model, view, structure, sample_inputs, trace_inputs)
    if dev is not None:
        checks["fixed_steps_vs_compiled_solver_max_abs"] = dev
        if dev > tol:
            warnings.append(
                f"the exported fixed-step relaxation differs from the compiled solver's result by "
                f"{dev:.2e} (max abs): raise --steps for a converged equilibrium"
            )
    tensors = tensor_table(model, env_s, env_t, batch, trace_batch)

    staging = staging_dir(out)
    try:
        (staging / BLOCK_DIR).mkdir()
        blocks: list[DigitalBlockInfo | AnalogBlockInfo] = []
        for name, block in model.blocks.items():
            ins, outs = model.io(name)
            pblock = plan.block(name)
            analog_block = name in analog
            with step(f"block {name} ({'analog' if analog_block else 'digital'})") as detail:
                info: DigitalBlockInfo | AnalogBlockInfo
                if analog_block:
                    info = write_analog_block(
                        block,
                        name,
                        ins,
                        outs,
                        env_t,
                        tensors,
                        staging,
                        opset,
                        view.originals[name],
                        view.notes.get(name),
                        pblock.weight_layers,
                    )
                else:
                    info = write_digital_block(
                        block, name, ins, outs, env_t, tensors, staging, opset, len(pblock.nodes)
                    )
                blocks.append(info)
                detail.append(", ".join(f"{f} ({_size(staging / f)})" for f in block_file_paths(info)))
        full_info: FullModelInfo | None = None
        if full:
            module = full_model(model, outputs, relaxation, env_t, preprocess)
            with step(f"full model ({relaxation})") as detail:
                full_info = write_full_model(
                    module,
                    tensors,
                    trace_inputs,
                    staging,
                    opset,
                    pre_info if raw is not None else None,
                    raw[1] if raw is not None else None,
                )
                detail.append(f"{full_info.onnx} ({_size(staging / full_info.onnx)})")
        plan_file = write_plan(staging, plan)
        sample_values = dict(env_s) | ({pre_info.raw_input: raw[0]} if raw is not None else {})
        samples = write_samples(staging, sample_values, batch, seed)

        files = file_inventory(staging)
        manifest = Manifest(
            hybridc_version=hybridc_version(),
            torch_version=torch.__version__,
            created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            opset=opset,
            source=source or SourceInfo(kind="python", model_class=plan.model.model_class),
            plan=plan_file,
            graph_inputs=list(model.input_names),
            graph_outputs=outputs,
            output_structure=structure,
            tensors=tensors,
            blocks=blocks,
            full=full_info,
            preprocess=pre_info if raw is not None else None,
            samples=samples,
            files=files,
            warnings=warnings,
            checks=checks,
        )
        manifest.save(staging / MANIFEST_NAME)

        normalize_permissions(staging)
        if not check:  # (verify checks them too)
            check_onnx_opsets(staging, [f.path for f in files if f.kind == "onnx"], opset)
        report = None
        if check:
            from hybridc.export.verify import verify_export

            with step("check in onnxruntime") as detail:
                report = verify_export(staging, tol=tol)
                detail.append("ok" if report.ok else f"{len(report.failures)} check(s) beyond {tol:g}")
            if not report.ok:
                kept = keep_failed(staging, out, report)
                report.directory = kept
                return ExportResult(
                    directory=out, manifest=manifest, report=report, published=False, kept=kept
                )
            report.directory = out
        publish(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return ExportResult(directory=out, manifest=manifest, report=report)


def _size(path: Path) -> str:
    """A file's size for progress lines: '12.3 kB', '4.5 MB'."""
    n = path.stat().st_size if path.is_file() else 0
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def export_model(
    model: nn.Module,
    example_inputs: Any,
    out: str | Path,
    *,
    plan: Any = None,
    max_block_size: int | None = None,
    solver: dict | None = None,
    init: str = "keep",
    source: SourceInfo | None = None,
    policies: dict[str, Any] | None = None,
    **export_kwargs: Any,
) -> ExportResult:
    """Compile `model` (with `plan`, or `max_block_size` and partition `policies`) and export it."""
    from hybridc.api import compile as hc_compile

    ff = hc_compile(
        model,
        example_inputs,
        plan=plan,
        max_block_size=max_block_size,
        solver=solver,
        init=init,
        **(policies or {}),
    )
    src = source or SourceInfo(kind="python", model_class=type(model).__name__)
    return export_ffebm(ff, out, source=src, **export_kwargs)


__all__ = ["ExportResult", "export_ffebm", "export_model"]
