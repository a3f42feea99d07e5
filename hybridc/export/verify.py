"""`hybridc verify DIR`: run every exported file in onnxruntime and compare with the torch model.

Design: the torch side is represented by `DIR/samples.npz`, written at export time by the torch model
itself (eval mode, the exported fixed-step solver): the graph inputs and every block's outputs. Verify
therefore needs neither the model's code nor torch: it checks

- every digital block's ONNX file on its recorded inputs against its recorded outputs;
- every analog block's step file, iterated for the exported number of steps from zero states, against the
  recorded equilibrium of its output neurons; and that its safetensors weights are the step file's weights;
- end to end, chained: the block files alone, from the graph inputs, each block fed by the previous
  blocks' ONNX results (errors accumulate as they would in a deployment);
- end to end, `model.onnx` (when exported with --full).

Every file's SHA-256 is checked against the manifest first (and the manifest's own digest when it is
loaded): a changed or missing file is an error. The manifest's description of each analog block (neuron
shapes, activations, the solver's update order and steps) is then checked against its step graph
(`hybridc.export.verify_spec`): a manifest that disagrees with the files it describes is an error too.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hybridc.export.exportable import check_onnx_opsets
from hybridc.export.manifest import AnalogBlockInfo, DigitalBlockInfo, ExportError, Manifest
from hybridc.files import sha256_file
from hybridc.finite import SettingError, check_float

DEFAULT_TOL = 1e-4


@dataclass
class CheckRow:
    """One comparison: a block file, or an end-to-end run."""

    name: str
    kind: str  # digital | analog | chained | full
    file: str
    max_abs_error: float
    ok: bool
    detail: str = ""
    scale: float = 0.0  # max |reference value|: the size the error is measured against


@dataclass
class VerifyReport:
    directory: Path
    tol: float
    rows: list[CheckRow] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.rows)

    @property
    def failures(self) -> list[CheckRow]:
        return [r for r in self.rows if not r.ok]

    def to_json(self) -> dict[str, Any]:
        return {
            "directory": str(self.directory),
            "tol": self.tol,
            "ok": self.ok,
            "rows": [asdict(r) for r in self.rows],
        }


def _check_files(directory: Path, manifest: Manifest) -> None:
    problems = []
    for f in manifest.files:
        path = directory / f.path
        if not path.is_file():
            problems.append(f"{f.path} is missing")
        elif sha256_file(path) != f.sha256:
            problems.append(f"{f.path} changed since export (SHA-256 differs from the manifest)")
    referenced = {manifest.plan, manifest.samples.file}
    for b in manifest.blocks:
        referenced |= {b.onnx} if isinstance(b, DigitalBlockInfo) else {b.step_onnx, b.weights}
    if manifest.full is not None:
        referenced.add(manifest.full.onnx)
    listed = {f.path for f in manifest.files}
    problems += [
        f"{p} is referenced but not listed in the manifest's files" for p in sorted(referenced - listed)
    ]
    if problems:
        raise ExportError(f"export directory {directory} is inconsistent:\n  - " + "\n  - ".join(problems))


def _check_description(directory: Path, manifest: Manifest) -> None:
    """The manifest's opset and analog-block descriptions against the files (ExportError listing each)."""
    from hybridc.export.verify_spec import check_block_spec

    onnx_files = [f.path for f in manifest.files if f.kind == "onnx"]
    check_onnx_opsets(directory, onnx_files, manifest.opset)
    problems = []
    for b in manifest.blocks:
        if isinstance(b, AnalogBlockInfo):
            problems += check_block_spec(directory, manifest, b)
    if problems:
        raise ExportError(
            f"the manifest of {directory} does not describe its step graphs:\n  - " + "\n  - ".join(problems)
        )


def _scale(arrays: list[np.ndarray]) -> float:
    return max((float(np.abs(a).max()) for a in arrays if a.size), default=0.0)


def _err(got: np.ndarray, want: np.ndarray) -> float:
    if got.shape != want.shape:
        return float("inf")
    if got.size == 0:
        return 0.0
    d = np.abs(got.astype(np.float64) - want.astype(np.float64))
    return float("inf") if not np.all(np.isfinite(d)) else float(d.max())


class _Runner:
    """Runs the export's files in onnxruntime (sessions cached)."""

    def __init__(self, directory: Path, manifest: Manifest):
        self.directory = directory
        self.manifest = manifest
        self._sessions: dict[str, Any] = {}

    def session(self, rel: str) -> Any:
        if rel not in self._sessions:
            from hybridc.export.onnx_blocks import onnx_session

            try:
                self._sessions[rel] = onnx_session(self.directory / rel)
            except Exception as exc:
                raise ExportError(f"onnxruntime cannot load {rel}: {str(exc).splitlines()[0]}") from None
        return self._sessions[rel]

    def run(self, rel: str, feeds: dict[str, np.ndarray], outputs: list[str]) -> list[np.ndarray]:
        sess = self.session(rel)
        wanted = {i.name for i in sess.get_inputs()}
        try:
            return sess.run(outputs, {k: v for k, v in feeds.items() if k in wanted})
        except Exception as exc:
            raise ExportError(f"onnxruntime failed running {rel}: {str(exc).splitlines()[0]}") from None

    def block(self, b: DigitalBlockInfo | AnalogBlockInfo, env: dict[str, np.ndarray]) -> list[np.ndarray]:
        """The block's outputs from the values in `env` (an analog block relaxes from zero states)."""
        if isinstance(b, DigitalBlockInfo):
            return self.run(b.onnx, {i: env[i] for i in b.inputs}, b.outputs)
        # states are [batch_multiple·batch, *shape]: the batch of an input whose first axis is the batch itself
        # (a block may also read a flattened [batch*T, ...] input, as GPT-2's MLP does), else of one whose
        # first axis is k·batch (MobileViT's patch layout), else the first input's first axis
        tensors = self.manifest.tensors
        lead = {i: tensors[i].shape[0] for i in b.inputs if i in tensors and tensors[i].shape}
        first = next((i for i, d in lead.items() if d == "batch"), None)
        if first is not None:
            batch = env[first].shape[0]
        else:
            scaled = next((i for i, d in lead.items() if isinstance(d, str) and d.endswith("*batch")), None)
            batch = (
                env[scaled].shape[0] // int(str(lead[scaled]).split("*")[0])
                if scaled is not None
                else env[b.inputs[0]].shape[0]
            )
        states = {
            n.state_input: np.zeros((n.batch_multiple * batch, *n.shape), dtype=np.float32) for n in b.neurons
        }
        feeds = {i: env[i] for i in b.inputs}
        next_names = [n.state_output for n in b.neurons]
        for _ in range(b.solver.steps):
            new = self.run(b.step_onnx, feeds | states, next_names)
            states = {n.state_input: v for n, v in zip(b.neurons, new)}
        by_name = {n.name: states[n.state_input] for n in b.neurons}
        return [by_name[o] for o in b.outputs]


def _weights_match(runner: _Runner, b: AnalogBlockInfo) -> str:
    """Check that the safetensors weights are the step file's: every weight must appear among the step
    file's initializers, by name (`<module path>.<name>`) or, where the ONNX optimizer folded a transpose
    into the constant, by value (the tensor or its transpose)."""
    import onnx
    from onnx import numpy_helper
    from safetensors.numpy import load_file

    weights = load_file(str(runner.directory / b.weights))
    model = onnx.load(str(runner.directory / b.step_onnx))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    prefixes = ("", "block.synapses.", "block.prefix.", "block.core.", "synapses.")
    found, missing = 0, []
    for name, w in weights.items():
        exact = next((inits[p + name] for p in prefixes if p + name in inits), None)
        if exact is not None:
            if exact.shape != w.shape or _err(exact, w) > 0:
                raise ExportError(f"{b.weights}: tensor {name} differs from {b.step_onnx}'s {name}")
            found += 1
        elif any(
            c.shape == w.shape
            and _err(c, w) == 0
            or w.ndim == 2
            and c.shape == w.T.shape
            and _err(c, w.T) == 0
            for c in inits.values()
        ):
            found += 1  # folded into a constant by the ONNX optimizer (e.g. W transposed for MatMul)
        else:
            missing.append(name)
    if weights and not found:
        raise ExportError(f"none of the weights in {b.weights} appear in {b.step_onnx}")
    text = f"{found}/{len(weights)} weight tensors in the step file"
    if missing:
        text += f" (not found, possibly folded: {', '.join(missing[:3])})"
    return text


def verify_export(directory: str | Path, tol: float = DEFAULT_TOL) -> VerifyReport:
    """Check every file of an export directory in onnxruntime against its torch reference samples.

    Raises ExportError for a broken directory (missing/changed files, a file onnxruntime cannot run);
    returns a report whose `ok` says whether every error is within `tol` (max abs, float32).
    """
    try:
        check_float(tol, "--tol", gt=0)
    except SettingError as exc:
        raise ExportError(str(exc)) from None
    directory = Path(directory)
    manifest = Manifest.load(directory)
    _check_files(directory, manifest)
    _check_description(directory, manifest)
    try:
        with np.load(directory / manifest.samples.file) as data:
            samples = {k: data[k] for k in data.files}
    except Exception as exc:
        raise ExportError(f"cannot read {manifest.samples.file}: {exc}") from None
    missing = [t for t in manifest.tensors if t not in samples]
    if missing:
        raise ExportError(f"{manifest.samples.file} lacks reference values for {missing[:5]}")
    runner = _Runner(directory, manifest)
    report = VerifyReport(directory=directory, tol=tol)

    for b in manifest.blocks:
        got = runner.block(b, samples)
        err = max((_err(g, samples[o]) for g, o in zip(got, b.outputs)), default=0.0)
        scale = _scale([samples[o] for o in b.outputs])
        if isinstance(b, DigitalBlockInfo):
            report.rows.append(CheckRow(b.name, "digital", b.onnx, err, err <= tol, "", scale))
        else:
            detail = f"{b.solver.steps} steps ({b.solver.mode}); " + _weights_match(runner, b)
            report.rows.append(CheckRow(b.name, "analog", b.step_onnx, err, err <= tol, detail, scale))

    env = {i: samples[i] for i in manifest.graph_inputs}
    for b in manifest.blocks:
        env.update(zip(b.outputs, runner.block(b, env)))
    err = max((_err(env[o], samples[o]) for o in manifest.graph_outputs), default=0.0)
    scale = _scale([samples[o] for o in manifest.graph_outputs])
    n_files = len(manifest.blocks)
    report.rows.append(
        CheckRow(
            "end-to-end",
            "chained",
            f"{n_files} block files",
            err,
            err <= tol,
            "block files run in sequence from the graph inputs",
            scale,
        )
    )

    if manifest.full is not None:
        got = runner.run(
            manifest.full.onnx, {i: samples[i] for i in manifest.full.inputs}, manifest.full.outputs
        )
        err = max((_err(g, samples[o]) for g, o in zip(got, manifest.full.outputs)), default=0.0)
        steps = "/".join(map(str, sorted(set(manifest.full.steps.values())))) or "0"
        how = "unrolled" if manifest.full.relaxation == "unroll" else "as ONNX Loops"
        report.rows.append(
            CheckRow(
                "end-to-end",
                "full",
                manifest.full.onnx,
                err,
                err <= tol,
                f"relaxations {how} ({steps} steps)",
                scale,
            )
        )
    return report


def report_table(report: VerifyReport) -> Any:
    """A rich Table of the report's rows."""
    from rich.table import Table

    table = Table(title=f"hybridc verify {report.directory}  (tolerance {report.tol:g}, max abs, float32)")
    for col in ("check", "kind", "file", "max |onnx - torch|", "max |torch|", "status", "detail"):
        table.add_column(col, justify="right" if col.startswith("max") else "left")
    for r in report.rows:
        status = "[green]ok[/]" if r.ok else "[bold red]FAIL[/]"
        table.add_row(r.name, r.kind, r.file, f"{r.max_abs_error:.2e}", f"{r.scale:.2e}", status, r.detail)
    return table


def report_json(report: VerifyReport) -> str:
    return json.dumps(report.to_json(), indent=2)
