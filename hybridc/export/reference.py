"""The reference values of an export: forward passes of the torch model (in its export state,
`hybridc.export.view`) on random inputs, which the files are traced on and checked against.

Two batches are run: the sample batch (stored in samples.npz for `hybridc verify`) and a trace batch of a
different size (what the ONNX files are traced on), so that every tensor's batch axis can be told from its
fixed axes (`tensor_table`). Where a block's compiled solver is not the exported fixed-step one, the sample
batch is also run with the compiled solvers, to measure how far the export is from the compiled model.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.fx as fx

from hybridc.errors import HybridcError
from hybridc.export.manifest import ExportError, TensorInfo, structure_names, structure_to_json
from hybridc.export.onnx_blocks import dim_spec

if TYPE_CHECKING:
    from hybridc.export.view import ExportView
    from hybridc.runtime.ffebm import FFEBM


def random_inputs(ff: FFEBM, batch: int, gen: torch.Generator) -> list[torch.Tensor]:
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


def run_env(ff: FFEBM, inputs: list[torch.Tensor]) -> dict[str, torch.Tensor]:
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


def output_structure(ff: FFEBM) -> Any:
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
    """The model's output tensors from a forward pass's values, in the structure's order."""
    return [env[n] for n in structure_names(structure)]


def _max_abs(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    """The largest absolute difference between corresponding tensors (0.0 for none or empty ones)."""
    return max(
        (float((x.double() - y.double()).abs().max()) if x.numel() else 0.0 for x, y in zip(a, b)),
        default=0.0,
    )


def reference_envs(
    model: FFEBM,
    view: ExportView,
    structure: Any,
    sample_inputs: list[torch.Tensor],
    trace_inputs: list[torch.Tensor],
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], float | None]:
    """Every tensor of a forward pass at the sample and the trace batch, and (where a block's compiled solver
    is not the exported fixed-step one) the max abs difference of the outputs between the two (else None)."""
    analog = model.analog_blocks
    env_s = run_env(model, sample_inputs)
    env_t = run_env(model, trace_inputs)
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
        reference = _flat_outputs(structure, run_env(model, sample_inputs))
    finally:
        for n, solver in fixed.items():
            analog[n].solver = solver
    return env_s, env_t, _max_abs(reference, _flat_outputs(structure, env_s))


def tensor_table(
    model: FFEBM,
    env_s: dict[str, torch.Tensor],
    env_t: dict[str, torch.Tensor],
    sample_batch: int,
    trace_batch: int,
) -> dict[str, TensorInfo]:
    """The manifest's tensors: each one's shape (the batch axis found by comparing the sample and the trace
    batch's values), dtype, and producer ('input' or the block that outputs it)."""
    producers = {n: "input" for n in model.input_names}
    for name in model.blocks:
        producers.update({o: name for o in model.io(name)[1]})
    tensors: dict[str, TensorInfo] = {}
    for name, value in env_s.items():
        tensors[name] = TensorInfo(
            shape=dim_spec(
                tuple(env_t[name].shape), tuple(value.shape), trace_batch, sample_batch, f"tensor {name}"
            ),
            dtype=str(value.dtype).replace("torch.", ""),
            producer=producers[name],
        )
    return tensors


__all__ = ["output_structure", "random_inputs", "reference_envs", "run_env", "tensor_table"]
