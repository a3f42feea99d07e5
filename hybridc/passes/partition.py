"""The partition pass: a traced graph split into analog (energy-based) blocks of at most `max_block_size`
weight layers and digital blocks, written as a `Plan`.

`partition_graph` runs small passes in order, each recording what it decides in `node.meta["hybridc"]`
(`hybridc.passes.node_meta.PartitionMeta`):

1. eligibility     classify each node; may it live inside an analog block, and if not, why
2. chains          link eligible weight layers into chains (connected by eligible paths)
3. cut             cut each chain into groups of <= max_block_size weights, split cycles away
4. digital groups  group the remaining nodes by analog depth, so the block graph stays a DAG
5. blocks          name the blocks in a deterministic topological order (checked acyclic)
6. policies        norms, dropout and pools inside blocks: kept in a synapse, removed or absorbed
7. neurons         the neuron layers of every analog block and their activations

and `plan_builder.build_plan` reads the records into the plan (`plan_builder.validate_plan` checks a plan
against a graph). The result depends on the graph and the config only, never on PYTHONHASHSEED.
"""

from __future__ import annotations

from hybridc.passes.blocks import block_members, mark_blocks
from hybridc.passes.chains import mark_chains
from hybridc.passes.cut import cut_blocks
from hybridc.passes.digital_groups import mark_digital_groups
from hybridc.passes.eligibility import mark_eligibility
from hybridc.passes.lower import block_io
from hybridc.passes.neurons import mark_neurons
from hybridc.passes.node_meta import compute_nodes, is_free
from hybridc.passes.plan_builder import build_plan, graph_hash
from hybridc.passes.policies import apply_policies
from hybridc.passes.trace import TracedGraph
from hybridc.plan import PartitionConfig, Plan

__all__ = ["graph_hash", "partition_graph"]


def partition_graph(traced: TracedGraph, cfg: PartitionConfig, example_shapes: list[list[int]]) -> Plan:
    """Run the partition passes over a traced graph (annotating its nodes) and return the plan."""
    gm = traced.gm
    mark_eligibility(gm, cfg)
    mark_chains(gm)
    cut_blocks(gm, cfg)
    mark_digital_groups(gm)
    names = mark_blocks(gm)
    apply_policies(gm, cfg)
    members = block_members(gm, names)
    free = {n for n in compute_nodes(gm) if is_free(n)}
    io = block_io(gm, {name: [n.name for n in nodes] for name, nodes in members.items()}, free)
    mark_neurons(gm, cfg, members, io)
    return build_plan(traced, cfg, example_shapes, members, io)
