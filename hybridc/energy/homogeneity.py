"""Which values carry a positive factor t exactly: the op algebra behind moving the feedback guard's rescale
downstream (`hybridc.energy.compensation`; the conditions are argued in `hybridc.energy.contraction`'s
docstring).

A value carries t when it is positively homogeneous of degree 1 in the values that carry it: ReLU, leaky
ReLU, pooling, shape ops, zero padding, sums whose every operand carries it, products with values that do
not. `_degree` says so per node or raises `_Broken` with where and why the factor stops passing.
"""

from __future__ import annotations

from typing import Any

import torch.fx as fx
from torch import nn

from hybridc.energy.coupling import _LAYERS, _trainable
from hybridc.passes.ops import PURE_SHAPE_OPS

#: activations of a top neuron that commute with a positive factor: σ(t u) = t σ(u) for t > 0
_HOMOGENEOUS_NEURONS = frozenset({"identity", "relu", "leaky_relu"})
#: ops whose value carries the factor of their (single) data operand
_UNARY_HOMOGENEOUS = PURE_SHAPE_OPS | frozenset(
    {
        "adaptive_avg_pool",
        "adaptive_max_pool",
        "avg_pool",
        "contiguous",
        "dropout",
        "getitem",
        "leaky_relu",
        "max_pool",
        "mean",
        "neg",
        "pad",
        "pos",
        "prelu",
        "relu",
        "sum",
    }
)
_WHY_NOT: dict[str, str] = {
    "batch_norm": "a BatchNorm (affine with running or batch statistics: BN(t·y) ≠ t·BN(y))",
    "hardsigmoid": "a hard sigmoid clamp(a·u, 0, 1) (bounded: not positively homogeneous)",
    "relu6": "a ReLU6 (bounded: not positively homogeneous)",
    "hardtanh": "a hardtanh (bounded: not positively homogeneous)",
}


class _Broken(Exception):
    """The factor does not pass exactly (the message says where and why)."""


def _param_of(node: Any, gm: fx.GraphModule) -> tuple[str, nn.Module, str] | None:
    """(label, owner, attribute) of the parameter a weight operand reads, through transposes/views."""
    from hybridc.passes.ops import op_key

    while isinstance(node, fx.Node):
        if node.op == "get_attr":
            owner_name, _, attr = str(node.target).rpartition(".")
            owner = gm.get_submodule(owner_name) if owner_name else gm
            if not isinstance(_trainable(owner, attr), nn.Parameter):
                return None
            return str(node.target), owner, attr
        if node.op in ("call_function", "call_method") and op_key(node, gm) in PURE_SHAPE_OPS and node.args:
            node = node.args[0]
            continue
        return None
    return None


def _weight_operands(node: fx.Node, gm: fx.GraphModule) -> tuple[Any, tuple[str, nn.Module, str] | None, Any]:
    """(data operand, weight parameter or None, bias operand or None) of a weight op."""
    from hybridc.passes.ops import module_of, op_key

    mod = module_of(node, gm)
    if mod is not None:
        if isinstance(mod, (*_LAYERS, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
            return node.args[0], (str(node.target), mod, "weight"), (mod, "bias")
        return node.args[0], None, None
    args = list(node.args)
    key = op_key(node, gm)

    def layer(
        operand: Any,
    ) -> tuple[str, nn.Module, str] | None:  # labelled as its layer, like feedback_layers
        found = _param_of(operand, gm)
        return None if found is None else (found[0].removesuffix(".weight"), found[1], found[2])

    if key in ("linear", "conv", "conv_transpose"):
        bias = args[2] if len(args) > 2 else node.kwargs.get("bias")
        return args[0], layer(args[1] if len(args) > 1 else node.kwargs.get("weight")), bias
    if key == "matmul" and len(args) >= 2:
        right = layer(args[1])
        return (args[0], right, None) if right is not None else (args[1], layer(args[0]), None)
    if key == "addmm" and len(args) >= 3:
        right = layer(args[2])
        return (args[1], right, args[0]) if right is not None else (args[2], layer(args[1]), args[0])
    return None, None, None


def _degree(node: fx.Node, gm: fx.GraphModule, deg: dict[fx.Node, int], where: str) -> int:
    """1 if `node`'s value carries the factor t exactly (positively homogeneous in the values that carry it),
    0 if it does not depend on them; raises _Broken otherwise. Weight ops are the caller's."""
    from hybridc.passes.ops import op_key, value_inputs

    key = op_key(node, gm)
    ins = value_inputs(node)
    carried = [deg.get(a, 0) for a in ins]
    if not any(carried):
        return 0
    if key == "meta":  # shape queries: independent of the values
        return 0
    if key == "getitem":
        src = node.args[0]
        if isinstance(src, fx.Node) and op_key(src, gm) == "max_pool" and node.args[1] == 1:
            return 0  # argmax indices of a max-pool: scale invariant
        if sum(carried) != 1 or deg.get(src, 0) != 1:
            raise _Broken(f"{where}: an index of {node.name} carries the factor")
        return 1
    if key == "pad":
        value = node.kwargs.get("value", node.args[3] if len(node.args) > 3 else None)
        mod = gm.get_submodule(str(node.target)) if node.op == "call_module" else None
        value = getattr(mod, "value", value)
        if value not in (None, 0, 0.0):
            raise _Broken(f"{where}: {node.name} pads with {value} (a constant, not a factor of the input)")
    if key in _UNARY_HOMOGENEOUS:
        if sum(carried) != 1 or not ins or deg.get(ins[0], 0) != 1:
            raise _Broken(f"{where}: {node.name} ({key}) reads the factor through a non-data operand")
        return 1
    if key == "mul":
        if sum(carried) != 1:
            raise _Broken(f"{where}: {node.name} multiplies two values that carry the factor (degree 2)")
        return 1
    if key == "div":
        if deg.get(node.args[0], 0) != 1 or sum(carried) != 1:
            raise _Broken(f"{where}: {node.name} divides by a value that carries the factor")
        return 1
    if key in ("add", "sub", "cat", "stack"):
        scalars = [a for a in node.args if isinstance(a, (int, float)) and not isinstance(a, bool)]
        if key in ("add", "sub") and any(a != 0 for a in scalars):
            raise _Broken(f"{where}: {node.name} adds a constant to a value that carries the factor")
        if not all(deg.get(a, 0) == 1 for a in value_inputs(node)):
            raise _Broken(
                f"{where}: {node.name} ({key}) combines a value that carries the factor with one that "
                "does not (a skip, a bias, a parameter or another branch)"
            )
        return 1
    what = _WHY_NOT.get(key, f"{node.name} ({key}: not positively homogeneous)")
    raise _Broken(f"{where}: the path crosses {what}")
