"""Classify every node of a traced graph: weight / activation / linear / norm / pool / digital / free.

`free` nodes compute no data: parameter expressions (`w.t()`), constants and shape queries (`x.size(0)`).
They are recomputed wherever they are needed, so they never tie blocks together.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.fx as fx

from hybridc.passes.composite import find_composites
from hybridc.passes.ops import (
    ACTIVATIONS,
    LINEAR_POOLS,
    NORMS,
    PURE_SHAPE_OPS,
    SHAPE_OPS,
    TUPLE_SHAPE_OPS,
    op_key,
)
from hybridc.passes.reach import inputs, users, walk

#: `part`: an interior node of a composite activation (an element-wise function of one value written out
#: with several ops, e.g. GELU as 0.5·x·(1 + tanh(...))); it is computed with the composite's last node.
KINDS = ("free", "weight", "activation", "part", "linear", "norm", "pool", "digital")


@dataclass
class NodeInfo:
    """What a node is, for the partitioner."""

    kind: str
    key: str
    reason: str = ""  # why a node is digital
    attention: str = ""  # non-empty: the node belongs to this attention module/region
    source: fx.Node | None = None  # a composite activation's pre-activation (its single data source)
    composite: str = ""  # a composite activation: what it was recognised as, for the plan's decisions


def _is_tensor(node: fx.Node) -> bool:
    return "hybridc_shape" in node.meta


def _data_nodes(gm: fx.GraphModule) -> set[fx.Node]:
    """Nodes that depend on a graph input and carry tensors (or tuples of tensors)."""
    data: set[fx.Node] = set()
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            data.add(node)
        elif node.op not in ("get_attr", "output"):
            if any(a in data for a in node.all_input_nodes) and op_key(node, gm) != "meta":
                data.add(node)
    return data


def free_nodes(gm: fx.GraphModule) -> set[fx.Node]:
    """Compute nodes that carry no data (parameter expressions, constants, shape queries)."""
    data = _data_nodes(gm)
    return {n for n in gm.graph.nodes if n.op not in ("placeholder", "output") and n not in data}


def _weight_status(node: fx.Node, key: str, data: set[fx.Node]) -> str | None:
    """'weight' if this op multiplies data by parameters, 'digital:<reason>' if data by data, else None."""
    if key in ("linear", "conv", "conv_transpose"):
        if node.op == "call_module":
            return "weight"
        w = node.args[1] if len(node.args) > 1 else node.kwargs.get("weight")
        if isinstance(w, fx.Node) and w not in data:
            return "weight"
        return "digital:weight computed from activations"
    if key in ("matmul", "addmm"):
        operands = list(node.args[1:3]) if key == "addmm" else list(node.args[:2])
        flags = [isinstance(a, fx.Node) and a in data for a in operands]
        if sum(flags) == 1:
            return "weight"
        if sum(flags) == 2:
            return "digital:activation x activation product (attention-like)"
    if key == "einsum":
        return "digital:einsum"
    return None


def _attention_regions(
    gm: fx.GraphModule, keys: dict[fx.Node, str], data: set[fx.Node], weights: set[fx.Node]
) -> dict[fx.Node, str]:
    """Nodes belonging to attention: everything owned by an nn.MultiheadAttention (fx leaf or export
    module stack) plus, for attention written from scratch, its core (softmax/SDPA and activation x
    activation products) and the projections linked to the core through pure shape ops."""
    region: dict[fx.Node, str] = {}
    mha_owners: list[str] = []  # a list in graph order, not a set: the plan must not depend on hashing
    for node in gm.graph.nodes:
        stack = node.meta.get("nn_module_stack") or {}
        owners = [path for path, typ in stack.values() if "MultiheadAttention" in str(typ)]
        if keys.get(node) == "attention":
            owners.append(
                str(node.target) if node.op == "call_module" else node.meta.get("hybridc_module", "")
            )
        mha_owners.extend(m for m in owners if m and m not in mha_owners)
    for node in gm.graph.nodes:
        owner = node.meta.get("hybridc_module", "")
        # the outermost attention module that owns the node
        for m in sorted(mha_owners, key=len):
            if owner == m or owner.startswith(m + "."):
                region[node] = m
                break
    core = [
        n
        for n in gm.graph.nodes
        if n in data and (keys.get(n) == "sdpa" or (keys.get(n) in ("matmul", "einsum") and n not in weights))
    ]

    def on_projection_in(n: fx.Node) -> bool:
        """Between an input projection's weight and the core: pure shape ops, scalar scaling, and a norm (a
        projection may be normalised before the core: LeViT's Linear + BatchNorm1d)."""
        key = keys.get(n)
        return (
            n in data
            and n not in weights
            and (key in _PROJECTION_PATH or key in ("mul", "div", "softmax", "getitem"))
        )

    def on_projection_out(n: fx.Node) -> bool:
        """Between the core and the output projection's weight: pure shape ops (and softmax, dropout, getitem,
        matmul)."""
        key = keys.get(n)
        return n not in weights and (
            key in PURE_SHAPE_OPS or key in ("softmax", "dropout", "getitem", "matmul")
        )

    for c in core:
        name = c.meta.get("hybridc_module", "") or c.name
        region.setdefault(c, name)
        # projections feeding the core: back through the projection path to weights (depth first, in order)
        for n in walk(c.all_input_nodes, inputs, expand=on_projection_in):
            if on_projection_in(n) or (n in weights and n in data):
                region.setdefault(n, name)
        # output projection: forward through pure shape ops to the first weight
        for n in walk(c.users, users, expand=on_projection_out):
            if on_projection_out(n) or n in weights:
                region.setdefault(n, name)
    return region


#: What a projection may pass through on its way into an attention core: shape ops and a norm.
_PROJECTION_PATH = PURE_SHAPE_OPS | {"batch_norm", "layer_norm", "rms_norm", "group_norm"}


def classify(gm: fx.GraphModule) -> dict[fx.Node, NodeInfo]:
    """Kind of every compute node (placeholders and the output node are not classified)."""
    data = _data_nodes(gm)
    keys = {n: op_key(n, gm) for n in gm.graph.nodes}
    info: dict[fx.Node, NodeInfo] = {}
    weights: set[fx.Node] = set()
    for node in gm.graph.nodes:
        if node.op in ("placeholder", "output"):
            continue
        key = keys[node]
        if node not in data:
            info[node] = NodeInfo("free", key)
            continue
        status = _weight_status(node, key, data)
        if status == "weight":
            info[node] = NodeInfo("weight", key)
            weights.add(node)
        elif status is not None:
            info[node] = NodeInfo("digital", key, status.split(":", 1)[1])
        elif key in ACTIVATIONS:
            info[node] = NodeInfo("activation", key)
        elif key in NORMS:
            info[node] = NodeInfo("norm", key)
        elif key in LINEAR_POOLS:
            info[node] = NodeInfo("pool", key)
        elif (key in SHAPE_OPS and _is_linear_use(node, key, data)) or (
            key == "getitem" and _is_linear_getitem(node, keys)
        ):
            info[node] = NodeInfo("linear", key)
        else:
            info[node] = NodeInfo("digital", key, _digital_reason(key, node, data))
    for node in gm.graph.nodes:
        # torch.export's batch norm / max pool return (values, ...) tuples: item 0 is part of that op
        if (
            keys[node] == "getitem"
            and node in info
            and isinstance(node.args[0], fx.Node)
            and node.args[1] == 0
            and info.get(node.args[0]) is not None
            and info[node.args[0]].kind in ("norm", "pool")
        ):
            producer = info[node.args[0]]
            info[node] = NodeInfo(producer.kind, producer.key)
    for comp in find_composites(gm, keys, data, weights):
        sink = info[comp.sink]
        sink.kind, sink.key, sink.reason = "activation", comp.key, ""
        sink.source, sink.composite = comp.source, comp.description
        for n in comp.parts:
            info[n] = NodeInfo("part", keys[n], source=comp.source)
    for node, owner in _attention_regions(gm, keys, data, weights).items():
        if node in info and info[node].kind != "free":
            info[node].attention = owner
    return info


def _is_basic_index(index: object) -> bool:
    items = index if isinstance(index, tuple) else (index,)
    return all(
        (isinstance(i, int) and not isinstance(i, bool))
        or i is None
        or i is Ellipsis
        or (isinstance(i, slice) and not any(isinstance(v, fx.Node) for v in (i.start, i.stop, i.step)))
        for i in items
    )


def _is_linear_getitem(node: fx.Node, keys: dict[fx.Node, str]) -> bool:
    """`x[:, 0]` (basic indexing of a tensor) and item i of split/chunk/unbind select values: linear."""
    src, index = node.args[0], node.args[1]
    if not isinstance(src, fx.Node):
        return False
    if keys.get(src) in TUPLE_SHAPE_OPS:
        return isinstance(index, int)
    return _is_tensor(src) and _is_tensor(node) and _is_basic_index(index) and _keeps_batch(node, src)


def _keeps_batch(node: fx.Node, src: fx.Node) -> bool:
    """Indexing that keeps the leading (batch) dimension whole: `x[0]` or `x[1:]` pick samples, not values."""
    a, b = node.meta.get("hybridc_shape") or [], src.meta.get("hybridc_shape") or []
    return bool(a) and bool(b) and a[0] == b[0]


def _is_linear_use(node: fx.Node, key: str, data: set[fx.Node]) -> bool:
    """Element-wise arithmetic is linear only when at most one operand is data (or for add/sub/cat)."""
    if key in TUPLE_SHAPE_OPS:
        return True  # a tuple of pieces of its operand (no shape of its own)
    if not _is_tensor(node):
        return False
    if key in ("select", "slice"):
        src = node.args[0] if node.args else None
        return isinstance(src, fx.Node) and _keeps_batch(node, src)
    if key in ("mul", "div"):
        operands = [a for a in node.args[:2] if isinstance(a, fx.Node) and a in data]
        if len(operands) != 1:
            return False
        if key == "div" and isinstance(node.args[1], fx.Node) and node.args[1] in data:
            return False
    return True


def _digital_reason(key: str, node: fx.Node, data: set[fx.Node]) -> str:
    if key in ("mul", "div"):
        return "product of two activations"
    if key == "softmax":
        return "softmax"
    if key == "attention":
        return "attention module"
    if key == "embedding":
        return "embedding lookup"
    if key == "getitem":
        return "indexing"
    if key == "prelu":
        return "activation with learned parameters"
    return f"not a linear/monotone op ({key})"
