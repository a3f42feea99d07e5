"""The parameters a node reads: which tensor a functional weight op multiplies by, the layer name a weight
node gets in the plan, whether a norm's scale is all zero, and how many trainable parameters a block holds."""

from __future__ import annotations

import torch
import torch.fx as fx

from hybridc.passes.classify import NodeInfo
from hybridc.passes.node_meta import is_free
from hybridc.passes.reach import inputs, walk


def tensor_at(gm: fx.GraphModule, path: str) -> object:
    """The attribute `path` ("fc.weight") of gm, or None where a part is missing."""
    obj: object = gm
    for part in path.split("."):
        obj = getattr(obj, part, None)
    return obj


def parameter_operand(node: fx.Node, info: NodeInfo) -> fx.Node | None:
    """The operand of a functional weight op that carries its parameter: `weight` of linear/conv, the
    non-data factor of matmul/addmm (HF Conv1D: `addmm(bias, x, weight)`)."""
    if info.key in ("linear", "conv", "conv_transpose"):
        w = node.args[1] if len(node.args) > 1 else node.kwargs.get("weight")
        return w if isinstance(w, fx.Node) else None
    if info.key in ("matmul", "addmm"):
        operands = list(node.args[1:3]) if info.key == "addmm" else list(node.args[:2])
        for a in operands:
            if isinstance(a, fx.Node) and (is_free(a) or a.op == "get_attr"):
                return a
    return None


def parameter_path(start: fx.Node) -> str | None:
    """The get_attr target a free parameter expression reads (`w.t()` -> "fc.weight"): the nearest one,
    breadth first, first operand first."""
    found = next((x for x in walk([start], inputs, breadth_first=True) if x.op == "get_attr"), None)
    return str(found.target) if found is not None else None


def weight_tensor(gm: fx.GraphModule, node: fx.Node, info: NodeInfo) -> object:
    """The weight tensor a weight node multiplies by (a module's `weight`, or the functional op's operand)."""
    if node.op == "call_module":
        return getattr(gm.get_submodule(str(node.target)), "weight", None)
    operand = parameter_operand(node, info)
    path = parameter_path(operand) if operand is not None else None
    return tensor_at(gm, path) if path else None


def read_tensors(gm: fx.GraphModule, node: fx.Node) -> list[object]:
    """The parameters a non-free node reads: a module's own, or those its free operands are made from."""
    if node.op == "call_module":
        return list(gm.get_submodule(str(node.target)).parameters())
    if is_free(node):
        return []
    return [
        tensor_at(gm, p)
        for a in node.all_input_nodes
        if is_free(a) or a.op == "get_attr"
        for p in [parameter_path(a)]
        if p is not None
    ]


def weight_name(node: fx.Node, info: NodeInfo) -> str:
    """The layer's name in `weight_layers`: the module path, or the parameter's owner for functional ops."""
    if node.op == "call_module":
        return str(node.target)
    operand = parameter_operand(node, info)
    path = parameter_path(operand) if operand is not None else None
    if path is None:
        return node.name
    return path[: -len(".weight")] if path.endswith(".weight") else path


def zero_scale(gm: fx.GraphModule, node: fx.Node) -> bool:
    """Does this norm multiply by an all-zero affine weight (timm's zero-init last BN of a residual
    branch)?"""
    if node.op == "call_module":
        w = getattr(gm.get_submodule(str(node.target)), "weight", None)
    else:
        paths = [parameter_path(a) for a in node.all_input_nodes if a.op == "get_attr"]
        found = [tensor_at(gm, q) for q in paths if q and q.rsplit(".", 1)[-1] in ("weight", "gamma")]
        w = found[0] if found else None
    return isinstance(w, torch.Tensor) and w.numel() > 0 and not bool(w.detach().ne(0).any())


def param_count(gm: fx.GraphModule, nodes: list[fx.Node]) -> int:
    """Trainable parameters the nodes hold (modules' parameters, get_attr tensors), each counted once."""
    seen: set[int] = set()
    total = 0
    for n in nodes:
        tensors = []
        if n.op == "call_module":
            tensors = list(gm.get_submodule(str(n.target)).parameters())
        elif n.op == "get_attr":
            obj = gm
            for part in str(n.target).split("."):
                obj = getattr(obj, part)
            tensors = [obj] if hasattr(obj, "numel") else []
        for t in tensors:
            if id(t) not in seen and getattr(t, "requires_grad", False):
                seen.add(id(t))
                total += t.numel()
    return total
