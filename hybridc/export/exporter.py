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
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import datetime
import json
import math
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.fx as fx
from torch import nn

from hybridc.data.preprocess import InputTransform
from hybridc.energy.dhn import DHNBlock
from hybridc.energy.settings import SolverConfig
from hybridc.errors import HybridcError, UnsupportedOpError
from hybridc.export.energy import (
    describe_neurons,
    describe_synapses,
    save_weights,
    state_input_name,
    state_output_name,
)
from hybridc.export.full import (
    RELAXATIONS,
    FullModel,
    StepModule,
    ensure_fast_path,
    export_solver,
    preprocess_samples,
)
from hybridc.export.manifest import (
    MANIFEST_NAME,
    AnalogBlockInfo,
    DigitalBlockInfo,
    ExportError,
    FileInfo,
    FullModelInfo,
    Manifest,
    SamplesInfo,
    SolverInfo,
    SourceInfo,
    TensorInfo,
    structure_names,
    structure_to_json,
)
from hybridc.export.onnx_blocks import DEFAULT_OPSET, dim_spec, export_digital_block, export_onnx
from hybridc.export.shared_weights import share_weights
from hybridc.files import atomic_write_text, sha256_file
from hybridc.progress import StepProgress
from hybridc.train.run_lock import pid_alive

if TYPE_CHECKING:
    from hybridc.export.verify import VerifyReport
    from hybridc.runtime.ffebm import FFEBM

#: relative paths inside an export directory
PLAN_FILE = "plan.json"
SAMPLES_FILE = "samples.npz"
FULL_FILE = "model.onnx"
BLOCK_DIR = "blocks"
#: the report written into an export kept aside after a failed check
FAILED_REPORT = "verify-report.json"
#: most reference samples stored (they are run through every file by verify)
MAX_SAMPLE_BATCH = 4096


@dataclass
class ExportResult:
    """Where an export went, what it holds, and (when checked) how it verified."""

    directory: Path
    manifest: Manifest
    report: VerifyReport | None = None
    #: False when a check failed: `directory` was left as it was and the export is in `kept`
    published: bool = True
    kept: Path | None = None


# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------


def _device_effects(block: nn.Module) -> str:
    """The device non-idealities an analog block simulates ('' when ideal): random draws (programming and
    read noise) and per-batch quantisation have no faithful deterministic ONNX equivalent here."""
    from torch.nn.utils import parametrize

    spec = getattr(block, "analog", None)
    found = []
    if spec is not None and getattr(spec, "any", False):
        found = [k for k, v in spec.model_dump().items() if v not in (None, 0, 0.0)]
    if any(parametrize.is_parametrized(m) for m in block.modules()) and not found:
        found = ["parametrized weights"]
    return ", ".join(found)


def _hybridc_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("hybridc")
    except PackageNotFoundError:
        return "unknown"


def _random_inputs(ff: FFEBM, batch: int, gen: torch.Generator) -> list[torch.Tensor]:
    """Graph inputs of `batch` samples shaped like the plan's example inputs (batch axis first)."""
    refs = {r.node: r for r in ff.plan.graph_inputs}
    out = []
    for name in ff.input_names:
        ref = refs.get(name)
        if ref is None or not ref.shape:
            raise ExportError(f"the plan records no shape for graph input {name!r}; re-create the plan")
        shape = (batch, *ref.shape[1:])
        dtype = getattr(torch, (ref.dtype or "torch.float32").replace("torch.", ""), torch.float32)
        if dtype.is_floating_point:
            out.append(torch.randn(shape, generator=gen).to(torch.float32))
        elif dtype == torch.bool:
            out.append(torch.randint(0, 2, shape, generator=gen).bool())
        else:
            out.append(torch.randint(0, 2, shape, generator=gen).to(dtype))
    return out


def _run_env(ff: FFEBM, inputs: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """Every graph input and block output of one forward pass (eval mode, no grad), by tensor name: the
    model's own block loop (`FFEBM.run`), each block's failure or non-tensor output an ExportError."""
    batch = inputs[0].shape[0] if inputs else 0

    def call(name: str, _block: Any, xs: list[torch.Tensor]) -> Any:
        try:
            values = ff.run_block(name, xs)
        except HybridcError:
            raise
        except Exception as exc:
            raise ExportError(
                f"block {name} fails on a batch of {batch} samples ({type(exc).__name__}: "
                f"{str(exc).splitlines()[0] if str(exc) else ''}): export needs a model that runs at any batch "
                "size (a reshape to a literal batch size breaks that)"
            ) from None
        for o, v in zip(ff.io(name)[1], values):
            if not isinstance(v, torch.Tensor):
                raise ExportError(
                    f"block {name} hands on {o!r}, a {type(v).__name__}, not a tensor: "
                    "only tensors can cross block boundaries in an export"
                )
        return values

    with torch.no_grad():
        return ff.run(inputs, call)


def _output_structure(ff: FFEBM) -> Any:
    """The model's output as JSON: its tuples, dicts and dataclass fields (ModelOutput) with tensor names."""
    names = fx.node.map_arg(ff._output_template, lambda n: n.name)
    out_spec = getattr(ff, "_output_spec", None)
    if out_spec is not None:
        from hybridc.passes.pytree_io import template_names

        return template_names(out_spec.template, list(names))
    spec = getattr(ff, "_out_spec", None)
    if spec is not None:
        import torch.utils._pytree as pytree

        names = pytree.tree_unflatten(list(names), spec)
    return structure_to_json(names)


def _flat_outputs(structure: Any, env: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    return [env[n] for n in structure_names(structure)]


def _max_abs(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return max(
        (float((x.double() - y.double()).abs().max()) if x.numel() else 0.0 for x, y in zip(a, b)),
        default=0.0,
    )


# --------------------------------------------------------------------------------------------------
# atomic publication of a directory
# --------------------------------------------------------------------------------------------------

_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2 RENAME_EXCHANGE); False where unavailable."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    return fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0


def _normalize_permissions(root: Path) -> None:
    """Ordinary permissions (umask applied) for the export: temporary files and directories are created
    private (0600/0700), which would otherwise survive into the published directory."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(root, 0o777 & ~mask)
    for path in root.rglob("*"):
        os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~mask)


def check_destination(out: Path, force: bool) -> None:
    """Refuse to replace anything that is not a previous export unless `force`."""
    if out.exists() and not out.is_dir():
        raise ExportError(f"{out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not (out / MANIFEST_NAME).is_file() and not force:
        raise ExportError(
            f"refusing to replace {out}: it is not empty and not a hybridc export directory "
            f"(no {MANIFEST_NAME}); choose another --output or pass --force"
        )


def max_opset() -> int:
    """The newest ONNX opset the exporter writes as asked (newer requests come out as 18, silently)."""
    import onnx

    return int(onnx.defs.onnx_opset_version())


def validate_export_settings(opset: int, batch: int, tol: float) -> None:
    """ExportError for an opset outside [17, max_opset()], a batch outside [1, MAX_SAMPLE_BATCH], or a
    tolerance that is not a finite positive number: checked before any work."""
    top = max_opset()
    if not 17 <= opset <= top:
        raise ExportError(f"--opset {opset} is not supported: hybridc exports opsets 17 to {top}")
    if not 1 <= batch <= MAX_SAMPLE_BATCH:
        raise ExportError(
            f"--batch {batch} is out of range: the reference batch holds 1 to {MAX_SAMPLE_BATCH} samples"
        )
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not math.isfinite(tol) or tol <= 0:
        raise ExportError(f"--tol must be a finite number > 0 (a max abs error, e.g. 1e-4), not {tol!r}")


def check_onnx_opsets(directory: Path, files: list[str], opset: int) -> None:
    """Every ONNX file's default-domain opset is `opset` (what the manifest claims), else ExportError."""
    import onnx

    for rel in files:
        model = onnx.load(str(directory / rel), load_external_data=False)
        got = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
        if got != opset:
            raise ExportError(
                f"{rel} is written in ONNX opset {got}, not the opset {opset} the manifest records"
            )


_STAGING = re.compile(r"^\.(?P<name>.+)\.(?:tmp|old)-(?:(?P<pid>\d+)-)?[0-9A-Za-z_]+$")


def remove_stale_staging(out: Path) -> list[Path]:
    """Remove `.NAME.tmp-*` / `.NAME.old-*` siblings of `out` left by exports that were killed: those whose
    pid is no longer running (names without a pid come from older hybridc versions: always stale)."""
    removed = []
    if not out.parent.is_dir():
        return removed
    for p in out.parent.iterdir():
        m = _STAGING.match(p.name)
        if m is None or m.group("name") != out.name or not p.is_dir():
            continue
        pid = m.group("pid")
        if pid is not None and int(pid) != os.getpid() and pid_alive(int(pid)):
            continue  # another export to the same place is running
        shutil.rmtree(p, ignore_errors=True)
        removed.append(p)
    return removed


def keep_failed(staging: Path, out: Path, report: VerifyReport) -> Path:
    """Move a staged export whose check failed to `DIR.failed-<UTC stamp>` with its report; return it."""
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    kept = out.parent / f"{out.name}.failed-{stamp}"
    n = 1
    while kept.exists():
        n += 1
        kept = out.parent / f"{out.name}.failed-{stamp}-{n}"
    atomic_write_text(
        staging / FAILED_REPORT, json.dumps(report.to_json() | {"directory": str(kept)}, indent=2) + "\n"
    )
    os.replace(staging, kept)
    return kept


def publish(staging: Path, out: Path) -> None:
    """Move the complete `staging` directory to `out`, replacing a previous `out` in one step."""
    if not out.exists():
        os.replace(staging, out)
        return
    if _exchange(staging, out):
        shutil.rmtree(staging, ignore_errors=True)  # now holds the previous export
        return
    backup = out.parent / f".{out.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    os.replace(out, backup)
    try:
        os.replace(staging, out)
    except BaseException:
        os.replace(backup, out)
        raise
    shutil.rmtree(backup, ignore_errors=True)


# --------------------------------------------------------------------------------------------------
# the export
# --------------------------------------------------------------------------------------------------


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
    analog = ff.analog_blocks
    for name, block in ff.blocks.items():
        reason = analog[name].export_unsupported_reason() if name in analog else None
        if reason is not None:
            raise UnsupportedOpError(
                f"analog block {name} is a {block.kind} block ({type(block).__name__}); {reason}"
            )
        effects = _device_effects(block)
        if effects:
            raise UnsupportedOpError(
                f"analog block {name} simulates device effects ({effects}); export writes the nominal "
                "deterministic model only: compile from a plan without device effects (plan `analog` settings "
                "off) to export it"
            )
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


@dataclass
class ExportView:
    """What `export_view` changed: per analog block the compiled solver, and a note where the exported
    fixed-step solver differs from it."""

    originals: dict[str, SolverConfig]
    notes: dict[str, str]


@contextlib.contextmanager
def export_view(ff: FFEBM, steps: int | None = None) -> Iterator[ExportView]:
    """Put `ff` in its export state for the duration of the block, then restore it exactly:
    eval mode, float32 parameters and buffers, fixed-step solvers, autograd-free ∂Φ/∂s in every analog
    block. (The compiled module is modified in place and restored: a deep copy is not possible for
    graphs captured by torch.export, whose fx nodes carry fake tensors.)"""
    training = {m: m.training for m in ff.modules()}
    analog = ff.analog_blocks
    saved_solver = {n: b.solver for n, b in analog.items()}
    saved_fast = {n: b.fast for n, b in analog.items() if b.export_unsupported_reason() is None}
    saved_data: list[tuple[torch.Tensor, torch.Tensor]] = []
    try:
        ff.eval()
        for t in [*ff.parameters(), *ff.buffers()]:
            if t.is_floating_point() and t.dtype != torch.float32:
                saved_data.append((t, t.data))
                t.data = t.data.to(torch.float32)
        fixed = {n: export_solver(b.solver, steps, b.free_cap()) for n, b in analog.items()}
        view = ExportView(
            originals=dict(saved_solver), notes={n: note for n, (_, note) in fixed.items() if note}
        )
        for n, b in analog.items():
            b.solver = fixed[n][0]
            ensure_fast_path(b)
        yield view
    finally:
        for t, data in saved_data:
            t.data = data
        for n, b in analog.items():
            b.solver = saved_solver[n]
            if n in saved_fast:
                b.fast = saved_fast[n]
        for m, mode in training.items():
            m.training = mode


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
    step = _Steps(progress)
    plan = model.plan
    analog = model.analog_blocks
    gen = torch.Generator().manual_seed(seed)
    trace_batch = 2 if batch != 2 else 3
    sample_inputs = _random_inputs(model, batch, gen)
    trace_inputs = _random_inputs(model, trace_batch, gen)
    raw = None
    if preprocess is not None:  # reference samples from raw images, through the trained transform
        pre_info, raw, sample_inputs, trace_inputs = preprocess_samples(
            model, preprocess, batch, trace_batch, gen, full
        )
    structure = _output_structure(model)
    outputs = structure_names(structure)

    warnings = [f"{name}: {note}" for name, note in view.notes.items()]
    checks: dict[str, float] = {}
    with step(f"reference samples (batch {batch})"):
        env_s, env_t, dev = _reference_envs(model, view, structure, sample_inputs, trace_inputs)
    if dev is not None:
        checks["fixed_steps_vs_compiled_solver_max_abs"] = dev
        if dev > tol:
            warnings.append(
                f"the exported fixed-step relaxation differs from the compiled solver's result by "
                f"{dev:.2e} (max abs): raise --steps for a converged equilibrium"
            )

    tensors: dict[str, TensorInfo] = {}
    producers = {n: "input" for n in model.input_names}
    for name in model.blocks:
        producers.update({o: name for o in model.io(name)[1]})
    for name, value in env_s.items():
        tensors[name] = TensorInfo(
            shape=dim_spec(
                tuple(env_t[name].shape), tuple(value.shape), trace_batch, batch, f"tensor {name}"
            ),
            dtype=str(value.dtype).replace("torch.", ""),
            producer=producers[name],
        )

    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(out)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-{os.getpid()}-", dir=out.parent))
    try:
        (staging / BLOCK_DIR).mkdir()
        blocks: list[DigitalBlockInfo | AnalogBlockInfo] = []
        for name, block in model.blocks.items():
            ins, outs = model.io(name)
            pblock = plan.block(name)
            analog_block = name in analog
            with step(f"block {name} ({'analog' if analog_block else 'digital'})") as detail:
                if analog_block:
                    info = _export_analog(
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
                    written = [info.step_onnx, info.weights]
                else:
                    rel = f"{BLOCK_DIR}/{name}.onnx"
                    export_digital_block(
                        block,
                        name,
                        [env_t[i] for i in ins],
                        list(ins),
                        list(outs),
                        [tensors[i].shape for i in ins],
                        staging / rel,
                        opset,
                    )
                    info = DigitalBlockInfo(
                        name=name, inputs=list(ins), outputs=list(outs), onnx=rel, nodes=len(pblock.nodes)
                    )
                    written = [rel]
                blocks.append(info)
                detail.append(", ".join(f"{f} ({_size(staging / f)})" for f in written))
        full_info = None
        if full:
            full_steps = {name: blk.solver.t1 for name, blk in analog.items()}
            module = FullModel(
                model.blocks,
                {n: model.io(n) for n in model.blocks},
                model.input_names,
                outputs,
                full_steps,
                relaxation,
                preprocess=preprocess.module() if preprocess is not None else None,
            )
            if relaxation == "loop":
                module.prepare_loops(env_t)
            full_inputs, full_specs, full_args = (
                list(model.input_names),
                [tensors[i].shape for i in model.input_names],
                trace_inputs,
            )
            if raw is not None:  # model.onnx takes the raw images
                full_inputs[0], full_specs[0] = pre_info.raw_input, ["batch", *pre_info.raw_shape]
                full_args = [raw[1], *trace_inputs[1:]]
            with step(f"full model ({relaxation})") as detail:
                export_onnx(
                    module,
                    full_args,
                    staging / FULL_FILE,
                    full_inputs,
                    outputs,
                    full_specs,
                    "the full model (--full)",
                    opset,
                )
                detail.append(f"{FULL_FILE} ({_size(staging / FULL_FILE)})")
            full_info = FullModelInfo(
                onnx=FULL_FILE, relaxation=relaxation, steps=full_steps, inputs=full_inputs, outputs=outputs
            )
        plan.save(staging / PLAN_FILE)
        sample_values = dict(env_s) | ({pre_info.raw_input: raw[0]} if raw is not None else {})
        np.savez(staging / SAMPLES_FILE, **{k: v.detach().cpu().numpy() for k, v in sample_values.items()})

        files = []
        for path in sorted(p for p in staging.rglob("*") if p.is_file()):
            rel = path.relative_to(staging).as_posix()
            kind = {".onnx": "onnx", ".safetensors": "safetensors", ".npz": "samples"}.get(
                path.suffix, "plan"
            )
            files.append(FileInfo(path=rel, kind=kind, sha256=sha256_file(path), bytes=path.stat().st_size))
        manifest = Manifest(
            hybridc_version=_hybridc_version(),
            torch_version=torch.__version__,
            created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            opset=opset,
            source=source or SourceInfo(kind="python", model_class=plan.model.model_class),
            plan=PLAN_FILE,
            graph_inputs=list(model.input_names),
            graph_outputs=outputs,
            output_structure=structure,
            tensors=tensors,
            blocks=blocks,
            full=full_info,
            preprocess=pre_info if raw is not None else None,
            samples=SamplesInfo(file=SAMPLES_FILE, batch=batch, seed=seed, tensors=sorted(sample_values)),
            files=files,
            warnings=warnings,
            checks=checks,
        )
        manifest.save(staging / MANIFEST_NAME)

        _normalize_permissions(staging)
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


def _reference_envs(
    model: FFEBM,
    view: ExportView,
    structure: Any,
    sample_inputs: list[torch.Tensor],
    trace_inputs: list[torch.Tensor],
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], float | None]:
    """Every tensor of a forward pass at the sample and the trace batch, and (where a block's compiled solver
    is not the exported fixed-step one) the max abs difference of the outputs between the two (else None)."""
    analog = model.analog_blocks
    env_s = _run_env(model, sample_inputs)
    env_t = _run_env(model, trace_inputs)
    changed = {
        n: s for n, s in view.originals.items() if s.tol is not None or s.anderson or s.free == "equilibrium"
    }
    if not changed:
        return env_s, env_t, None
    fixed = {
        n: analog[n].solver for n in changed
    }  # how far the fixed-step export is from the compiled solver
    try:
        for n, solver in changed.items():
            analog[n].solver = solver
        reference = _flat_outputs(structure, _run_env(model, sample_inputs))
    finally:
        for n, solver in fixed.items():
            analog[n].solver = solver
    return env_s, env_t, _max_abs(reference, _flat_outputs(structure, env_s))


def _state_batch_multiples(
    states: list[torch.Tensor], inputs: list[torch.Tensor], specs: list[list[Any]]
) -> list[int]:
    """Rows per sample of each state: its leading dim over the batch, read off the first input whose leading
    dim scales with the batch ('batch' or 'k*batch' in its manifest shape); 1 when none does."""
    for x, spec in zip(inputs, specs):
        if spec and isinstance(spec[0], str):
            k = int(spec[0].split("*")[0]) if "*" in spec[0] else 1
            batch = x.shape[0] // k
            return [max(1, s.shape[0] // batch) if batch and s.shape[0] % batch == 0 else 1 for s in states]
    return [1] * len(states)


def _export_analog(
    block: DHNBlock,
    name: str,
    ins: list[str],
    outs: list[str],
    env: dict[str, torch.Tensor],
    tensors: dict[str, TensorInfo],
    staging: Path,
    opset: int,
    original: Any,
    note: str | None,
    weight_layers: list[str],
) -> AnalogBlockInfo:
    weights_rel = f"{BLOCK_DIR}/{name}.safetensors"
    step_rel = f"{BLOCK_DIR}/{name}.step.onnx"
    save_weights(block, staging / weights_rel)
    inputs = [env[i] for i in ins]
    gen = torch.Generator().manual_seed(0)
    states = [torch.rand(s.shape, generator=gen) for s in block.initial_states(inputs)]
    multiples = _state_batch_multiples(states, inputs, [tensors[i].shape for i in ins])
    state_specs = [
        ["batch" if k == 1 else f"{k}*batch", *shape] for k, shape in zip(multiples, block.neuron_shapes)
    ]
    export_onnx(
        StepModule(block),
        [*inputs, *states],
        staging / step_rel,
        [*ins, *(state_input_name(n) for n in block.neuron_names)],
        [state_output_name(n) for n in block.neuron_names],
        [*(tensors[i].shape for i in ins), *state_specs],
        f"analog block {name} (relaxation step)",
        opset,
    )
    share_weights(staging / step_rel, staging / weights_rel)  # the step file reads the weights, not a copy
    return AnalogBlockInfo(
        name=name,
        inputs=list(ins),
        outputs=list(outs),
        weights=weights_rel,
        step_onnx=step_rel,
        neurons=describe_neurons(block, multiples),
        synapses=describe_synapses(block, ins),
        solver=SolverInfo(
            mode=block.solver.mode, steps=block.solver.t1, original=original.model_dump(), note=note
        ),
        weight_layers=list(weight_layers),
    )


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


__all__ = ["ExportResult", "check_destination", "export_ffebm", "export_model", "publish"]
