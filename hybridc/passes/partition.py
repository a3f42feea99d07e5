"""The partition pass: neurons, synapses and chains, cut into analog blocks of at most `max_block_size`
weight layers; everything else into digital blocks; the block graph is checked to be a DAG."""

from __future__ import annotations

import hashlib
import math
import operator

import networkx as nx
import torch
import torch.fx as fx

from hybridc.errors import PartitionError
from hybridc.passes.classify import NodeInfo, classify
from hybridc.passes.composite import UNKNOWN_COMPOSITE
from hybridc.passes.lower import block_io
from hybridc.passes.ops import NON_MONOTONE_ACTIVATIONS, TOKEN_NORMS, activation_params, value_inputs
from hybridc.passes.trace import TracedGraph
from hybridc.plan import (
    ActivationSpec,
    Block,
    Decision,
    ModelFingerprint,
    Neuron,
    PartitionConfig,
    Plan,
    TensorRef,
)


def graph_hash(gm: fx.GraphModule) -> str:
    """A digest of the graph's structure (names, ops, targets, edges, shapes): same model, same hash."""
    h = hashlib.sha256()
    for n in gm.graph.nodes:
        target = n.target if isinstance(n.target, str) else getattr(n.target, "__name__", str(n.target))
        h.update(
            f"{n.name}|{n.op}|{target}|{[a.name for a in n.all_input_nodes]}|"
            f"{n.meta.get('hybridc_shape')}\n".encode()
        )
    return h.hexdigest()[:16]


def _eligible(info: NodeInfo, cfg: PartitionConfig) -> tuple[bool, str]:
    """Can this node live inside an analog block under `cfg`? (False, reason) when it cannot."""
    if info.attention and cfg.attention == "digital":
        return False, f"inside attention ({info.attention}); attention policy is digital"
    if info.kind == "weight":
        return True, ""
    if info.kind == "activation":
        if _not_monotone(info) and cfg.activation == "keep" and cfg.non_monotone == "refuse":
            return False, (
                f"{_act_name(info)} is not monotone and cannot be an energy's activation "
                "(non_monotone=refuse)"
            )
        return True, ""
    if info.kind in ("linear", "part"):
        return True, ""
    if info.kind == "norm":
        policy, field = (cfg.layer_norm, "layer_norm") if info.key in TOKEN_NORMS else (cfg.norm, "norm")
        if policy == "split":
            return False, f"{info.key} ({field} policy split)"
        return True, ""
    if info.kind == "pool":
        if cfg.pool == "digital":
            return False, "pooling (pool policy digital)"
        return True, ""
    return False, info.reason or "digital op"


def _not_monotone(info: NodeInfo) -> bool:
    """An activation without an energy form as it is: non-monotone, or a composite matching none known."""
    return info.key in NON_MONOTONE_ACTIVATIONS or info.key == UNKNOWN_COMPOSITE


def _act_name(info: NodeInfo) -> str:
    return f"composite activation ({info.composite})" if info.composite else info.key


def _tensor_at(gm: fx.GraphModule, path: str) -> object:
    obj: object = gm
    for part in path.split("."):
        obj = getattr(obj, part, None)
    return obj


def _tied_to_digital(
    gm: fx.GraphModule, nodes: list[fx.Node], info: dict[fx.Node, NodeInfo], free: set[fx.Node]
) -> dict[fx.Node, str]:
    """Weight layers whose weight tensor is also read by a node that is not a weight layer (HF's `lm_head`
    tied to the token embedding): one tensor cannot be both an analog conductance array and a digital
    lookup table, so such a layer stays digital. Returns {weight node: reason}."""
    readers: dict[int, list[fx.Node]] = {}
    for n in nodes:
        tensors: list[object] = []
        if n.op == "call_module":
            tensors = list(gm.get_submodule(str(n.target)).parameters())
        elif n not in free:
            tensors = [
                _tensor_at(gm, p)
                for a in n.all_input_nodes
                if a in free or a.op == "get_attr"
                for p in [_parameter_path(a)]
                if p is not None
            ]
        for t in tensors:
            if isinstance(t, torch.Tensor) and n not in readers.setdefault(id(t), []):
                readers[id(t)].append(n)
    out: dict[fx.Node, str] = {}
    for n in nodes:
        if info[n].kind != "weight":
            continue
        if n.op == "call_module":
            w = getattr(gm.get_submodule(str(n.target)), "weight", None)
        else:
            operand = _parameter_operand(n, info[n], free)
            path = _parameter_path(operand) if operand is not None else None
            w = _tensor_at(gm, path) if path else None
        if not isinstance(w, torch.Tensor):
            continue
        others = [r for r in readers.get(id(w), []) if r is not n and info[r].kind != "weight"]
        if others:
            out[n] = (
                f"its weight is tied to {others[0].name} ({info[others[0]].key}), which is digital: one tensor "
                "cannot be both an analog conductance array and a digital table"
            )
    return out


def _uniform_groups(items: list[fx.Node], max_size: int) -> list[list[fx.Node]]:
    """Cut an ordered list into ceil(n / max_size) contiguous groups whose sizes differ by at most one."""
    k = math.ceil(len(items) / max_size)
    base, extra = divmod(len(items), k)
    groups, start = [], 0
    for i in range(k):
        size = base + (1 if i < extra else 0)
        groups.append(items[start : start + size])
        start += size
    return groups


class _Partitioner:
    def __init__(self, traced: TracedGraph, cfg: PartitionConfig):
        self.gm = traced.gm
        self.traced = traced
        self.cfg = cfg
        self.nodes = [n for n in self.gm.graph.nodes if n.op not in ("placeholder", "output")]
        self.order = {n: i for i, n in enumerate(self.gm.graph.nodes)}
        self.info = classify(self.gm)
        self.free = {n for n in self.nodes if self.info[n].kind == "free"}
        self.eligible: dict[fx.Node, bool] = {}
        self.reason: dict[fx.Node, str] = {}
        for n in self.nodes:
            if n in self.free:
                continue
            ok, why = _eligible(self.info[n], cfg)
            self.eligible[n] = ok
            self.reason[n] = why
        for w, why in _tied_to_digital(self.gm, self.nodes, self.info, self.free).items():
            if self.eligible.get(w):
                self.eligible[w] = False
                self.reason[w] = why
        if cfg.readout == "digital":
            for w in self._readout_layers():
                if self.eligible.get(w):
                    self.eligible[w] = False
                    self.reason[w] = "the model's readout (readout policy digital)"

    # ---- chains -------------------------------------------------------------------------------------
    def chains(self) -> list[list[fx.Node]]:
        """Weights linked by eligible paths (through activations, shape ops, residual adds, absorbable
        norms/pools), grouped into weakly connected components, each in graph (topological) order."""
        g = nx.Graph()
        weights = [n for n, ok in self.eligible.items() if ok and self.info[n].kind == "weight"]
        g.add_nodes_from(weights)
        for w in weights:
            for v in self._nearest_weights(w, upstream=False):
                g.add_edge(w, v)
        out = [sorted(comp, key=self.order.__getitem__) for comp in nx.connected_components(g)]
        return sorted(out, key=lambda ws: self.order[ws[0]])

    def _nearest_weights(self, node: fx.Node, upstream: bool) -> set[fx.Node]:
        found: set[fx.Node] = set()
        stack = list(node.all_input_nodes if upstream else node.users)
        seen: set[fx.Node] = set()
        while stack:
            n = stack.pop()
            if n in seen or not self.eligible.get(n):
                continue
            seen.add(n)
            if self.info[n].kind == "weight":
                found.add(n)
            else:
                # a template operand (`h.reshape_as(x)` reads x's shape only) links no weights
                stack.extend(value_inputs(n) if upstream else (u for u in n.users if n in value_inputs(u)))
        return found

    def assign(self, groups: list[list[fx.Node]]) -> dict[fx.Node, int]:
        """Analog membership: weights by group; an eligible node joins the latest group upstream of it
        when it also feeds a weight of that group (else it is a head/tail and stays digital)."""
        group_of: dict[fx.Node, int] = {}
        for gi, ws in enumerate(groups):
            for w in ws:
                group_of[w] = gi
        member = dict(group_of)
        for n, ok in self.eligible.items():
            if not ok or self.info[n].kind == "weight":
                continue
            up = self._nearest_weights(n, upstream=True)
            if not up:
                continue
            g = max(group_of[w] for w in up)
            if any(group_of[w] == g for w in self._nearest_weights(n, upstream=False)):
                member[n] = g
        # a value read by the group only for its shape (the template of `copy`/`view_as`, a size query)
        # joins the group too, or the group would read back a value it produced
        changed = True
        while changed:
            changed = False
            for n, ok in self.eligible.items():
                if n in member or not ok or self.info[n].kind == "weight":
                    continue
                up = self._nearest_weights(n, upstream=True)
                if up and any(member.get(u) == max(group_of[w] for w in up) for u in self._data_users(n)):
                    member[n] = max(group_of[w] for w in up)
                    changed = True
        # a tuple (split/chunk/unbind) never leaves its block: its items join it, the block hands on tensors
        for n in list(member):
            if "hybridc_shape" not in n.meta and self.info[n].kind == "linear":
                for u in n.users:
                    if u not in member and self.eligible.get(u):
                        member[u] = member[n]
        return member

    # ---- blocks -------------------------------------------------------------------------------------
    def _contracted(self, member: dict[fx.Node, int]) -> nx.DiGraph:
        """Analog groups contracted to one vertex each, digital nodes as they are. Vertices and edges are
        inserted in graph order (never from a set), so `find_cycle` finds the same cycle in every process."""
        g = nx.DiGraph()
        key = {
            n: (("a", member[n]) if n in member else ("n", n.name)) for n in self.nodes if n not in self.free
        }
        g.add_nodes_from(dict.fromkeys(key.values()))
        for n in key:
            for a in self._data_inputs(n):
                if a in key and key[a] != key[n]:
                    g.add_edge(key[a], key[n])
        return g

    def _external_inputs(self, member: dict[fx.Node, int], g: int) -> set[fx.Node]:
        """Values group g reads from outside."""
        return {a for m, gm in member.items() if gm == g for a in self._data_inputs(m) if member.get(a) != g}

    def _readout_layers(self) -> list[fx.Node]:
        """Weight layers whose result reaches the graph output unchanged but for single-input linear ops (view,
        flatten, dropout, scaling): the model's readout(s). Residual adds and other multi-input ops stop the
        walk, so only a layer that alone produces an output counts."""
        out_node = next(n for n in self.gm.graph.nodes if n.op == "output")
        found: list[fx.Node] = []
        stack, seen = self._data_inputs(out_node), set()
        while stack:
            n = stack.pop()
            if n in seen:
                continue
            seen.add(n)
            kind = self.info[n].kind if n in self.info else ""
            if kind == "weight":
                found.append(n)
            elif kind == "linear" and len(inputs := self._data_inputs(n)) == 1:
                stack.extend(inputs)
        return found

    def _data_users(self, n: fx.Node) -> list[fx.Node]:
        """Non-free nodes that read n, looking through free nodes (`x.size(0)`)."""
        return self._through_free(n, upstream=False)

    def _data_inputs(self, n: fx.Node) -> list[fx.Node]:
        """Non-free producers of n's inputs, looking through free nodes (a shape query of x depends on x)."""
        return self._through_free(n, upstream=True)

    def _through_free(self, n: fx.Node, upstream: bool) -> list[fx.Node]:
        """The nearest non-free neighbours of n in one direction (graph inputs or the output excluded)."""

        def step(x: fx.Node) -> list[fx.Node]:
            return list(x.all_input_nodes) if upstream else list(x.users)

        boundary = "placeholder" if upstream else "output"
        out, stack, seen = [], step(n), set()
        while stack:
            a = stack.pop()
            if a in seen:
                continue
            seen.add(a)
            if a in self.free:
                stack.extend(step(a))
            elif a.op != boundary:
                out.append(a)
        return out

    def make_groups(self) -> tuple[list[list[fx.Node]], dict[fx.Node, int], list[Decision]]:
        """Chains cut into groups, then split until the contracted block graph is acyclic.

        A cycle leaves an analog group through a digital node and comes back into it; it always passes a
        group of >= 2 weight layers (a one-layer group holds its weight only, and the graph itself is a DAG),
        so splitting the largest group on the cycle (the earliest among equals) makes progress. Should a
        cycle hold only one-layer groups, its first weight stays digital (recorded) instead of failing."""
        decisions: list[Decision] = []
        while True:
            groups: list[list[fx.Node]] = []
            for ws in self.chains():
                groups.extend(_uniform_groups(ws, self.cfg.max_block_size))
            groups, member, ok = self._split_cycles(groups, decisions)
            if ok:
                self._absorb_batch_restoring_tails(member)
                return groups, member, decisions

    def _absorb_batch_restoring_tails(self, member: dict[fx.Node, int]) -> None:
        """A neuron's state is per sample, so an analog block's output must lead with the batch dimension.
        HF's Conv1D computes `addmm(b, x.view(-1, n), W).view(B, T, m)`: the weight's output folds batch and
        tokens. Such an output takes the reshape after it into the block (no new block edges: the reshape
        reads only values of the block, some for their shape), so the neuron is the (B, T, m) value; and the
        `x.view(-1, n)` before the block's first weight joins the block, so its input is the (B, T, n) x."""
        batch = next(
            (
                n.meta["hybridc_shape"][0]
                for n in self.gm.graph.nodes
                if n.op == "placeholder" and n.meta.get("hybridc_shape")
            ),
            None,
        )
        if batch is None:
            return
        # the mirror image: `x.view(-1, n)` folding batch and tokens before the block's first weight joins the
        # block, so the block reads the (B, T, n) value and its inputs lead with the batch dimension too
        for n in self.nodes:
            shape = n.meta.get("hybridc_shape") or []
            users = {member.get(u) for u in self._data_users(n)}
            if (
                n in member
                or not shape
                or shape[0] == batch
                or not self.eligible.get(n)
                or self.info[n].kind != "linear"
                or self.info[n].key not in ("view", "flatten")
                or len(users) != 1
                or None in users
            ):
                continue
            ins = self._data_inputs(n)
            if ins and all(
                a not in member and (a.meta.get("hybridc_shape") or [None])[0] == batch for a in ins
            ):
                member[n] = users.pop()
        for n in self.nodes:
            g = member.get(n)
            if g is None:
                continue
            while True:
                shape = n.meta.get("hybridc_shape") or []
                users = list(n.users)
                if not shape or shape[0] == batch or len(users) != 1:
                    break
                (u,) = users
                # u reads n, and otherwise only values the block reads already (for their shape)
                if (
                    u in member
                    or not self.eligible.get(u)
                    or self.info[u].kind != "linear"
                    or self.info[u].key not in ("view", "flatten", "unflatten")
                    or [a for a in value_inputs(u) if a not in self.free] != [n]
                    or any(
                        member.get(a) != g and a not in self._external_inputs(member, g)
                        for a in self._data_inputs(u)
                    )
                ):
                    break
                member[u] = g
                n = u

    def _split_cycles(
        self, groups: list[list[fx.Node]], decisions: list[Decision]
    ) -> tuple[list[list[fx.Node]], dict[fx.Node, int], bool]:
        """Split groups until the block graph is acyclic (True), or make one weight digital (False: the
        chains must be recomputed)."""
        while True:
            member = self.assign(groups)
            try:
                cycle = nx.find_cycle(self._contracted(member))
            except nx.NetworkXNoCycle:
                return groups, member, True
            on_cycle = list(dict.fromkeys(k[1] for edge in cycle for k in edge[:2] if k[0] == "a"))
            bad = max(on_cycle, key=lambda gi: (len(groups[gi]), -self.order[groups[gi][0]]))
            ws = groups[bad]
            if len(ws) < 2:
                w = min((groups[gi][0] for gi in on_cycle), key=self.order.__getitem__)
                self.eligible[w] = False
                self.reason[w] = (
                    "kept digital so that the block graph stays acyclic (no block on the cycle can be split)"
                )
                decisions.append(Decision(node=w.name, action="kept_digital", reason=self.reason[w]))
                return groups, member, False
            cut = self._cut_point(ws, bad, cycle, member)
            groups[bad : bad + 1] = [ws[:cut], ws[cut:]]
            decisions.append(
                Decision(
                    node=ws[cut].name, action="split", reason="cut here so that the block graph stays acyclic"
                )
            )

    def _cut_point(self, ws: list[fx.Node], gi: int, cycle: list[tuple], member: dict[fx.Node, int]) -> int:
        """Where to split group `gi` (weights `ws`) to break `cycle`: before the first weight downstream of
        the member through which the cycle re-enters the group (so the part the cycle leaves from and the
        part it comes back to become two blocks); the middle when that does not separate the weights."""
        me = ("a", gi)
        preds = [u for u, v, *_ in cycle if v == me and u != me]
        entries = [
            n
            for n in self.nodes
            if member.get(n) == gi
            and any(
                (("a", member[a]) if a in member else ("n", a.name)) in preds for a in self._data_inputs(n)
            )
        ]
        if entries:
            below: set[fx.Node] = set()
            stack = [entries[0]]
            while stack:
                n = stack.pop()
                if n not in below:
                    below.add(n)
                    stack.extend(n.users)
            cut = next((i for i, w in enumerate(ws) if w in below), len(ws))
            if 0 < cut < len(ws):
                return cut
        return len(ws) // 2

    def digital_groups(self, member: dict[fx.Node, int], n_analog: int) -> dict[fx.Node, tuple[int, int]]:
        """Digital nodes grouped by (analog depth, connected component): keeps the block graph a DAG."""
        depth: dict[fx.Node, int] = {}
        block_depth: dict[int, int] = {}
        # analog block depth = 1 + max depth of its external inputs; computed in graph order, which is
        # topological for nodes and (after the acyclicity check) consistent for blocks.
        pending_inputs: dict[int, int] = {}
        for n in self.gm.graph.nodes:
            if n.op in ("placeholder", "output") or n in self.free:
                continue
            ins = self._data_inputs(n)
            if n in member:
                b = member[n]
                ext = [depth[a] for a in ins if member.get(a) != b]
                pending_inputs[b] = max([pending_inputs.get(b, 0), *ext]) if ext else pending_inputs.get(b, 0)
                block_depth[b] = pending_inputs[b] + 1
                depth[n] = block_depth[b]
            else:
                depth[n] = max((depth[a] for a in ins), default=0)
        # a block's depth may rise after its first node was seen: recompute digital depths until stable
        for _ in range(len(self.nodes)):
            changed = False
            for n in self.gm.graph.nodes:
                if n.op in ("placeholder", "output") or n in self.free:
                    continue
                ins = self._data_inputs(n)
                if n in member:
                    b = member[n]
                    d = max([block_depth[b]] + [depth[a] + 1 for a in ins if member.get(a) != b])
                    if d != block_depth[b]:
                        block_depth[b] = d
                        changed = True
                    depth[n] = block_depth[b]
                else:
                    d = max((depth[a] for a in ins), default=0)
                    if d != depth[n]:
                        depth[n] = d
                        changed = True
            if not changed:
                break
        g = nx.Graph()
        digital = [n for n in self.nodes if n not in member and n not in self.free]
        g.add_nodes_from(digital)
        for n in digital:
            for a in self._data_inputs(n):
                if a not in member and depth[a] == depth[n]:
                    g.add_edge(a, n)
        out: dict[fx.Node, tuple[int, int]] = {}
        for comp in nx.connected_components(g):
            first = min(comp, key=self.order.__getitem__)
            for n in comp:
                out[n] = (depth[n], self.order[first])
        return out


def _activation_spec(
    node: fx.Node, info: NodeInfo, gm: fx.GraphModule, cfg: PartitionConfig
) -> tuple[ActivationSpec, Decision | None]:
    name = _act_name(info)
    if cfg.activation == "hardsigmoid":
        spec = ActivationSpec(kind="hardsigmoid", params={"slope": cfg.hardsigmoid_slope})
        return spec, Decision(
            node=node.name, action="substituted", reason=f"{name} -> {spec} (activation policy hardsigmoid)"
        )
    if _not_monotone(info):
        spec = ActivationSpec(kind="relu")
        return spec, Decision(
            node=node.name,
            action="substituted",
            reason=f"{name} is not monotone, so it cannot be an energy's activation; "
            "substituted relu (activation policy keep)",
        )
    kind = "torch_hardsigmoid" if info.key == "hardsigmoid" else info.key
    params = {} if info.composite else activation_params(node, gm)
    decision = None
    if info.composite:
        decision = Decision(
            node=node.name,
            action="substituted",
            reason=f"{name} -> {info.key} (one neuron; activation policy keep)",
        )
    return ActivationSpec(kind=kind, params=params), decision


def _parameter_operand(node: fx.Node, info: NodeInfo, free: set[fx.Node]) -> fx.Node | None:
    """The operand of a functional weight op that carries its parameter: `weight` of linear/conv, the
    non-data factor of matmul/addmm (HF Conv1D: `addmm(bias, x, weight)`)."""
    if info.key in ("linear", "conv", "conv_transpose"):
        w = node.args[1] if len(node.args) > 1 else node.kwargs.get("weight")
        return w if isinstance(w, fx.Node) else None
    if info.key in ("matmul", "addmm"):
        operands = list(node.args[1:3]) if info.key == "addmm" else list(node.args[:2])
        for a in operands:
            if isinstance(a, fx.Node) and (a in free or a.op == "get_attr"):
                return a
    return None


def _parameter_path(start: fx.Node) -> str | None:
    """The get_attr target a free parameter expression reads (`w.t()` -> "fc.weight"), first operand first."""
    stack, seen = [start], set()
    while stack:
        x = stack.pop(0)
        if x in seen:
            continue
        seen.add(x)
        if x.op == "get_attr":
            return str(x.target)
        stack.extend(x.all_input_nodes)
    return None


def _weight_name(node: fx.Node, info: NodeInfo, free: set[fx.Node]) -> str:
    """The layer's name in `weight_layers`: the module path, or the parameter's owner for functional ops."""
    if node.op == "call_module":
        return str(node.target)
    operand = _parameter_operand(node, info, free)
    path = _parameter_path(operand) if operand is not None else None
    if path is None:
        return node.name
    return path[: -len(".weight")] if path.endswith(".weight") else path


def _zero_scale(gm: fx.GraphModule, node: fx.Node) -> bool:
    """Does this norm multiply by an all-zero affine weight (timm's zero-init last BN of a residual branch)?"""
    if node.op == "call_module":
        w = getattr(gm.get_submodule(str(node.target)), "weight", None)
    else:
        paths = [_parameter_path(a) for a in node.all_input_nodes if a.op == "get_attr"]
        found = [_tensor_at(gm, q) for q in paths if q and q.rsplit(".", 1)[-1] in ("weight", "gamma")]
        w = found[0] if found else None
    return isinstance(w, torch.Tensor) and w.numel() > 0 and not bool(w.detach().ne(0).any())


def _ref(node: fx.Node) -> TensorRef:
    return TensorRef(
        node=node.name, shape=node.meta.get("hybridc_shape"), dtype=node.meta.get("hybridc_dtype")
    )


def _param_count(gm: fx.GraphModule, nodes: list[fx.Node]) -> int:
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


def partition_graph(traced: TracedGraph, cfg: PartitionConfig, example_shapes: list[list[int]]) -> Plan:
    """Run the partition pass over a traced graph and return the plan."""
    p = _Partitioner(traced, cfg)
    gm = p.gm
    groups, member, decisions = p.make_groups()
    dgroups = p.digital_groups(member, len(groups))

    # one key per block, then the blocks in a deterministic topological order
    block_key: dict[fx.Node, tuple] = {}
    for n in p.nodes:
        if n in member:
            block_key[n] = ("analog", member[n])
        elif n not in p.free:
            block_key[n] = ("digital", dgroups[n])
    # free nodes belong to the block of their first non-free user (or of their producer for outputs)
    for n in reversed(p.nodes):
        if n in p.free:
            users = sorted((u for u in n.users if u in block_key), key=p.order.__getitem__)
            if users:
                block_key[n] = block_key[users[0]]
    for n in p.nodes:
        if n in p.free and n not in block_key:
            producers = [a for a in p._data_inputs(n) if a in block_key]
            block_key[n] = block_key[producers[-1]] if producers else ("digital", (0, -1))

    bg = nx.DiGraph()
    keys = sorted(
        set(block_key.values()), key=lambda k: min(p.order[n] for n in block_key if block_key[n] == k)
    )
    bg.add_nodes_from(keys)
    for n, k in block_key.items():
        for a in p._data_inputs(n):
            if a in block_key and block_key[a] != k:
                bg.add_edge(block_key[a], k)
    if not nx.is_directed_acyclic_graph(bg):
        raise PartitionError("internal error: block graph has a cycle; please report this model")
    first = {k: i for i, k in enumerate(keys)}
    topo = list(nx.lexicographical_topological_sort(bg, key=first.__getitem__))
    names = {k: f"{'analog' if k[0] == 'analog' else 'digital'}{i}" for i, k in enumerate(topo)}

    members: dict[tuple, list[fx.Node]] = {k: [] for k in topo}
    for n in p.nodes:
        members[block_key[n]].append(n)

    # decisions about individual nodes
    in_block = {n: names[block_key[n]] for n in p.nodes}
    for d in decisions:
        d.block = in_block.get(next((n for n in p.nodes if n.name == d.node), None))
    identity: dict[tuple, list[str]] = {k: [] for k in topo}
    after_neuron: dict[fx.Node, bool] = {}

    def _after_neuron(n: fx.Node) -> bool:
        """Does n read a neuron (activation) of its own block, directly or through block members?"""
        if n not in after_neuron:
            after_neuron[n] = any(
                block_key.get(a) == block_key[n] and (p.info[a].kind == "activation" or _after_neuron(a))
                for a in p._data_inputs(n)
            )
        return after_neuron[n]

    for n in p.nodes:
        info = p.info[n]
        k = block_key[n]
        analog = k[0] == "analog"
        policy = cfg.layer_norm if info.key in TOKEN_NORMS else cfg.norm
        if (
            info.kind == "norm"
            and analog
            and policy == "synapse"
            and cfg.eb_kind == "dhn"
            and p.eligible.get(n)
            and not _after_neuron(n)
        ):
            # the paper's block entry (conv -> pool -> BN): the norm reads the block's inputs only, so it is
            # part of the input synapse, evaluated once per relaxation phase (DHNBlock.prepare); a DRN block's
            # synapses are its conductances only, so there the norm is removed as before
            if n.target is not operator.getitem:  # item 0 of an exported norm's tuple: reported with the norm
                decisions.append(
                    Decision(
                        node=n.name,
                        action="absorbed",
                        block=names[k],
                        reason=f"{info.key} kept in the block's input synapse (policy synapse: "
                        "it reads the block's inputs only)",
                    )
                )
        elif info.kind == "norm" and p.eligible.get(n) and (analog or policy == "drop"):
            identity[k].append(n.name)
            if n.target is operator.getitem:  # item 0 of an exported norm's tuple: removed with the norm
                continue
            zero = (
                ": its scale is zero (a zero-init residual branch), so the branch no longer starts at zero"
                if _zero_scale(gm, n)
                else ""
            )
            decisions.append(
                Decision(
                    node=n.name,
                    action="removed",
                    block=names[k],
                    reason=f"{info.key} removed (policy {policy}"
                    f"{', inside an analog block' if analog else ''}){zero}",
                )
            )
        elif info.kind == "linear" and info.key == "dropout" and analog:
            identity[k].append(n.name)
            decisions.append(
                Decision(
                    node=n.name,
                    action="removed",
                    block=names[k],
                    reason="dropout inside an analog block is the identity",
                )
            )
        elif (
            info.kind == "pool"
            and analog
            and n.target is not operator.getitem
            and not (
                info.key == "max_pool"
                and len(n.all_input_nodes) >= 1
                and p.info.get(n.all_input_nodes[0]) is not None
                and p.info[n.all_input_nodes[0]].kind == "activation"
                and p.info[n.all_input_nodes[0]].source is None
                and len(n.all_input_nodes[0].users) == 1
                and block_key.get(n.all_input_nodes[0]) == k
            )
        ):
            decisions.append(
                Decision(
                    node=n.name,
                    action="absorbed",
                    block=names[k],
                    reason=f"{info.key} absorbed into a synapse (pool policy absorb)",
                )
            )
        elif not analog and info.kind in ("weight", "norm", "pool", "activation") and not p.eligible.get(n):
            decisions.append(
                Decision(
                    node=n.name, action="kept_digital", block=names[k], reason=p.reason.get(n) or "digital op"
                )
            )

    io = block_io(gm, {names[k]: [n.name for n in members[k]] for k in topo}, p.free)
    blocks: list[Block] = []
    for k in topo:
        nodes = members[k]
        ins, outs = io[names[k]]
        block = Block(
            name=names[k],
            kind="analog" if k[0] == "analog" else "digital",
            nodes=[n.name for n in nodes],
            identity_nodes=identity[k],
            inputs=[_ref(a) for a in ins],
            outputs=[_ref(o) for o in outs],
            params=_param_count(gm, nodes),
        )
        if block.kind == "analog":
            block.eb_kind = cfg.eb_kind
            if cfg.eb_kind == "drn":
                block.eb_params = {"gamma": cfg.drn_gamma}
            block.weight_layers = [
                _weight_name(n, p.info[n], p.free) for n in nodes if p.info[n].kind == "weight"
            ]
            node_set = set(nodes)
            pooled = {
                n: next(iter(n.users))
                for n in nodes
                if p.info[n].kind == "activation"
                and p.info[n].source is None
                and len(n.users) == 1
                and "hybridc_shape" in next(iter(n.users)).meta
                and next(iter(n.users)) in node_set
                and p.info[next(iter(n.users))].key == "max_pool"
            }
            pool_of = {v: k for k, v in pooled.items()}
            for n in nodes:
                info = p.info[n]
                if n in pooled:
                    # σ and max-pooling commute for monotone σ: put the neuron after the pool, so the pool
                    # acts on pre-activations (no argmax ties between saturated states) as in the paper.
                    block.identity_nodes.append(n.name)
                    decisions.append(
                        Decision(
                            node=n.name,
                            action="absorbed",
                            block=block.name,
                            reason=f"{info.key} moved after {pooled[n].name} (max-pool commutes with monotone "
                            "activations); the neuron is the pooled value",
                        )
                    )
                elif n in pool_of:
                    act = pool_of[n]
                    spec, dec = _activation_spec(act, p.info[act], gm, cfg)
                    if dec is not None:
                        dec.block = block.name
                        decisions.append(dec)
                    block.neurons.append(
                        Neuron(
                            node=n.name,
                            activation=spec,
                            preactivation="self",
                            shape=n.meta.get("hybridc_shape"),
                        )
                    )
                elif info.kind == "activation":
                    spec, dec = _activation_spec(n, info, gm, cfg)
                    if dec is not None:
                        dec.block = block.name
                        decisions.append(dec)
                    block.neurons.append(
                        Neuron(
                            node=n.name,
                            activation=spec,
                            preactivation="input",
                            shape=n.meta.get("hybridc_shape"),
                            source=info.source.name if info.source is not None else None,
                        )
                    )
                elif n in outs:
                    block.neurons.append(
                        Neuron(
                            node=n.name,
                            activation=ActivationSpec(kind="identity"),
                            preactivation="self",
                            shape=n.meta.get("hybridc_shape"),
                        )
                    )
        blocks.append(block)

    decisions.sort(key=lambda d: p.order[next(n for n in gm.graph.nodes if n.name == d.node)])
    out_node = next(n for n in gm.graph.nodes if n.op == "output")
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    return Plan(
        model=ModelFingerprint(
            model_class=type(traced.gm).__name__,
            trace=traced.method,
            graph_hash=graph_hash(gm),
            example_shapes=example_shapes,
        ),
        config=cfg,
        graph_inputs=[_ref(n) for n in placeholders],
        graph_outputs=[a.name for a in out_node.all_input_nodes],
        blocks=blocks,
        decisions=decisions,
    )
