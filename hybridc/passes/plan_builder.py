"""The plan, built from what the partition passes recorded in `node.meta`, and its check against a graph.

`build_plan` reads each node's `PartitionMeta` (block, identity mark, neuron, decisions) and writes the
declarative `Plan`; `validate_plan` refuses a plan (hand-edited, or made from another model) that does not
describe a traced graph. `graph_hash` is the structural fingerprint both use.
"""

from __future__ import annotations

import hashlib

import torch.fx as fx

from hybridc.errors import PlanMismatchError
from hybridc.passes.node_meta import rec, record
from hybridc.passes.parameters import param_count, weight_name
from hybridc.passes.trace import TracedGraph
from hybridc.plan import Block, ModelFingerprint, PartitionConfig, Plan, TensorRef


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


def tensor_ref(node: fx.Node) -> TensorRef:
    """A value crossing a block boundary: its node, example shape and dtype."""
    return TensorRef(
        node=node.name, shape=node.meta.get("hybridc_shape"), dtype=node.meta.get("hybridc_dtype")
    )


def build_block(
    gm: fx.GraphModule,
    cfg: PartitionConfig,
    name: str,
    nodes: list[fx.Node],
    io: tuple[list[fx.Node], list[fx.Node]],
) -> Block:
    """The plan block `name` (its `nodes` in graph order, `io` its inputs and outputs) from their records.

    Identity nodes: the removed norms and dropouts, then the activations moved after their pools."""
    ins, outs = io
    recs = [rec(n) for n in nodes]
    block = Block(
        name=name,
        kind=recs[0].block_kind,
        nodes=[n.name for n in nodes],
        identity_nodes=[n.name for n, r in zip(nodes, recs) if r.identity == "removed"]
        + [n.name for n, r in zip(nodes, recs) if r.identity == "moved"],
        inputs=[tensor_ref(a) for a in ins],
        outputs=[tensor_ref(o) for o in outs],
        params=param_count(gm, nodes),
    )
    if block.kind == "analog":
        block.eb_kind = cfg.eb_kind
        if cfg.eb_kind == "drn":
            block.eb_params = {"gamma": cfg.drn_gamma}
        block.weight_layers = [weight_name(n, r.info) for n, r in zip(nodes, recs) if r.info.kind == "weight"]
        block.neurons = [r.neuron for r in recs if r.neuron is not None]
    return block


def build_plan(
    traced: TracedGraph,
    cfg: PartitionConfig,
    example_shapes: list[list[int]],
    members: dict[str, list[fx.Node]],
    io: dict[str, tuple[list[fx.Node], list[fx.Node]]],
) -> Plan:
    """The plan of a graph the partition passes annotated: blocks in the order of `members`, decisions by
    node in graph order (each node's in the order they were made)."""
    gm = traced.gm
    blocks = [build_block(gm, cfg, name, nodes, io[name]) for name, nodes in members.items()]
    decisions = [d for n in gm.graph.nodes if (r := record(n)) is not None for d in r.decisions]
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
        graph_inputs=[tensor_ref(n) for n in placeholders],
        graph_outputs=[a.name for a in out_node.all_input_nodes],
        blocks=blocks,
        decisions=decisions,
    )


def validate_plan(plan: Plan, traced: TracedGraph) -> None:
    """Refuse a plan that does not describe this graph, with the first differences named."""
    gm = traced.gm
    compute = [n.name for n in gm.graph.nodes if n.op not in ("placeholder", "output")]
    problems: list[str] = []
    if plan.model.trace != traced.method:
        problems.append(f"plan was traced with {plan.model.trace}, this model traces with {traced.method}")
    seen: dict[str, str] = {}
    for b in plan.blocks:
        for n in b.nodes:
            if n in seen:
                problems.append(f"node {n!r} is in both {seen[n]} and {b.name}")
            seen[n] = b.name
    missing = [n for n in compute if n not in seen]
    extra = [n for n in seen if n not in set(compute)]
    if missing:
        problems.append(f"model nodes not in any block: {missing[:8]}{' ...' if len(missing) > 8 else ''}")
    if extra:
        problems.append(f"plan nodes not in the model: {extra[:8]}{' ...' if len(extra) > 8 else ''}")
    if not problems and plan.model.graph_hash != graph_hash(gm):
        problems.append(
            "the graph's structure or shapes differ from the plan's (hash "
            f"{plan.model.graph_hash} vs {graph_hash(gm)}): were the layers or input shape changed?"
        )
    names = [b.name for b in plan.blocks]
    if len(set(names)) != len(names):
        problems.append("block names are not unique")
    for b in plan.analog_blocks:
        node_set = set(b.nodes)
        for nr in b.neurons:
            if nr.node not in node_set:
                problems.append(f"{b.name}: neuron {nr.node!r} is not one of the block's nodes")
        for i in b.identity_nodes:
            if i not in node_set:
                problems.append(f"{b.name}: identity node {i!r} is not one of the block's nodes")
        if len(b.weight_layers) > plan.config.max_block_size:
            problems.append(
                f"{b.name}: {len(b.weight_layers)} weight layers > max_block_size "
                f"{plan.config.max_block_size}"
            )
    if problems:
        raise PlanMismatchError(
            f"the plan does not match model {plan.model.model_class}:\n  - "
            + "\n  - ".join(problems)
            + "\n  Re-create it with `hybridc partition` for this model."
        )
