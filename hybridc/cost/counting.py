"""Counting one pass through a block: an fx interpreter that records every node's FLOPs (torch's
FlopCounterMode, plus element-count estimates for the ops it does not count) and value, and the geometry of
each weight op read off those values.

Why: the report's counts follow from the plan alone, by one batch-1 pass through each block's graph
(`hybridc.cost.report`'s docstring gives the rules); digital blocks are counted from their FLOPs and analog
synapse graphs from their weight ops (`hybridc.cost.analog`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.fx as fx

from hybridc.cost.schema import ReportError
from hybridc.passes.ops import PURE_SHAPE_OPS


class _Counter(fx.Interpreter):
    """Runs a GraphModule once, recording each node's FLOPs (torch FlopCounterMode) and output value."""

    def __init__(self, gm: fx.GraphModule):
        super().__init__(gm, garbage_collect_values=False)
        self.flops: dict[fx.Node, int] = {}
        self.values: dict[fx.Node, Any] = {}

    def run_node(self, n: fx.Node) -> Any:
        from torch.utils.flop_counter import FlopCounterMode

        if n.op in ("placeholder", "output", "get_attr"):
            out = super().run_node(n)
            self.flops[n] = 0
        else:
            with FlopCounterMode(display=False, custom_mapping=_extra_flop_formulas()) as fc:
                out = super().run_node(n)
            self.flops[n] = int(fc.get_total_flops())
        self.values[n] = out
        return out


def _extra_flop_formulas() -> dict:
    """FLOP formulas torch's FlopCounterMode lacks: the CPU flash-attention kernel that
    F.scaled_dot_product_attention (and nn.MultiheadAttention) dispatch to on CPU."""
    from torch.utils.flop_counter import sdpa_flop_count

    def cpu_sdpa(
        query_shape: Any, key_shape: Any, value_shape: Any, *args: Any, out_shape: Any = None, **kwargs: Any
    ) -> int:
        return sdpa_flop_count(query_shape, key_shape, value_shape)

    ops = [getattr(torch.ops.aten, name, None) for name in ("_scaled_dot_product_flash_attention_for_cpu",)]
    return {op: cpu_sdpa for op in ops if op is not None}


def _run_counter(gm: fx.GraphModule, args: Sequence[torch.Tensor]) -> _Counter:
    counter = _Counter(gm)
    # grad mode on (nothing is backpropagated): with trainable parameters it turns off the fused inference
    # fast paths (e.g. nn.MultiheadAttention's native kernel) that FlopCounterMode cannot see into
    with torch.enable_grad():
        counter.run(*args)
    return counter


_ZERO_COST = PURE_SHAPE_OPS | frozenset(
    {
        "cat",
        "clone",
        "contiguous",
        "detach",
        "dropout",
        "float",
        "get_attr",
        "getitem",
        "meta",
        "output",
        "placeholder",
        "pos",
        "repeat",
        "reshape",
        "size",
        "stack",
        "to",
        "type_as",
    }
)
_PER_ELEMENT = {
    "batch_norm": 2,
    "layer_norm": 7,
    "group_norm": 7,
    "instance_norm": 7,
    "rms_norm": 4,
    "local_response_norm": 7,
    "softmax": 5,
    "sigmoid": 4,
    "tanh": 4,
    "gelu": 8,
    "silu": 5,
    "mish": 8,
    "softplus": 4,
    "elu": 4,
    "celu": 4,
    "selu": 4,
    "hardswish": 3,
    "logsigmoid": 4,
}
_POOLS = frozenset({"max_pool", "avg_pool", "adaptive_avg_pool", "adaptive_max_pool", "mean"})


def _tensors(value: Any) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in _tensors(v)]
    return []


def _elementwise_flops(node: fx.Node, key: str, counter: _Counter) -> int:
    """FLOPs of an op FlopCounterMode does not count (norms, activations, pooling, adds), estimated from
    element counts: `_PER_ELEMENT` FLOPs per output element (1 by default), pools one per input element."""
    if key in _ZERO_COST:
        return 0
    out = sum(t.numel() for t in _tensors(counter.values.get(node)) if t.is_floating_point())
    if key in _POOLS:
        ins = sum(t.numel() for a in node.all_input_nodes for t in _tensors(counter.values.get(a)))
        return max(out, ins)
    return _PER_ELEMENT.get(key, 1) * out


def _node_flops(gm: fx.GraphModule, counter: _Counter) -> int:
    from hybridc.passes.ops import op_key

    total = 0
    for node in gm.graph.nodes:
        f = counter.flops.get(node, 0)
        if f == 0 and node.op not in ("placeholder", "output", "get_attr"):
            f = _elementwise_flops(node, op_key(node, gm), counter)
        total += f
    return total


def _dependencies(gm: fx.GraphModule) -> dict[fx.Node, set[fx.Node]]:
    """For every node, the placeholders its value depends on."""
    deps: dict[fx.Node, set[fx.Node]] = {}
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            deps[node] = {node}
        else:
            deps[node] = (
                set().union(*(deps[a] for a in node.all_input_nodes)) if node.all_input_nodes else set()
            )
    return deps


def _weight_layer(
    node: fx.Node,
    gm: fx.GraphModule,
    key: str,
    counter: _Counter,
    deps: dict[fx.Node, set],
) -> tuple[fx.Node, int, int, int, int] | None:
    """(data operand, rows, cols, groups, forward MACs) of a weight op, or None if it has no weight."""
    vals = counter.values
    args = list(node.args)
    mod = gm.get_submodule(str(node.target)) if node.op == "call_module" else None
    out = _tensors(vals.get(node))
    out_numel = out[0].numel() if out else 0
    macs = counter.flops.get(node, 0) // 2
    if key in ("linear", "conv", "conv_transpose"):
        data = args[0] if args else node.kwargs.get("input")
        w = (
            getattr(mod, "weight", None)
            if mod is not None
            else (vals.get(args[1]) if len(args) > 1 and isinstance(args[1], fx.Node) else None)
        )
        if w is None and isinstance(node.kwargs.get("weight"), fx.Node):
            w = vals.get(node.kwargs["weight"])
        if not isinstance(w, torch.Tensor) or not isinstance(data, fx.Node):
            return None
        x = vals.get(data)
        if key == "linear":
            rows, cols, groups = w.shape[-1], w.numel() // w.shape[-1], 1
            macs = macs or out_numel * rows
        elif key == "conv":
            c_in = x.shape[1] if isinstance(x, torch.Tensor) and x.dim() > 1 else w.shape[1]
            groups = max(1, c_in // w.shape[1])
            rows, cols = w.shape[1] * math.prod(w.shape[2:]), w.shape[0] // groups
            macs = macs or out_numel * rows
        else:
            groups = int(getattr(mod, "groups", 1) or 1)
            rows, cols = w.shape[0] // groups, w.shape[1] * math.prod(w.shape[2:])
            macs = macs or (x.numel() if isinstance(x, torch.Tensor) else 0) * cols
        return data, int(rows), int(cols), int(groups), int(macs)
    if key in ("matmul", "addmm"):
        operands = args[1:3] if key == "addmm" else args[:2]
        if len(operands) != 2:
            return None
        left, right = operands
        data_left = isinstance(left, fx.Node) and bool(deps.get(left))
        data, weight = (left, right) if data_left else (right, left)
        x = vals.get(data) if isinstance(data, fx.Node) else None
        w = vals.get(weight) if isinstance(weight, fx.Node) else None
        if not isinstance(x, torch.Tensor) or not isinstance(w, torch.Tensor) or w.dim() < 1:
            return None
        rows = x.shape[-1] if data_left else (x.shape[-2] if x.dim() > 1 else x.shape[0])
        cols = max(1, w.numel() // max(1, rows))
        macs = macs or out_numel * rows
        return data, int(rows), int(cols), 1, int(macs)
    return None


def _example(shape: Sequence[int] | None, dtype: str | None) -> torch.Tensor:
    """A batch-1 zero tensor of a recorded (batch-including) shape and dtype name: a counting pass's input."""
    if not shape:
        raise ReportError("a block input has no recorded shape; re-run partition")
    dt = getattr(torch, dtype) if dtype and hasattr(torch, dtype) else torch.float32
    return torch.zeros(1, *shape[1:], dtype=dt)
