"""Analog blocks' relaxation as exportable modules, and the whole ff-EBM as one ONNX model.

An analog block's forward is a relaxation: from zero states, `steps` applications of the fixed-point map
T(s)_j = σ_j(∂Φ/∂s_j) (synchronous, or even layers then odd layers). ∂Φ/∂s = u + (top-down adjoint terms)
is computed with explicit transposed ops (`hybridc.energy.transpose.TransposeProgram`: conv -> transposed
conv, max-pool -> scatter into the arg-max, ...), never autograd, so torch.export captures it as plain ops.

- `StepModule`: one application of T, `(inputs..., states...) -> next states` (the per-block step file).
- `FullModel`: every block in execution order, each analog block unrolled for its fixed step count
  (a loop-free graph: onnxruntime alone reproduces the model's predictions), optionally behind the trained
  input transform (resize + normalisation), so that it takes raw images.
- `full_model` / `write_full_model`: that module for a compiled ff-EBM, and its file `model.onnx` (--full).

The solver must be in fixed-step mode: a tolerance criterion or Anderson mixing is data-dependent control
flow that an unrolled graph cannot express; `prepare_for_export` turns such settings into fixed steps
(see its docstring) and says so.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from hybridc.energy.block import EnergyBlock
from hybridc.energy.dhn import DHNBlock
from hybridc.energy.settings import SolverConfig
from hybridc.errors import UnsupportedOpError
from hybridc.export.manifest import FullModelInfo, TensorInfo
from hybridc.export.onnx_blocks import export_onnx
from hybridc.runtime.ffebm import run_blocks

if TYPE_CHECKING:
    from hybridc.data.preprocess import InputTransform
    from hybridc.export.manifest import PreprocessInfo
    from hybridc.runtime.ffebm import FFEBM

#: the whole model's ONNX file, relative to the export directory
FULL_FILE = "model.onnx"


def ensure_fast_path(block: DHNBlock) -> None:
    """Give `block` (in its export state) the autograd-free ∂Φ/∂s; UnsupportedOpError naming the op if
    impossible. The program runs on what the block's step reads: its per-step `core` graph (fed by the
    once-per-phase `prefix`) where it has one, else the whole synapse graph."""
    if block.fast is not None:
        return
    from hybridc.energy.transpose import TransposeProgram

    gm, n_in = (block.core, block.n_cut) if hasattr(block, "core") else (block.synapses, block.n_inputs)
    try:
        block.fast = TransposeProgram(gm, n_in)
    except UnsupportedOpError as exc:
        raise UnsupportedOpError(
            f"analog block {block.name}: its relaxation cannot be exported: ∂Φ/∂s needs the transpose of "
            f"every synapse op, and {exc}"
        ) from None


def _prepare(block: EnergyBlock, inputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """What every step of a phase reads (the block's once-per-phase prefix: a DHN's input-only synapses)."""
    return list(block.prepare(list(inputs)))


def _step(
    block: EnergyBlock, prepared: Sequence[torch.Tensor], states: Sequence[torch.Tensor]
) -> list[torch.Tensor]:
    """One application of the fixed-point map from the prepared inputs."""
    return list(block.step_prepared(list(prepared), list(states)))


def export_solver(
    solver: SolverConfig, steps: int | None, cap: int | None = None
) -> tuple[SolverConfig, str | None]:
    """The fixed-step solver an export runs, and a note when it differs from `solver`.

    Fixed steps: `steps` if given, else the solver's free-phase steps: t1 (`free="fixed"`), or for the default
    run-to-equilibrium free phase `cap`, the block's step cap (`hybridc.energy.solver.free_schedule`: the
    count its feedback-gain bound guarantees converged). A tolerance (`tol`) is dropped: the exported
    relaxation always runs exactly that many steps (give `steps`, e.g. the block's typical step count, for a
    converged equilibrium). Anderson mixing is dropped: plain fixed-point iteration.
    """
    equilibrium = solver.free == "equilibrium" and solver.tol is None and cap is not None
    default = cap if equilibrium else solver.t1
    n = steps or default
    notes = []
    if steps is not None and steps != default:
        notes.append(f"steps set to {steps} (solver {'step cap' if equilibrium else 't1'} = {default})")
    if equilibrium:
        notes.append(f"free phase to equilibrium (free_tol={solver.free_tol:g}) exported as {n} fixed steps")
    if solver.tol is not None:
        notes.append(
            f"tolerance mode (tol={solver.tol:g}, max_steps={solver.max_steps}) exported as {n} fixed steps"
        )
    if solver.anderson:
        notes.append(f"Anderson mixing (m={solver.anderson}) dropped: plain fixed-point iteration")
    fixed = SolverConfig(**(solver.model_dump() | {"t1": n, "free": "fixed", "tol": None, "anderson": 0}))
    return fixed, "; ".join(notes) or None


class StepModule(nn.Module):
    """One step of an analog block's fixed-point map: `(inputs..., states...) -> next states`."""

    def __init__(self, block: DHNBlock):
        super().__init__()
        self.block = block

    def forward(self, *args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        n = self.block.n_inputs
        return tuple(self.block.step_map(list(args[:n]), list(args[n:])))


class _PreparedStep(nn.Module):
    """One step from the prepared inputs: `(prepared..., states...) -> next states` (a loop body)."""

    def __init__(self, block: EnergyBlock, n_prepared: int):
        super().__init__()
        self.block = block
        self.n = n_prepared

    def forward(self, *args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(_step(self.block, args[: self.n], args[self.n :]))


def relax_unrolled(block: EnergyBlock, inputs: Sequence[torch.Tensor], steps: int) -> list[torch.Tensor]:
    """The free phase as a loop-free computation: `steps` applications of T from zero states (the
    input-only part of the synapses computed once, as the block itself does)."""
    prepared = _prepare(block, inputs)
    states = block.initial_states(list(inputs))
    for _ in range(steps):
        states = _step(block, prepared, states)
    return states


def loop_body(block: EnergyBlock, inputs: Sequence[torch.Tensor]) -> nn.Module:
    """One step from prepared inputs captured as a flat ATen graph (torch.export, on real example inputs,
    before the model around it is traced): while_loop traces its body strictly, and the adjoint program's
    Python bookkeeping is not traceable that way."""
    with torch.no_grad():
        prepared = _prepare(block, inputs)
        init = block.initial_states(list(inputs))
        dims = tuple({0: torch.export.Dim.AUTO} for _ in [*prepared, *init])
        return torch.export.export(
            _PreparedStep(block, len(prepared)), (*prepared, *init), dynamic_shapes=(dims,), strict=False
        ).module()


def relax_loop(
    block: EnergyBlock, inputs: Sequence[torch.Tensor], steps: int, body_module: nn.Module
) -> list[torch.Tensor]:
    """The free phase as one `while_loop` over T (exported as an ONNX Loop: the graph holds T once);
    `body_module` from `loop_body`."""
    from torch._higher_order_ops.while_loop import while_loop

    prepared = _prepare(block, inputs)

    def cond(i: torch.Tensor, *states: torch.Tensor) -> torch.Tensor:
        return i < steps

    def body(i: torch.Tensor, *states: torch.Tensor) -> tuple[torch.Tensor, ...]:
        new = body_module(*prepared, *states)
        return (i + 1, *(t.clone() for t in new))  # loop outputs must not alias loop inputs

    init = block.initial_states(list(inputs))
    counter = torch.zeros((), dtype=torch.int64, device=init[0].device)
    out = while_loop(cond, body, (counter, *init))
    return list(out[1:])


RELAXATIONS = ("unroll", "loop")


class FullModel(nn.Module):
    """The whole ff-EBM: `(graph inputs...) -> distinct output tensors`, each analog relaxation unrolled
    (`relaxation="unroll"`: a loop-free graph, T copies of the step) or as a loop ("loop": ONNX Loop)."""

    def __init__(
        self,
        blocks: nn.ModuleDict,
        io: dict[str, tuple[list[str], list[str]]],
        inputs: Sequence[str],
        outputs: Sequence[str],
        steps: dict[str, int],
        relaxation: str = "unroll",
        preprocess: nn.Module | None = None,
    ):
        super().__init__()
        # the trained input transform (hybridc.data.preprocess.Preprocess): raw images -> first graph input
        self.preprocess = preprocess
        if relaxation not in RELAXATIONS:
            raise ValueError(f"relaxation must be one of {RELAXATIONS}, not {relaxation!r}")
        self.blocks = blocks
        self.io = dict(io)
        self.input_names = list(inputs)
        self.output_names = list(outputs)
        self.steps = dict(steps)
        self.relaxation = relaxation
        # plain dict, not submodules: exported-program modules refuse train()/eval(); their weights are
        # captured as constants of the model around them
        self.bodies: dict[str, nn.Module] = {}

    def prepare_loops(self, env: dict[str, torch.Tensor]) -> None:
        """Capture every analog block's loop body from example values (`env`: tensor name -> value); call
        before exporting a `relaxation="loop"` model."""
        for name, block in self.blocks.items():
            if isinstance(block, EnergyBlock):
                self.bodies[name] = loop_body(block, [env[i] for i in self.io[name][0]])

    def forward(self, *args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if self.preprocess is not None:
            args = (self.preprocess(args[0]), *args[1:])
        env = run_blocks(self.blocks, self.io, dict(zip(self.input_names, args)), self._run_block)
        return tuple(env[o] for o in self.output_names)

    def _run_block(self, name: str, block: nn.Module, xs: list[torch.Tensor]) -> Sequence[torch.Tensor]:
        """A digital block as it is; an analog block's relaxation unrolled (or as a Loop) for its export steps."""
        if not isinstance(block, EnergyBlock):
            return block(*xs)
        if self.relaxation == "loop":
            states = relax_loop(block, xs, self.steps[name], self.bodies[name])
        else:
            states = relax_unrolled(block, xs, self.steps[name])
        return [states[i] for i in block.output_idx]


def preprocess_samples(
    model: nn.Module, transform: Any, batch: int, trace_batch: int, gen: torch.Generator, full: bool
) -> tuple[Any, tuple[torch.Tensor, torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
    """Reference and tracing inputs made from raw images for a model trained behind `transform`
    (`hybridc.data.preprocess.InputTransform`): uniform [0, 1) images of the raw shape, sent through the
    transform, so that samples.npz holds both the raw images and the graph input they become (verify then
    runs the full model on the raw ones). Returns (manifest PreprocessInfo, (raw samples, raw tracing batch),
    sample graph inputs, tracing graph inputs)."""
    from hybridc.errors import HybridcError
    from hybridc.export.manifest import PreprocessInfo

    names = list(model.input_names)
    ref = {r.node: r for r in model.plan.graph_inputs}.get(names[0]) if names else None
    if (
        len(names) != 1
        or ref is None
        or not ref.shape
        or tuple(ref.shape[1:]) != tuple(transform.model_shape)
    ):
        got = tuple(ref.shape[1:]) if ref is not None and ref.shape else None
        raise HybridcError(
            f"the input transform ({transform.describe()}) produces inputs of shape "
            f"{transform.model_shape}, but the model takes {len(names)} input(s) of shape {got}"
        )
    pre = transform.module()
    raw_s = torch.rand((batch, *transform.raw_shape), generator=gen)
    raw_t = torch.rand((trace_batch, *transform.raw_shape), generator=gen)
    with torch.no_grad():
        info = PreprocessInfo(
            input=names[0],
            raw_input=f"{names[0]}_raw",
            raw_shape=list(transform.raw_shape),
            resize_to=list(transform.size) if transform.size is not None else None,
            resize_mode=transform.mode,
            mean=list(transform.mean),
            std=list(transform.std),
            applied_by_full_model=full,
        )
        return info, (raw_s, raw_t), [pre(raw_s)], [pre(raw_t)]


def full_model(
    model: FFEBM,
    outputs: list[str],
    relaxation: str,
    env: dict[str, torch.Tensor],
    preprocess: InputTransform | None = None,
) -> FullModel:
    """The `FullModel` of compiled ff-EBM `model` (in its export state): its blocks and graph inputs,
    `outputs` (the distinct output tensors), every analog block run for its solver's t1 steps, behind
    `preprocess`'s transform if given; a "loop" relaxation's bodies captured from example values `env`."""
    module = FullModel(
        model.blocks,
        {n: model.io(n) for n in model.blocks},
        model.input_names,
        outputs,
        {name: blk.solver.t1 for name, blk in model.analog_blocks.items()},
        relaxation,
        preprocess=preprocess.module() if preprocess is not None else None,
    )
    if relaxation == "loop":
        module.prepare_loops(env)
    return module


def write_full_model(
    module: FullModel,
    tensors: dict[str, TensorInfo],
    trace_inputs: list[torch.Tensor],
    root: Path,
    opset: int,
    pre_info: PreprocessInfo | None = None,
    raw_trace: torch.Tensor | None = None,
) -> FullModelInfo:
    """Write `module` as `model.onnx` under `root`, traced on `trace_inputs` (the graph inputs' batch axes as
    in `tensors`), and describe it. With `pre_info` (a model behind its input transform) it takes the raw
    images instead of the first graph input, traced on `raw_trace`."""
    inputs = list(module.input_names)
    specs = [tensors[i].shape for i in module.input_names]
    args = trace_inputs
    if pre_info is not None and raw_trace is not None:  # model.onnx takes the raw images
        inputs[0], specs[0] = pre_info.raw_input, ["batch", *pre_info.raw_shape]
        args = [raw_trace, *trace_inputs[1:]]
    export_onnx(
        module, args, root / FULL_FILE, inputs, module.output_names, specs, "the full model (--full)", opset
    )
    return FullModelInfo(
        onnx=FULL_FILE,
        relaxation=module.relaxation,
        steps=dict(module.steps),
        inputs=inputs,
        outputs=list(module.output_names),
    )
