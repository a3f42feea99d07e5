"""The digital-groups pass: which digital nodes form one digital block.

A digital node's *analog depth* is the number of analog blocks on the deepest path from the graph inputs to
it. Digital nodes joined by edges at equal depth form one group; grouping only within a depth keeps the
block graph a DAG (a digital block never feeds an analog block that feeds it back).
"""

from __future__ import annotations

import networkx as nx
import torch.fx as fx

from hybridc.passes.node_meta import compute_nodes, data_inputs, graph_order, is_free, rec, record


def _group(n: fx.Node) -> int | None:
    r = record(n)
    return r.group if r is not None else None


def analog_depths(gm: fx.GraphModule) -> dict[fx.Node, int]:
    """The analog depth of every non-free compute node (an analog member: its block's depth, 1 + the deepest
    depth it reads from outside the block)."""
    nodes = [n for n in compute_nodes(gm) if not is_free(n)]
    depth: dict[fx.Node, int] = {}
    block_depth: dict[int, int] = {}
    # analog block depth = 1 + max depth of its external inputs; computed in graph order, which is
    # topological for nodes and (after the acyclicity check) consistent for blocks.
    pending_inputs: dict[int, int] = {}
    for n in nodes:
        ins = data_inputs(n)
        b = _group(n)
        if b is not None:
            ext = [depth[a] for a in ins if _group(a) != b]
            pending_inputs[b] = max([pending_inputs.get(b, 0), *ext]) if ext else pending_inputs.get(b, 0)
            block_depth[b] = pending_inputs[b] + 1
            depth[n] = block_depth[b]
        else:
            depth[n] = max((depth[a] for a in ins), default=0)
    # a block's depth may rise after its first node was seen: recompute digital depths until stable
    for _ in range(len(compute_nodes(gm))):
        changed = False
        for n in nodes:
            ins = data_inputs(n)
            b = _group(n)
            if b is not None:
                d = max([block_depth[b]] + [depth[a] + 1 for a in ins if _group(a) != b])
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
    return depth


def mark_digital_groups(gm: fx.GraphModule) -> None:
    """Record `digital_group` = (analog depth, graph position of the group's first node) on every non-free
    node outside the analog groups: digital nodes connected at one depth share it."""
    order = graph_order(gm)
    depth = analog_depths(gm)
    g = nx.Graph()
    digital = [n for n in compute_nodes(gm) if _group(n) is None and not is_free(n)]
    g.add_nodes_from(digital)
    for n in digital:
        for a in data_inputs(n):
            if _group(a) is None and depth[a] == depth[n]:
                g.add_edge(a, n)
    for comp in nx.connected_components(g):
        first = min(comp, key=order.__getitem__)
        for n in comp:
            rec(n).digital_group = (depth[n], order[first])
