"""An analog block's energy specification for the manifest: neurons, synapses (paths of weight ops from a
source to a neuron, naming the weight tensors), and the weights themselves (a safetensors file).

The synapse graph of a DHN block maps (inputs..., states...) to pre-activations u_j; every u_j is affine
in the placeholders, so it is a sum over paths from a source placeholder (block input or neuron state) to
u_j. Each path is one synapse f_ij, listed op by op with its static attributes.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.fx as fx

from hybridc.energy.dhn import DHNBlock, _neuron_depths
from hybridc.errors import UnsupportedOpError
from hybridc.export.manifest import NeuronInfo, OpInfo, SynapseInfo
from hybridc.passes.reach import ancestors

#: more paths than this means the synapse graph is not a sum of simple paths worth listing
MAX_PATHS = 4096


def state_input_name(neuron: str) -> str:
    """Input name of neuron `neuron`'s state in a step ONNX file."""
    return f"state.{neuron}"


def state_output_name(neuron: str) -> str:
    """Output name of neuron `neuron`'s next state in a step ONNX file."""
    return f"next.{neuron}"


def block_tensors(block: DHNBlock) -> dict[str, torch.Tensor]:
    """Every tensor the synapse graph reads (parameters, buffers, constant attributes), by qualified name."""
    gm = block.synapses
    tensors: dict[str, torch.Tensor] = {}
    for name, t in [*gm.named_parameters(), *gm.named_buffers()]:
        tensors[name] = t
    for node in gm.graph.nodes:
        if node.op == "get_attr" and node.target not in tensors:
            value = _resolve(gm, node.target)
            if isinstance(value, torch.Tensor):
                tensors[node.target] = value
    return tensors


def save_weights(block: DHNBlock, path: Path) -> list[str]:
    """The synapse weights as safetensors (float32, contiguous, unshared); returns the tensor names."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().to(torch.float32).contiguous().clone() for k, v in block_tensors(block).items()}
    save_file(tensors, str(path), metadata={"block": block.name, "format": "hybridc-dhn-weights"})
    return sorted(tensors)


def _resolve(gm: fx.GraphModule, target: str) -> Any:
    obj: Any = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _jsonable(v: Any) -> Any:
    """Static argument values as JSON (nodes by name, dtypes/enums as strings); None if not representable."""
    if isinstance(v, fx.Node):
        return f"%{v.name}"
    if isinstance(v, (bool, int, float, str)) or v is None:
        return v
    if isinstance(v, (tuple, list, torch.Size)):
        return [_jsonable(x) for x in v]
    if isinstance(v, (torch.dtype, torch.device, torch.memory_format, torch.layout)):
        return str(v)
    return repr(v)


def _op_name(node: fx.Node, gm: fx.GraphModule) -> tuple[str, str | None]:
    if node.op == "call_module":
        return type(gm.get_submodule(node.target)).__name__, str(node.target)
    if node.op == "call_method":
        return f"Tensor.{node.target}", None
    target = node.target
    if isinstance(target, torch._ops.OpOverload):
        return str(target), None
    module = getattr(target, "__module__", None) or ""
    module = {
        "_operator": "operator",
        "torch._C._nn": "torch.nn.functional",
        "torch._C._VariableFunctions": "torch",
    }.get(module, module)
    return f"{module}.{getattr(target, '__name__', repr(target))}".lstrip("."), None


def _arg_names(node: fx.Node) -> list[str]:
    target = node.target
    if isinstance(target, torch._ops.OpOverload):
        return [a.name for a in target._schema.arguments]
    return []


def _attr_sources(node: fx.Node) -> list[str]:
    """get_attr targets a constant (placeholder-free) expression reads, e.g. `w.t()` -> [w]."""
    return sorted(str(n.target) for n in ancestors([node]) if n.op == "get_attr")


def _describe(node: fx.Node, gm: fx.GraphModule, data: set[fx.Node]) -> OpInfo:
    op, module = _op_name(node, gm)
    weights: dict[str, str] = {}
    attrs: dict[str, Any] = {}
    if node.op == "call_module":
        mod = gm.get_submodule(node.target)
        for pname, _ in [*mod.named_parameters(), *mod.named_buffers()]:
            weights[pname] = f"{node.target}.{pname}"
        for key, value in vars(mod).items():
            if key.startswith("_") or key == "training":
                continue
            j = _jsonable(value)
            if not (isinstance(j, str) and j.startswith("<")):
                attrs[key] = j
    else:
        names = _arg_names(node)
        items = [(names[i] if i < len(names) else f"arg{i}", a) for i, a in enumerate(node.args)]
        items += list(node.kwargs.items())
        for role, a in items:
            if isinstance(a, fx.Node) and a in data:
                continue
            if isinstance(a, fx.Node):
                srcs = _attr_sources(a)
                if len(srcs) == 1:
                    weights[role] = srcs[0]
                elif srcs:
                    for i, s in enumerate(srcs):
                        weights[f"{role}{i}"] = s
                else:
                    attrs[role] = f"%{a.name}"
            else:
                attrs[role] = _jsonable(a)
    return OpInfo(node=node.name, op=op, module=module, weights=weights, attrs=attrs)


def describe_synapses(block: DHNBlock, input_names: Sequence[str]) -> list[SynapseInfo]:
    """Every path from a source (block input or neuron state) to a neuron's pre-activation."""
    gm = block.synapses
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    sources: dict[fx.Node, tuple[str, str]] = {}
    for i, p in enumerate(placeholders):
        if i < block.n_inputs:
            sources[p] = (input_names[i], "input")
        else:
            sources[p] = (block.neuron_names[i - block.n_inputs], "neuron")
    data: set[fx.Node] = set(placeholders)
    for n in gm.graph.nodes:
        if n.op in ("call_module", "call_function", "call_method") and any(
            a in data for a in n.all_input_nodes
        ):
            if (
                n.op == "call_method"
                and n.target in ("size", "dim")
                or (isinstance(n.target, torch._ops.OpOverload) and "sym_size" in str(n.target))
            ):
                continue  # shape queries carry no data
            data.add(n)
    out_node = next(n for n in gm.graph.nodes if n.op == "output")
    pre = list(out_node.args[0])
    described: dict[fx.Node, OpInfo] = {}
    memo: dict[fx.Node, list[tuple[fx.Node, list[fx.Node]]]] = {}

    def paths(node: fx.Node) -> list[tuple[fx.Node, list[fx.Node]]]:
        """(source placeholder, ops from it up to and including `node`) for every path into `node`."""
        if node in memo:
            return memo[node]
        if node in sources:
            result: list[tuple[fx.Node, list[fx.Node]]] = [(node, [])]
        else:
            result = []
            for a in dict.fromkeys(x for x in node.all_input_nodes if x in data):
                for src, ops in paths(a):
                    result.append((src, [*ops, node]))
                    if len(result) > MAX_PATHS:
                        raise UnsupportedOpError(
                            f"analog block {block.name}: more than {MAX_PATHS} synapse paths; "
                            "the synapse graph is too entangled to list"
                        )
        memo[node] = result
        return result

    synapses: list[SynapseInfo] = []
    for j, u in enumerate(pre):
        if not isinstance(u, fx.Node) or u not in data:
            continue
        for src, ops in paths(u):
            for op in ops:
                if op not in described:
                    described[op] = _describe(op, gm, data)
            name, kind = sources[src]
            synapses.append(
                SynapseInfo(
                    target=block.neuron_names[j],
                    source=name,
                    source_kind=kind,  # type: ignore[arg-type]
                    path=[described[o] for o in ops],
                )
            )
    return synapses


def describe_neurons(block: DHNBlock, batch_multiples: list[int] | None = None) -> list[NeuronInfo]:
    """The manifest's neurons of `block`; `batch_multiples[j]`: rows of state j per sample (default 1)."""
    depths = _neuron_depths(block.synapses, block.n_inputs)
    out = []
    for j, name in enumerate(block.neuron_names):
        shape = block.neuron_shapes[j]
        if shape is None:
            raise UnsupportedOpError(
                f"analog block {block.name}: shape of neuron {name} unknown; re-run partition"
            )
        out.append(
            NeuronInfo(
                name=name,
                shape=list(shape),
                activation=block.activation_specs[j],
                batch_multiple=batch_multiples[j] if batch_multiples else 1,
                layer=depths[j],
                parity=depths[j] % 2,
                output=j in block.output_idx,
                state_input=state_input_name(name),
                state_output=state_output_name(name),
            )
        )
    return out
