"""Digital blocks (and the modules built around analog blocks) to ONNX.

Exporter choice. Both of torch's ONNX exporters were tried on the blocks hybridc produces:

- the TorchScript exporter (`torch.onnx.export(..., dynamo=False)`) is fast, but the zoo transformer is
  captured by torch.export, so its digital blocks compute view shapes from `aten.sym_size` calls; the
  TorchScript tracer sees plain ints there and bakes the example batch into every reshape (onnxruntime then
  fails on any other batch size). It also has no conversion for the ATen pooling backward ops that an
  analog block's transposed pass uses.
- the dynamo exporter (torch.export + onnxscript) keeps the batch symbolic through every shape computation,
  handles fx GraphModules with ATen or torch-level ops alike, and reports unsupported ops precisely.

So everything goes through torch.export (non-strict) and the onnxscript translator. Two additions:
the ATen pooling backward ops (adaptive/average pooling transposes) get exact decompositions into matrix
products (pooling is separable per spatial axis; `hybridc.export.pooling_decompositions`), and the torchlib
registry is built once per process (building it is most of the cost of a small export).
"""

from __future__ import annotations

import contextlib
import inspect
import itertools
import logging
import re
import warnings
from collections.abc import Iterator, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hybridc.errors import UnsupportedOpError
from hybridc.export.manifest import Dim
from hybridc.export.pooling_decompositions import DECOMPOSITIONS

DEFAULT_OPSET = 18


# --------------------------------------------------------------------------------------------------
# Dynamic shapes
# --------------------------------------------------------------------------------------------------


def dim_spec(
    example: Sequence[int],
    sample: Sequence[int],
    example_batch: int,
    sample_batch: int,
    name: str = "a tensor",
) -> list[Dim]:
    """The manifest shape of a tensor seen at two batch sizes: dims that scale with the batch become
    'batch' (or 'k*batch'); the others are fixed. A dim that changes in any other way is an error."""
    if len(example) != len(sample):
        raise UnsupportedOpError(
            f"{name} changes rank with the batch size ({list(example)} vs {list(sample)})"
        )
    out: list[Dim] = []
    for a, b in zip(example, sample):
        if a == b:
            out.append(int(a))
        elif a * sample_batch == b * example_batch and a % example_batch == 0:
            k = a // example_batch
            out.append("batch" if k == 1 else f"{k}*batch")
        else:
            raise UnsupportedOpError(
                f"{name}'s shape changes with the batch size in a way export cannot describe "
                f"({list(example)} at batch {example_batch}, {list(sample)} at batch {sample_batch})"
            )
    return out


def is_dynamic(d: Dim) -> bool:
    return isinstance(d, str)


def _dynamic_shapes(module: nn.Module, specs: Sequence[Sequence[Dim]]) -> Any:
    per_input = tuple(
        {i: torch.export.Dim.AUTO for i, d in enumerate(s) if is_dynamic(d)} or None for s in specs
    )
    params = inspect.signature(module.forward).parameters.values()
    if any(p.kind is p.VAR_POSITIONAL for p in params):
        return (per_input,)
    return per_input


# --------------------------------------------------------------------------------------------------
# The exporter
# --------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def quiet_export() -> Iterator[None]:
    """Silence torch.export / torch.onnx chatter (progress prints, warnings); errors still propagate."""
    loggers = [
        logging.getLogger(n)
        for n in (
            "torch.onnx",
            "torch.export",
            "torch._export",
            "torch._dynamo",
            "torch.fx.experimental.symbolic_shapes",
            "onnxscript",
        )
    ]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, lv in zip(loggers, levels):
            lg.setLevel(lv)


@lru_cache(maxsize=4)
def _registry(opset: int) -> Any:
    from torch.onnx._internal.exporter import _constants, _registration

    return _registration.ONNXRegistry().from_torchlib(opset_version=max(opset, _constants.TORCHLIB_OPSET))


def _convert(program: torch.export.ExportedProgram, opset: int) -> Any:
    """ExportedProgram -> ONNXProgram, through the cached-registry path when this torch has it."""
    try:
        from torch.onnx._internal.exporter import _core

        registry = _registry(opset)
    except (ImportError, AttributeError, TypeError):  # private API moved: use the public one
        return torch.onnx.export(program, (), dynamo=True, opset_version=opset, verbose=False)
    return _core.export(program, registry=registry, verbose=False, optimize=True, opset_version=opset)


def name_io(model: Any, input_names: Sequence[str], output_names: Sequence[str]) -> None:
    """Give an ONNX IR model's inputs and outputs the manifest's tensor names.

    Internal values that happen to carry one of those names (the exporter names values after fx nodes, and
    a block's output tensor may share its name with a node inside the unrolled model) are renamed first,
    and an output that is also an input or another output gets its own Identity: names stay unique.
    """
    import onnx_ir as ir

    g = model.graph
    if len(g.inputs) != len(input_names) or len(g.outputs) != len(output_names):
        raise UnsupportedOpError(
            f"the exported graph has {len(g.inputs)} inputs and {len(g.outputs)} outputs, "
            f"expected {len(input_names)} and {len(output_names)}"
        )
    reserved = set(input_names) | set(output_names)
    for i, v in enumerate(g.outputs):
        if v in g.inputs or v in list(g.outputs)[:i]:
            node = ir.Node("", "Identity", inputs=[v], num_outputs=1)
            g.append(node)
            g.outputs[i] = node.outputs[0]
    io = [*g.inputs, *g.outputs]
    counter = itertools.count()
    for v in io:
        v.name = f"__hybridc_io_{next(counter)}"
    for node in g.all_nodes():
        for v in node.outputs:
            if v.name in reserved:
                v.name = f"{v.name}__{next(counter)}"
    clash = reserved & set(g.initializers)
    if clash:
        raise UnsupportedOpError(
            f"tensor name(s) {sorted(clash)} collide with weight names of the ONNX graph"
        )
    for v, name in zip(g.inputs, input_names):
        v.name = name
    for v, name in zip(g.outputs, output_names):
        v.name = name


_OP_RE = re.compile(r"OpOverload\(op='([^']+)', overload='([^']+)'\)")
_NODE_RE = re.compile(r"translating node %(\w+)")
_TARGET_RE = re.compile(r"target=([\w.:]+)")


def _unsupported(what: str, exc: BaseException, stage: str) -> UnsupportedOpError:
    """One clear error naming the op (and exported node) the ONNX exporter could not handle."""
    chain: list[BaseException] = []
    e: BaseException | None = exc
    while e is not None and e not in chain:
        chain.append(e)
        e = e.__cause__ or e.__context__
    text = "\n".join(f"{type(c).__name__}: {c}" for c in chain)
    op = _OP_RE.search(text)
    node = _NODE_RE.search(text)
    if op:
        name = f"{op.group(1)}.{op.group(2)}"
        where = f" (exported node %{node.group(1)})" if node else ""
        return UnsupportedOpError(
            f"{what}: the ONNX exporter has no conversion for op {name}{where}. Keep that op out of the "
            f"model, replace it with standard torch ops, or register an ONNX translation for it."
        )
    if node:
        target = _TARGET_RE.search(text[text.find(node.group(0)) :])
        name = target.group(1) if target else "?"
        return UnsupportedOpError(
            f"{what}: the ONNX exporter failed on node %{node.group(1)} (op {name}): {_last_line(chain[-1])}"
        )
    return UnsupportedOpError(f"{what}: {stage} failed: {type(chain[-1]).__name__}: {_last_line(chain[-1])}")


def _last_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return lines[0][:300] if lines else type(exc).__name__


def export_onnx(
    module: nn.Module,
    args: Sequence[torch.Tensor],
    path: Path,
    input_names: list[str],
    output_names: list[str],
    specs: Sequence[Sequence[Dim]],
    what: str,
    opset: int = DEFAULT_OPSET,
) -> None:
    """Export `module(*args) -> tuple` to `path` with the dims marked dynamic in `specs` symbolic.

    `what` names the block in errors ("digital block digital2"). Raises UnsupportedOpError naming the op
    the exporter cannot convert.
    """
    module = module.eval()
    with quiet_export(), torch.no_grad():
        try:
            program = torch.export.export(
                module, tuple(args), dynamic_shapes=_dynamic_shapes(module, specs), strict=False
            )
        except UnsupportedOpError:
            raise
        except Exception as exc:
            raise _unsupported(what, exc, "torch.export") from None
        _check_batch_kept(program, specs, input_names, what)
        present = {
            n.target
            for gm in program.graph_module.modules()
            if isinstance(gm, torch.fx.GraphModule)
            for n in gm.graph.nodes
            if n.op == "call_function"
        }  # loop bodies too
        table = {op: fn for op, fn in DECOMPOSITIONS.items() if op in present}
        try:
            if table:
                program = program.run_decompositions(table)
            prog = _convert(program, opset)
            name_io(prog.model, input_names, output_names)
            prog.save(str(path))
        except Exception as exc:
            raise _unsupported(what, exc, "ONNX conversion") from None


def _check_batch_kept(
    program: torch.export.ExportedProgram,
    specs: Sequence[Sequence[Dim]],
    input_names: Sequence[str],
    what: str,
) -> None:
    """Refuse an export in which torch.export turned a batch axis into a constant (the block's code then
    depends on the batch size, and the ONNX file would only run at the example batch)."""
    user = set(program.graph_signature.user_inputs)
    placeholders = [n for n in program.graph.nodes if n.op == "placeholder" and n.name in user]
    for node, spec, name in zip(placeholders, specs, input_names):
        val = node.meta.get("val")
        if val is None:
            continue
        for i, d in enumerate(spec):
            if is_dynamic(d) and not isinstance(val.shape[i], torch.SymInt):
                raise UnsupportedOpError(
                    f"{what}: the batch axis of input {name} (dim {i}) became the constant {val.shape[i]} in "
                    "torch.export: the block's code depends on the batch size (e.g. a reshape to a literal "
                    "batch), so its ONNX file could not take other batch sizes"
                )


def export_digital_block(
    gm: nn.Module,
    name: str,
    args: Sequence[torch.Tensor],
    input_names: list[str],
    output_names: list[str],
    specs: Sequence[Sequence[Dim]],
    path: Path,
    opset: int = DEFAULT_OPSET,
) -> None:
    """A digital block (an fx GraphModule `forward(*inputs) -> tuple(outputs)`) in eval mode to ONNX."""
    export_onnx(gm, args, path, input_names, output_names, specs, f"digital block {name}", opset)


def onnx_session(path: Path | str) -> Any:
    """An onnxruntime CPU session (one thread per op is plenty for verification-sized batches)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
