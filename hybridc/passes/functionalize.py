"""Make a traced graph a pure dataflow graph: in-place ops rewritten out of place, assertions dropped.

The partitioner and dead-code elimination see only dataflow: an fx node nobody reads is dead. In-place
ops break that: `h.mul_(3.0)`, `h.relu_()`, `torch.relu_(h)`, `F.relu(h, inplace=True)` and `h += 1` change
`h` for every later reader, yet their nodes have no users (or, for `h += 1`, rebind only the Python name
`h`, not an alias `y = h` taken before). Left in the graph they are silently dropped, and the compiled model is
not the user's. `functionalize_inplace` rewrites each to its out-of-place op and redirects every later use of
the mutated value (through the Python-level alias too) to the new node. What cannot be rewritten exactly
is refused with an error naming the model's line: a mutation of a parameter or buffer (state that outlives
the call), or of a tensor that shares storage with another value read after the mutation (a view and its
base). A mutated graph input is functionalized: the compiled model returns what the original returns, but
does not modify the caller's tensor.

Side-effect-only nodes - `torch._assert`, `torch._check*`, fx's `_assert_is_none`, torch.export's
`aten._assert_tensor_metadata`, `_assert_scalar`, `_assert_async`, `sym_constrain_range(_for_size)` - check
properties of the example's shapes (timm's PatchEmbed `_assert(H == img_size)`, HF's shape checks) and
compute nothing: `drop_assertions` removes them, so they never become blocks (an empty digital block, with no
outputs, is a file onnxruntime cannot load). The compiled model does not repeat these checks.

One module over 400 lines on purpose: the rewrite and its refusals are one pass, and the tables of in-place
spellings and assertion ops it reads sit beside it.
"""

from __future__ import annotations

import builtins
import inspect
import operator
from collections.abc import Callable
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F  # noqa: N812 - the usual name
from torch import nn

from hybridc.errors import TraceError
from hybridc.passes.reach import ancestors

#: Names of ops that only check a condition (or constrain a symbolic size) and return nothing used.
ASSERTION_OPS = frozenset(
    {
        "_assert",
        "_assert_async",
        "_assert_scalar",
        "_assert_tensor_metadata",
        "_assert_is_none",
        "sym_constrain_range",
        "sym_constrain_range_for_size",
        "_functional_assert_async",
        "_functional_assert_scalar",
        "_functional_sym_constrain_range",
        "_functional_sym_constrain_range_for_size",
        "_check",
        "_check_is_size",
        "_check_with",
        "_check_value",
        "_check_index",
        "_check_type",
        "_check_not_implemented",
        "_check_tensor_all",
        "_check_tensor_all_with",
        "_print",
    }
)

_INPLACE_OPERATORS: dict[Callable[..., Any], Callable[..., Any]] = {
    operator.iadd: operator.add,
    operator.isub: operator.sub,
    operator.imul: operator.mul,
    operator.itruediv: operator.truediv,
    operator.ifloordiv: operator.floordiv,
    operator.imod: operator.mod,
    operator.ipow: operator.pow,
    operator.imatmul: operator.matmul,
    operator.iand: operator.and_,
    operator.ior: operator.or_,
    operator.ixor: operator.xor,
    operator.ilshift: operator.lshift,
    operator.irshift: operator.rshift,
}

#: In-place methods that change no values (autograd flags, sharing): the node is just its input.
_METADATA_INPLACE = frozenset({"requires_grad_", "share_memory_", "retain_grad"})

#: Ops whose result may share storage with their (first) input.
_VIEW_METHODS = frozenset(
    {
        "view",
        "view_as",
        "reshape",
        "reshape_as",
        "flatten",
        "unflatten",
        "transpose",
        "permute",
        "t",
        "squeeze",
        "unsqueeze",
        "expand",
        "expand_as",
        "narrow",
        "select",
        "unbind",
        "split",
        "chunk",
        "tensor_split",
        "split_with_sizes",
        "contiguous",
        "detach",
        "__getitem__",
        "as_strided",
        "diagonal",
        "unfold",
        "movedim",
        "moveaxis",
        "swapaxes",
        "swapdims",
        "view_as_real",
        "view_as_complex",
        "real",
        "imag",
    }
)
#: Conversions that return their input itself when nothing changes (same dtype and device).
_MAYBE_SELF_METHODS = frozenset(
    {"to", "type", "type_as", "float", "double", "half", "bfloat16", "cpu", "cuda"}
)
_VIEW_FUNCTIONS: frozenset[Any] = frozenset(
    {
        operator.getitem,
        builtins.getattr,
        torch.flatten,
        torch.reshape,
        torch.transpose,
        torch.permute,
        torch.squeeze,
        torch.unsqueeze,
        torch.narrow,
        torch.select,
        torch.unbind,
        torch.split,
        torch.chunk,
        torch.tensor_split,
        torch.t,
        torch.movedim,
        torch.moveaxis,
        torch.swapaxes,
        torch.swapdims,
        torch.diagonal,
        torch.detach,
        torch.as_strided,
        torch.view_as_real,
        torch.view_as_complex,
    }
)
_VIEW_MODULES = (
    nn.Flatten,
    nn.Unflatten,
    nn.Identity,
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.AlphaDropout,
)


def _op_name(target: Any) -> str:
    if isinstance(target, torch._ops.OpOverload):
        return target._opname
    if isinstance(target, torch._ops.OpOverloadPacket):
        return target._qualified_op_name.split("::")[-1]
    return getattr(target, "__name__", str(target))


def where(node: fx.Node) -> str:
    """The model's own source line that made `node` ("file:line: `code`"), or its name when unknown."""
    trace = node.meta.get("stack_trace") or ""
    lines = trace.strip().splitlines()
    for i in range(len(lines) - 1, -1, -1):
        line = lines[i].strip()
        if line.startswith('File "') and "/torch/" not in line and "/hybridc/" not in line:
            fname = line.split('"')[1]
            lineno = line.split("line ")[1].split(",")[0] if "line " in line else "?"
            code = lines[i + 1].strip() if i + 1 < len(lines) else ""
            return f"{fname}:{lineno}" + (f": `{code}`" if code else "")
    return f"node {node.name}"


# --------------------------------------------------------------------------------------------------
# assertions
# --------------------------------------------------------------------------------------------------


def is_assertion(node: fx.Node) -> bool:
    return node.op == "call_function" and _op_name(node.target) in ASSERTION_OPS


def drop_assertions(gm: fx.GraphModule) -> list[tuple[str, str]]:
    """Remove the side-effect-only checks (see the module docstring); return (name, where) of each."""
    removed: list[tuple[str, str]] = []
    changed = True
    while changed:
        changed = False
        for node in reversed(list(gm.graph.nodes)):
            if is_assertion(node) and not node.users:
                removed.append((node.name, where(node)))
                gm.graph.erase_node(node)
                changed = True
    return removed


# --------------------------------------------------------------------------------------------------
# in-place ops
# --------------------------------------------------------------------------------------------------


def _inplace_on_clone(tensor: torch.Tensor, method: str, *args: Any, **kwargs: Any) -> torch.Tensor:
    """`tensor.<method>(*args, **kwargs)` applied to a copy: the out-of-place form of an in-place method
    that has none (`zero_`, `fill_`, `copy_`, `normal_`, ...)."""
    out = tensor.clone()
    getattr(out, method)(*args, **kwargs)
    return out


def _is_tensor(node: Any) -> bool:
    return isinstance(node, fx.Node) and "hybridc_shape" in node.meta


def _inplace_flag_index(target: Any) -> int | None:
    """Position of an `inplace` parameter of a Python function (F.relu(x, True)), else None."""
    try:
        params = list(inspect.signature(target).parameters)
    except (TypeError, ValueError):
        return None
    return params.index("inplace") if "inplace" in params else None


def _functional_form(node: fx.Node, gm: fx.GraphModule) -> tuple[str, Any, tuple, dict] | None:
    """(op, target, args, kwargs) of the out-of-place op computing what in-place `node` writes into its
    first argument, or None when `node` does not mutate. Raises TraceError for a mutation it cannot rewrite."""
    args, kwargs = tuple(node.args), dict(node.kwargs)
    if node.op == "call_method":
        name = str(node.target)
        if not (name.endswith("_") and not name.startswith("_") and hasattr(torch.Tensor, name)):
            return None
        if hasattr(torch.Tensor, name[:-1]):
            return "call_method", name[:-1], args, kwargs
        return "call_function", _inplace_on_clone, (args[0], name, *args[1:]), kwargs
    if node.op == "call_function":
        target = node.target
        if target in _INPLACE_OPERATORS:
            return "call_function", _INPLACE_OPERATORS[target], args, kwargs
        if isinstance(target, torch._ops.OpOverload):
            schema = target._schema
            if not schema.is_mutable:
                return None
            name = target._opname
            packet = getattr(torch.ops.aten, name[:-1], None) if name.endswith("_") else None
            overload = getattr(packet, target._overloadname, None) if packet is not None else None
            if overload is None:
                raise TraceError(
                    f"{where(node)}: `{target}` writes into a tensor and has no out-of-place form "
                    "hybridc can substitute; rewrite it as an out-of-place op (y = f(x))"
                )
            return "call_function", overload, args, kwargs
        name = getattr(target, "__name__", "")
        if kwargs.get("inplace") is True:
            return "call_function", target, args, {**kwargs, "inplace": False}
        idx = _inplace_flag_index(target) if callable(target) else None
        if idx is not None and len(args) > idx and args[idx] is True:
            return "call_function", target, (*args[:idx], False, *args[idx + 1 :]), kwargs
        if name.endswith("_") and not name.startswith("_"):
            for namespace in (torch, F, torch.Tensor):
                if getattr(namespace, name, None) is target and hasattr(namespace, name[:-1]):
                    return "call_function", getattr(namespace, name[:-1]), args, kwargs
        return None
    if node.op == "call_module":
        module = gm.get_submodule(str(node.target))
        if getattr(module, "inplace", False) is True:
            return "call_module", node.target, args, kwargs
    return None


def _view_source(node: fx.Node, gm: fx.GraphModule) -> fx.Node | None:
    """The tensor whose storage `node`'s value may share, else None."""
    src = node.args[0] if node.args and isinstance(node.args[0], fx.Node) else None
    if src is None:
        return None
    if node.op == "call_method" and node.target in _VIEW_METHODS:
        return src
    if node.op == "call_method" and node.target in _MAYBE_SELF_METHODS:
        same = node.meta.get("hybridc_dtype") == src.meta.get("hybridc_dtype")
        return src if same else None
    if node.op == "call_function" and node.target in _VIEW_FUNCTIONS:
        return src
    if node.op == "call_module" and isinstance(gm.get_submodule(str(node.target)), _VIEW_MODULES):
        return src
    if node.op == "call_function" and isinstance(node.target, torch._ops.OpOverload):
        if any(a.alias_info is not None and not a.alias_info.is_write for a in node.target._schema.returns):
            return src
    return None


def functionalize_inplace(gm: fx.GraphModule) -> list[tuple[str, str]]:
    """Rewrite every in-place op of `gm` out of place (see the module docstring); return (new node name,
    what was rewritten) for each. Needs `hybridc_shape` metadata (one shape propagation) to tell tensors
    from Python numbers."""
    graph = gm.graph
    order = {n: float(i) for i, n in enumerate(graph.nodes)}
    base: dict[fx.Node, fx.Node] = {}
    rewritten: list[tuple[str, str]] = []
    inplace_modules: set[str] = set()
    for node in list(graph.nodes):
        if node.op in ("placeholder", "get_attr", "output"):
            base[node] = node
            continue
        if node.op == "call_method" and node.target in _METADATA_INPLACE:
            node.replace_all_uses_with(node.args[0])
            graph.erase_node(node)
            continue
        form = _functional_form(node, gm)
        target = node.args[0] if node.args else node.kwargs.get("input")
        if form is None or not _is_tensor(target):
            if form is not None and form[1] in _INPLACE_OPERATORS.values():  # `n += 1` on a Python number
                node.target = form[1]
            src = _view_source(node, gm)
            base[node] = base.get(src, src) if src is not None else node
            continue
        _check_rewritable(node, target, base, order, gm)
        op, new_target, args, kwargs = form
        with graph.inserting_before(node):
            new = graph.create_node(op, new_target, args, kwargs)
        new.meta = dict(node.meta)
        order[new] = order[node] - 0.5
        base[new] = new
        node.replace_all_uses_with(new)
        for user in list(target.users):
            if user is not new and order.get(user, -1.0) > order[node]:
                user.replace_input_with(target, new)
        graph.erase_node(node)
        rewritten.append(
            (
                new.name,
                f"in-place `{_op_name(node.target)}` on `{target.name}` ({where(node)}) "
                f"rewritten out of place as `{_op_name(new_target)}`; later reads of "
                f"`{target.name}` read its result",
            )
        )
        if op == "call_module":
            inplace_modules.add(str(new_target))
    for name in inplace_modules:  # every call of these modules was rewritten: run them out of place
        gm.get_submodule(name).inplace = False
    graph.lint()
    gm.recompile()
    return rewritten


def _check_rewritable(
    node: fx.Node,
    target: fx.Node,
    base: dict[fx.Node, fx.Node],
    order: dict[fx.Node, float],
    gm: fx.GraphModule,
) -> None:
    """Refuse a mutation whose effect reaches values other than `target` (see the module docstring)."""
    root = base.get(target, target)
    what = f"`{target.name}`" if target is root else f"`{target.name}` (a view of `{root.name}`)"
    if root.op == "get_attr":
        raise TraceError(
            f"{where(node)}: the forward writes into parameter/buffer `{root.target}` in place; "
            "hybridc compiles pure functions of the inputs: compute a new tensor instead"
        )
    aliases = [n for n, b in base.items() if b is root and n is not target and (_is_tensor(n) or n is root)]
    for alias in aliases:
        later = [u for u in alias.users if u is not node and order.get(u, -1.0) > order[node]]
        if later:
            raise TraceError(
                f"{where(node)}: an in-place op writes into {what}, which shares storage with `{alias.name}`, "
                f"read afterwards ({where(later[0])}); hybridc cannot follow a mutation through a view: write it "
                "out of place (e.g. `h = h * 3` instead of `h.mul_(3)`)"
            )


def mutating_nodes(gm: fx.GraphModule) -> list[fx.Node]:
    """Nodes that still write into a tensor (none after `functionalize_inplace`)."""
    found = []
    for node in gm.graph.nodes:
        if node.op == "call_function" and isinstance(node.target, torch._ops.OpOverload):
            if node.target._schema.is_mutable:
                found.append(node)
        elif node.op in ("call_method", "call_function", "call_module"):
            try:
                form = _functional_form(node, gm)
            except TraceError:
                form = ("refused", None, (), {})
            if form is not None and _is_tensor(node.args[0] if node.args else None):
                found.append(node)
    return found


def remove_dead_code(gm: fx.GraphModule) -> None:
    """Remove every node that does not reach the output, whatever fx thinks of its purity (assertions and
    in-place ops are handled before; anything else with no user computes nothing the model returns)."""
    graph = gm.graph
    out = next(n for n in graph.nodes if n.op == "output")
    live = ancestors([out])
    for node in reversed(list(graph.nodes)):
        if node not in live and node.op != "placeholder":
            graph.erase_node(node)
    graph.lint()
    gm.recompile()
