"""What the partition passes record on each node: `node.meta["hybridc"]`, a `PartitionMeta` per compute node.

The passes run in order and each fills in its fields (see `hybridc.passes.partition`):

    eligibility     info, eligible, reason   what the node is; may it live inside an analog block, why not
    chains          chain                    weight layers linked by eligible paths (chain index)
    cut             group                    the analog group (<= max_block_size weight layers) it is in
    digital_groups  digital_group            (analog depth, first node) of a digital node
    blocks          block, block_kind        the plan block it ends up in ("analog0", "digital3", ...)
    policies        identity = "removed"     a norm or dropout its block evaluates as the identity
    neurons         neuron                   the neuron layer this node's value is, in an analog block
                    identity = "moved"       an activation moved after its max-pool
    (every pass)    decisions                what was changed or kept digital about this node, in order

Placeholders and the output node carry no record. The fields hold values, plan objects and classify's
`NodeInfo` (whose `source` is a node of the same graph), so a graph copy carries them harmlessly. The
eligibility pass replaces every record, so partitioning the same traced graph again (under another config)
starts afresh.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch.fx as fx

from hybridc.passes.classify import NodeInfo
from hybridc.passes.reach import walk
from hybridc.plan import Decision, Neuron

META_KEY = "hybridc"


@dataclass
class PartitionMeta:
    """The partition passes' record of one compute node (fields in the order the passes fill them)."""

    info: NodeInfo
    eligible: bool = False
    reason: str = ""
    chain: int | None = None
    group: int | None = None
    digital_group: tuple[int, int] | None = None
    block: str | None = None
    block_kind: str | None = None
    identity: str = ""  # "removed" (a norm/dropout made the identity), "moved" (σ moved after its max-pool)
    neuron: Neuron | None = None
    decisions: list[Decision] = field(default_factory=list)


def record(n: fx.Node) -> PartitionMeta | None:
    """n's record (None for placeholders, the output node, or before the eligibility pass ran)."""
    return n.meta.get(META_KEY)


def rec(n: fx.Node) -> PartitionMeta:
    """n's record, which a compute node has once the eligibility pass ran."""
    return n.meta[META_KEY]


def kind(n: fx.Node) -> str:
    """n's classified kind ("weight", "activation", ...); "" for a node without a record."""
    r = record(n)
    return r.info.kind if r is not None else ""


def is_free(n: fx.Node) -> bool:
    """Does n compute no data (a parameter expression, constant or shape query)?"""
    return kind(n) == "free"


def eligible(n: fx.Node) -> bool:
    """May n live inside an analog block (as the eligibility pass and later demotions decided)?"""
    r = record(n)
    return r is not None and r.eligible


def compute_nodes(gm: fx.GraphModule) -> list[fx.Node]:
    """The graph's nodes but the placeholders and the output, in graph order."""
    return [n for n in gm.graph.nodes if n.op not in ("placeholder", "output")]


def graph_order(gm: fx.GraphModule) -> dict[fx.Node, int]:
    """Each node's position in the graph (a topological order)."""
    return {n: i for i, n in enumerate(gm.graph.nodes)}


def decide(n: fx.Node, decision: Decision) -> Decision:
    """Record a decision about n (kept in the order made; the plan lists them by node, in graph order)."""
    rec(n).decisions.append(decision)
    return decision


def _through_free(n: fx.Node, upstream: bool) -> list[fx.Node]:
    """The nearest non-free neighbours of n in one direction (graph inputs or the output excluded), in the
    order the walk meets them (depth first, the last listed input or user first)."""

    def step(x: fx.Node) -> list[fx.Node]:
        return list(x.all_input_nodes) if upstream else list(x.users)

    boundary = "placeholder" if upstream else "output"
    return [a for a in walk(step(n), step, expand=is_free) if not is_free(a) and a.op != boundary]


def data_inputs(n: fx.Node) -> list[fx.Node]:
    """Non-free producers of n's inputs, looking through free nodes (a shape query of x depends on x)."""
    return _through_free(n, upstream=True)


def data_users(n: fx.Node) -> list[fx.Node]:
    """Non-free nodes that read n, looking through free nodes (`x.size(0)`)."""
    return _through_free(n, upstream=False)
