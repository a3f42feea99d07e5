"""The cut pass: each chain cut into analog groups of at most `max_block_size` weight layers, split further
where a group would make the block graph cyclic.

Writes `group` (the analog group index, groups numbered chain by chain in graph order) on every member of a
group, and records the cuts it had to add (`split`) and any weight it had to keep digital (`kept_digital`).
"""

from __future__ import annotations

import math

import networkx as nx
import torch.fx as fx

from hybridc.passes.chains import chains, mark_chains
from hybridc.passes.eligibility import demote
from hybridc.passes.membership import Membership, absorb_batch_restoring_tails, assign
from hybridc.passes.node_meta import compute_nodes, data_inputs, decide, graph_order, is_free, rec
from hybridc.passes.reach import descendants
from hybridc.plan import Decision, PartitionConfig

Vertex = tuple[str, object]  # ("a", group index) for an analog group, ("n", node name) for another node


def uniform_groups(items: list[fx.Node], max_size: int) -> list[list[fx.Node]]:
    """Cut an ordered list into ceil(n / max_size) contiguous groups whose sizes differ by at most one (the
    paper's uniform split)."""
    k = math.ceil(len(items) / max_size)
    base, extra = divmod(len(items), k)
    groups, start = [], 0
    for i in range(k):
        size = base + (1 if i < extra else 0)
        groups.append(items[start : start + size])
        start += size
    return groups


def _vertex(n: fx.Node, member: Membership) -> Vertex:
    return ("a", member[n]) if n in member else ("n", n.name)


def contracted(gm: fx.GraphModule, member: Membership) -> nx.DiGraph:
    """Analog groups contracted to one vertex each, digital nodes as they are. Vertices and edges are
    inserted in graph order (never from a set), so `find_cycle` finds the same cycle in every process."""
    g = nx.DiGraph()
    key = {n: _vertex(n, member) for n in compute_nodes(gm) if not is_free(n)}
    g.add_nodes_from(dict.fromkeys(key.values()))
    for n in key:
        for a in data_inputs(n):
            if a in key and key[a] != key[n]:
                g.add_edge(key[a], key[n])
    return g


def cut_point(gm: fx.GraphModule, ws: list[fx.Node], gi: int, cycle: list[tuple], member: Membership) -> int:
    """Where to split group `gi` (weights `ws`) to break `cycle`: before the first weight downstream of
    the member through which the cycle re-enters the group (so the part the cycle leaves from and the
    part it comes back to become two blocks); the middle when that does not separate the weights."""
    me = ("a", gi)
    preds = [u for u, v, *_ in cycle if v == me and u != me]
    entries = [
        n
        for n in compute_nodes(gm)
        if member.get(n) == gi and any(_vertex(a, member) in preds for a in data_inputs(n))
    ]
    if entries:
        below = descendants(entries[0])
        cut = next((i for i, w in enumerate(ws) if w in below), len(ws))
        if 0 < cut < len(ws):
            return cut
    return len(ws) // 2


def split_cycles(gm: fx.GraphModule, groups: list[list[fx.Node]]) -> tuple[Membership, bool]:
    """Split groups (in place) until the block graph is acyclic: (membership, True). When a cycle holds only
    one-layer groups, keep its first weight digital instead: (membership, False), the chains must be
    recomputed.

    A cycle leaves an analog group through a digital node and comes back into it; it always passes a
    group of >= 2 weight layers (a one-layer group holds its weight only, and the graph itself is a DAG),
    so splitting the largest group on the cycle (the earliest among equals) makes progress."""
    order = graph_order(gm)
    while True:
        member = assign(gm, groups)
        try:
            cycle = nx.find_cycle(contracted(gm, member))
        except nx.NetworkXNoCycle:
            return member, True
        on_cycle = list(dict.fromkeys(k[1] for edge in cycle for k in edge[:2] if k[0] == "a"))
        bad = max(on_cycle, key=lambda gi: (len(groups[gi]), -order[groups[gi][0]]))
        ws = groups[bad]
        if len(ws) < 2:
            w = min((groups[gi][0] for gi in on_cycle), key=order.__getitem__)
            demote(
                w, "kept digital so that the block graph stays acyclic (no block on the cycle can be split)"
            )
            decide(w, Decision(node=w.name, action="kept_digital", reason=rec(w).reason))
            return member, False
        cut = cut_point(gm, ws, bad, cycle, member)
        groups[bad : bad + 1] = [ws[:cut], ws[cut:]]
        decide(
            ws[cut],
            Decision(
                node=ws[cut].name, action="split", reason="cut here so that the block graph stays acyclic"
            ),
        )


def cut_blocks(gm: fx.GraphModule, cfg: PartitionConfig) -> None:
    """Cut the recorded chains into analog groups and record each member's `group`.

    Each chain is split uniformly into groups of at most `cfg.max_block_size` weight layers; the other
    eligible nodes join groups (`membership.assign`); cycles in the block graph are split away; a weight
    kept digital to break a cycle changes the chains, so they are recomputed and cut again. Finally the
    reshapes that restore a batch dimension join their groups."""
    while True:
        groups: list[list[fx.Node]] = []
        for ws in chains(gm):
            groups.extend(uniform_groups(ws, cfg.max_block_size))
        member, ok = split_cycles(gm, groups)
        if ok:
            break
        mark_chains(gm)
    absorb_batch_restoring_tails(gm, member)
    for n in compute_nodes(gm):
        rec(n).group = member.get(n)
