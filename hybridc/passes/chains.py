"""The chains pass: which eligible weight layers are linked into one chain.

Two weight layers are linked when an eligible path joins them (through activations, shape ops, residual adds,
absorbable norms and pools): such layers can relax together in one energy. A chain is a connected component
of that relation; the cut pass later splits each chain into analog blocks.
"""

from __future__ import annotations

import networkx as nx
import torch.fx as fx

from hybridc.passes.node_meta import compute_nodes, eligible, graph_order, kind, rec, record
from hybridc.passes.ops import value_inputs
from hybridc.passes.reach import walk


def _value_users(n: fx.Node) -> list[fx.Node]:
    """The nodes that read n's value (not only its shape)."""
    return [u for u in n.users if n in value_inputs(u)]


def nearest_weights(node: fx.Node, upstream: bool) -> set[fx.Node]:
    """The eligible weight layers that `node` reaches first (upstream: that reach it) along eligible paths.

    The walk stops at weights and at ineligible nodes. Past the first step it follows values only: a template
    operand (`h.reshape_as(x)` reads x's shape only) links no weights."""
    starts = list(node.all_input_nodes) if upstream else list(node.users)
    step = value_inputs if upstream else _value_users
    reached = walk(starts, step, expand=lambda n: eligible(n) and kind(n) != "weight")
    return {n for n in reached if eligible(n) and kind(n) == "weight"}


def mark_chains(gm: fx.GraphModule) -> None:
    """Number the chains of eligible weight layers (`chain`: 0, 1, ... by each chain's first layer in graph
    order); every other node gets `chain` None. Rerun after a weight is demoted (the cut pass does)."""
    order = graph_order(gm)
    for n in compute_nodes(gm):
        rec(n).chain = None
    g = nx.Graph()
    weights = [n for n in compute_nodes(gm) if eligible(n) and kind(n) == "weight"]
    g.add_nodes_from(weights)
    for w in weights:
        for v in nearest_weights(w, upstream=False):
            g.add_edge(w, v)
    comps = sorted(
        (sorted(c, key=order.__getitem__) for c in nx.connected_components(g)), key=lambda ws: order[ws[0]]
    )
    for i, ws in enumerate(comps):
        for w in ws:
            rec(w).chain = i


def chains(gm: fx.GraphModule) -> list[list[fx.Node]]:
    """The chains the chains pass recorded: each a list of weight nodes in graph (topological) order."""
    out: dict[int, list[fx.Node]] = {}
    for n in gm.graph.nodes:
        r = record(n)
        if r is not None and r.chain is not None:
            out.setdefault(r.chain, []).append(n)
    return [out[i] for i in sorted(out)]
