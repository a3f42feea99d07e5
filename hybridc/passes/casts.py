"""Casts to a weight's dtype keep following that weight when the model changes precision.

A model that writes `conv(x.to(self.weight.dtype))` (HF DINOv2's patch embedding, ViT-style embeddings)
casts to whatever precision its weights have. torch.export records the cast with the dtype the weights had at
trace time (`aten.to.dtype(x, torch.float32)`), so after `compiled.double()` (gradcheck at float64) the conv
gets a float32 input and a float64 weight: `Input type (float) and bias type (double) should be the same`.
`follow_weight_dtype` rewrites such a cast - a floating cast whose value a weight op reads as its data input,
with that op's weight a parameter of exactly the cast's dtype - into `x.type_as(weight)`, which computes the
same value at trace time and follows the weight afterwards. Other casts (`h.to(torch.float32)` for a
numerically careful norm) are left as written: type promotion handles them at any precision.
"""

from __future__ import annotations

import torch
import torch.fx as fx

aten = torch.ops.aten


def _overloads(*names: str) -> list[torch._ops.OpOverload]:
    """Every overload of the named ATen ops (`conv_transpose1d.default`, `conv_transpose2d.input`, ...)."""
    return [getattr(getattr(aten, n), o) for n in names for o in getattr(aten, n).overloads()]


#: Weight ops and the positions of (data input, weight) in their ATen arguments.
_WEIGHT_ARGS: dict[object, tuple[int, int]] = {
    **{
        op: (0, 1)
        for op in _overloads(
            "linear",
            "conv1d",
            "conv2d",
            "conv3d",
            "convolution",
            "conv_transpose1d",
            "conv_transpose2d",
            "conv_transpose3d",
            "matmul",
            "mm",
        )
    },
    **{op: (1, 2) for op in _overloads("addmm")},
}


def _cast_dtype(node: fx.Node) -> torch.dtype | None:
    """The dtype a pure dtype cast converts to (`aten.to.dtype`, `aten._to_copy` with only a dtype), else None."""
    if node.op != "call_function":
        return None
    if node.target is aten.to.dtype and len(node.args) >= 2 and not node.kwargs:
        dtype = node.args[1]
    elif node.target is aten._to_copy.default and len(node.args) == 1 and set(node.kwargs) == {"dtype"}:
        dtype = node.kwargs["dtype"]
    else:
        return None
    return dtype if isinstance(dtype, torch.dtype) and dtype.is_floating_point else None


def _weight_read_by(user: fx.Node, cast: fx.Node, gm: fx.GraphModule) -> fx.Node | None:
    """The parameter node `user` multiplies `cast` with, when `user` is a weight op reading `cast` as data."""
    where = _WEIGHT_ARGS.get(user.target)
    if user.op != "call_function" or where is None or len(user.args) <= max(where):
        return None
    data, weight = (user.args[i] for i in where)
    if data is not cast or not isinstance(weight, fx.Node) or weight.op != "get_attr":
        return None
    try:
        gm.get_parameter(str(weight.target))
    except AttributeError:
        return None
    return weight


def follow_weight_dtype(gm: fx.GraphModule) -> list[str]:
    """Rewrite casts to a weight's dtype into `type_as(weight)` (see the module docstring); returns the
    rewritten nodes' names. The graph is recompiled when anything changed."""
    changed: list[str] = []
    for node in list(gm.graph.nodes):
        dtype = _cast_dtype(node)
        if dtype is None:
            continue
        weights = [w for u in node.users if (w := _weight_read_by(u, node, gm)) is not None]
        weights = [w for w in weights if gm.get_parameter(str(w.target)).dtype == dtype]
        if not weights:
            continue
        order = {n: i for i, n in enumerate(gm.graph.nodes)}
        if order[weights[0]] > order[node]:  # a get_attr has no inputs: reading it earlier is the same
            node.prepend(weights[0])
        node.target, node.args, node.kwargs = aten.type_as.default, (node.args[0], weights[0]), {}
        changed.append(node.name)
    if changed:
        gm.graph.lint()
        gm.recompile()
    return changed
