"""The partition pass: neurons, synapses and chains, cut into analog blocks of at most `max_block_size`
weight layers; everything else into digital blocks; the block graph is checked to be a DAG."""

from __future__ import annotations

import hashlib
import math

import networkx as nx
import torch.fx as fx

from hybridc.errors import PartitionError
from hybridc.passes.classify import NodeInfo, classify
from hybridc.passes.lower import block_io
from hybridc.passes.ops import NON_MONOTONE_ACTIVATIONS, TOKEN_NORMS, activation_params
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
        h.update(f"{n.name}|{n.op}|{target}|{[a.name for a in n.all_input_nodes]}|"
                 f"{n.meta.get('hybridc_shape')}\n".encode())
    return h.hexdigest()[:16]


def _eligible(info: NodeInfo, cfg: PartitionConfig) -> tuple[bool, str]:
    """Can this node live inside an analog block under `cfg`? (False, reason) when it cannot."""
    if info.attention and cfg.attention == "digital":
        return False, f"inside attention ({info.attention}); attention policy is digital"
    if info.kind == "weight":
        return True, ""
    if info.kind == "activation":
        if info.key in NON_MONOTONE_ACTIVATIONS and cfg.activation == "keep" and cfg.non_monotone == "refuse":
            return False, f"{info.key} is not monotone and cannot be an energy's activation (non_monotone=refuse)"
        return True, ""
    if info.kind == "linear":
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


def _uniform_groups(items: list[fx.Node], max_size: int) -> list[list[fx.Node]]:
    """Cut an ordered list into ceil(n / max_size) contiguous groups whose sizes differ by at most one."""
    k = math.ceil(len(items) / max_size)
    base, extra = divmod(len(items), k)
    groups, start = [], 0
    for i in range(k):
        size = base + (1 if i < extra else 0)
        groups.append(items[start:start + size])
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
                stack.extend(n.all_input_nodes if upstream else n.users)
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
        return member

    # ---- blocks -------------------------------------------------------------------------------------
    def _contracted(self, member: dict[fx.Node, int]) -> nx.DiGraph:
        g = nx.DiGraph()
        key = {n: (("a", member[n]) if n in member else ("n", n.name)) for n in self.nodes if n not in self.free}
        g.add_nodes_from(set(key.values()))
        for n in key:
            for a in self._data_inputs(n):
                if a in key and key[a] != key[n]:
                    g.add_edge(key[a], key[n])
        return g

    def _data_inputs(self, n: fx.Node) -> list[fx.Node]:
        """Non-free producers of n's inputs, looking through free nodes (a shape query of x depends on x)."""
        out, stack, seen = [], list(n.all_input_nodes), set()
        while stack:
            a = stack.pop()
            if a in seen:
                continue
            seen.add(a)
            if a in self.free:
                stack.extend(a.all_input_nodes)
            elif a.op != "placeholder":
                out.append(a)
        return out

    def make_groups(self) -> tuple[list[list[fx.Node]], dict[fx.Node, int], list[Decision]]:
        groups: list[list[fx.Node]] = []
        for ws in self.chains():
            groups.extend(_uniform_groups(ws, self.cfg.max_block_size))
        decisions: list[Decision] = []
        while True:
            member = self.assign(groups)
            cg = self._contracted(member)
            try:
                cycle = nx.find_cycle(cg)
            except nx.NetworkXNoCycle:
                return groups, member, decisions
            bad = next(k[1] for edge in cycle for k in edge[:2] if k[0] == "a")
            ws = groups[bad]
            if len(ws) < 2:
                raise PartitionError(f"cannot make the block graph acyclic around {ws[0].name}")
            half = len(ws) // 2
            groups[bad:bad + 1] = [ws[:half], ws[half:]]
            decisions.append(Decision(node=ws[half].name, action="split",
                                      reason="cut here so that the block graph stays acyclic"))

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


def _activation_spec(node: fx.Node, info: NodeInfo, gm: fx.GraphModule, cfg: PartitionConfig
                     ) -> tuple[ActivationSpec, Decision | None]:
    if cfg.activation == "hardsigmoid":
        spec = ActivationSpec(kind="hardsigmoid", params={"slope": cfg.hardsigmoid_slope})
        return spec, Decision(node=node.name, action="substituted",
                              reason=f"{info.key} -> {spec} (activation policy hardsigmoid)")
    if info.key in NON_MONOTONE_ACTIVATIONS:
        spec = ActivationSpec(kind="relu")
        return spec, Decision(node=node.name, action="substituted",
                              reason=f"{info.key} is not monotone, so it cannot be an energy's activation; "
                                     "substituted relu (activation policy keep)")
    kind = "torch_hardsigmoid" if info.key == "hardsigmoid" else info.key
    return ActivationSpec(kind=kind, params=activation_params(node, gm)), None


def _weight_name(node: fx.Node) -> str:
    if node.op == "call_module":
        return str(node.target)
    for a in node.all_input_nodes[1:] if node.args and isinstance(node.args[0], fx.Node) else node.all_input_nodes:
        stack = [a]
        while stack:
            x = stack.pop()
            if x.op == "get_attr":
                t = str(x.target)
                return t[: -len(".weight")] if t.endswith(".weight") else t
            stack.extend(x.all_input_nodes)
    return node.name


def _ref(node: fx.Node) -> TensorRef:
    return TensorRef(node=node.name, shape=node.meta.get("hybridc_shape"), dtype=node.meta.get("hybridc_dtype"))


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
    keys = sorted(set(block_key.values()), key=lambda k: min(p.order[n] for n in block_key if block_key[n] == k))
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
    for n in p.nodes:
        info = p.info[n]
        k = block_key[n]
        analog = k[0] == "analog"
        policy = cfg.layer_norm if info.key in TOKEN_NORMS else cfg.norm
        if info.kind == "norm" and p.eligible.get(n) and (analog or policy == "drop"):
            identity[k].append(n.name)
            decisions.append(Decision(node=n.name, action="removed", block=names[k],
                                      reason=f"{info.key} removed (policy {policy}"
                                             f"{', inside an analog block' if analog else ''})"))
        elif info.kind == "linear" and info.key == "dropout" and analog:
            identity[k].append(n.name)
            decisions.append(Decision(node=n.name, action="removed", block=names[k],
                                      reason="dropout inside an analog block is the identity"))
        elif info.kind == "pool" and analog and not (
                info.key == "max_pool" and len(n.all_input_nodes) >= 1
                and p.info.get(n.all_input_nodes[0]) is not None
                and p.info[n.all_input_nodes[0]].kind == "activation" and len(n.all_input_nodes[0].users) == 1
                and block_key.get(n.all_input_nodes[0]) == k):
            decisions.append(Decision(node=n.name, action="absorbed", block=names[k],
                                      reason=f"{info.key} absorbed into a synapse (pool policy absorb)"))
        elif not analog and info.kind in ("weight", "norm", "pool", "activation") and not p.eligible.get(n):
            decisions.append(Decision(node=n.name, action="kept_digital", block=names[k],
                                      reason=p.reason.get(n) or "digital op"))

    io = block_io(gm, {names[k]: [n.name for n in members[k]] for k in topo}, p.free)
    blocks: list[Block] = []
    for k in topo:
        nodes = members[k]
        ins, outs = io[names[k]]
        block = Block(name=names[k], kind="analog" if k[0] == "analog" else "digital",
                      nodes=[n.name for n in nodes], identity_nodes=identity[k],
                      inputs=[_ref(a) for a in ins], outputs=[_ref(o) for o in outs],
                      params=_param_count(gm, nodes))
        if block.kind == "analog":
            block.eb_kind = cfg.eb_kind
            if cfg.eb_kind == "drn":
                block.eb_params = {"gamma": cfg.drn_gamma}
            block.weight_layers = [_weight_name(n) for n in nodes if p.info[n].kind == "weight"]
            node_set = set(nodes)
            pooled = {n: next(iter(n.users)) for n in nodes
                      if p.info[n].kind == "activation" and len(n.users) == 1
                      and next(iter(n.users)) in node_set and p.info[next(iter(n.users))].key == "max_pool"}
            pool_of = {v: k for k, v in pooled.items()}
            for n in nodes:
                info = p.info[n]
                if n in pooled:
                    # σ and max-pooling commute for monotone σ: put the neuron after the pool, so the pool
                    # acts on pre-activations (no argmax ties between saturated states) as in the paper.
                    block.identity_nodes.append(n.name)
                    decisions.append(Decision(
                        node=n.name, action="absorbed", block=block.name,
                        reason=f"{info.key} moved after {pooled[n].name} (max-pool commutes with monotone "
                               "activations); the neuron is the pooled value"))
                elif n in pool_of:
                    act = pool_of[n]
                    spec, dec = _activation_spec(act, p.info[act], gm, cfg)
                    if dec is not None:
                        dec.block = block.name
                        decisions.append(dec)
                    block.neurons.append(Neuron(node=n.name, activation=spec, preactivation="self",
                                                shape=n.meta.get("hybridc_shape")))
                elif info.kind == "activation":
                    spec, dec = _activation_spec(n, info, gm, cfg)
                    if dec is not None:
                        dec.block = block.name
                        decisions.append(dec)
                    block.neurons.append(Neuron(node=n.name, activation=spec, preactivation="input",
                                                shape=n.meta.get("hybridc_shape")))
                elif n in outs:
                    block.neurons.append(Neuron(node=n.name, activation=ActivationSpec(kind="identity"),
                                                preactivation="self", shape=n.meta.get("hybridc_shape")))
        blocks.append(block)

    decisions.sort(key=lambda d: p.order[next(n for n in gm.graph.nodes if n.name == d.node)])
    out_node = next(n for n in gm.graph.nodes if n.op == "output")
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    return Plan(
        model=ModelFingerprint(model_class=type(traced.gm).__name__, trace=traced.method,
                               graph_hash=graph_hash(gm), example_shapes=example_shapes),
        config=cfg,
        graph_inputs=[_ref(n) for n in placeholders],
        graph_outputs=[a.name for a in out_node.all_input_nodes],
        blocks=blocks,
        decisions=decisions,
    )
