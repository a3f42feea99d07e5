"""The blocks pass: every compute node gets the plan block it belongs to, and the blocks their names.

Analog groups and digital groups become blocks; a free node (a parameter expression, a shape query) goes to
the block of its first user, so each block recomputes what it reads. The block graph is checked to be a DAG
and the blocks are named in a deterministic topological order ("analog0", "digital1", ...).
"""

from __future__ import annotations

import networkx as nx
import torch.fx as fx

from hybridc.errors import PartitionError
from hybridc.passes.node_meta import compute_nodes, data_inputs, graph_order, is_free, rec

BlockKey = tuple[str, object]  # ("analog", group index) or ("digital", digital group)


def _block_keys(gm: fx.GraphModule) -> dict[fx.Node, BlockKey]:
    """One key per compute node: its analog group, its digital group, or (free nodes) the block of its
    first non-free user (of its last producer when it has no user in a block, e.g. it is returned)."""
    nodes = compute_nodes(gm)
    order = graph_order(gm)
    block_key: dict[fx.Node, BlockKey] = {}
    for n in nodes:
        r = rec(n)
        if r.group is not None:
            block_key[n] = ("analog", r.group)
        elif not is_free(n):
            block_key[n] = ("digital", r.digital_group)
    # free nodes belong to the block of their first non-free user (or of their producer for outputs)
    for n in reversed(nodes):
        if is_free(n):
            users = sorted((u for u in n.users if u in block_key), key=order.__getitem__)
            if users:
                block_key[n] = block_key[users[0]]
    for n in nodes:
        if is_free(n) and n not in block_key:
            producers = [a for a in data_inputs(n) if a in block_key]
            block_key[n] = block_key[producers[-1]] if producers else ("digital", (0, -1))
    return block_key


def mark_blocks(gm: fx.GraphModule) -> list[str]:
    """Record `block` (its name) and `block_kind` ("analog"/"digital") on every compute node, and give the
    decisions recorded so far their block. Returns the block names in topological order (the plan's order).

    Raises PartitionError if the block graph has a cycle (the cut pass should have split it away)."""
    order = graph_order(gm)
    block_key = _block_keys(gm)
    bg = nx.DiGraph()
    keys = sorted(
        set(block_key.values()), key=lambda k: min(order[n] for n in block_key if block_key[n] == k)
    )
    bg.add_nodes_from(keys)
    for n, k in block_key.items():
        for a in data_inputs(n):
            if a in block_key and block_key[a] != k:
                bg.add_edge(block_key[a], k)
    if not nx.is_directed_acyclic_graph(bg):
        raise PartitionError("internal error: block graph has a cycle; please report this model")
    first = {k: i for i, k in enumerate(keys)}
    topo = list(nx.lexicographical_topological_sort(bg, key=first.__getitem__))
    names = {k: f"{k[0]}{i}" for i, k in enumerate(topo)}
    for n in compute_nodes(gm):
        r = rec(n)
        r.block, r.block_kind = names[block_key[n]], block_key[n][0]
        for d in r.decisions:
            d.block = r.block
    return [names[k] for k in topo]


def block_members(gm: fx.GraphModule, names: list[str]) -> dict[str, list[fx.Node]]:
    """Each block's nodes in graph order, the blocks in the order of `names`."""
    members: dict[str, list[fx.Node]] = {name: [] for name in names}
    for n in compute_nodes(gm):
        members[rec(n).block].append(n)
    return members
