"""The policies pass: what the norm, dropout and pool policies do to each node once its block is known, and
why a weight, norm, pool or activation outside the analog blocks stayed digital.

Writes `identity = "removed"` on a norm or dropout that its block evaluates as the identity, and records a
decision per node: a norm kept in an input synapse or removed, a dropout removed, a pool absorbed into a
synapse, a node kept digital (with the eligibility pass's reason).
"""

from __future__ import annotations

import operator

import torch.fx as fx

from hybridc.passes.eligibility import norm_policy
from hybridc.passes.node_meta import compute_nodes, data_inputs, decide, eligible, kind, rec, record
from hybridc.passes.parameters import zero_scale
from hybridc.passes.reach import walk
from hybridc.plan import Decision, PartitionConfig


def reads_own_neuron(n: fx.Node) -> bool:
    """Does n read a neuron (activation) of its own block, directly or through members of that block?"""
    block = rec(n).block
    reached = walk(data_inputs(n), data_inputs, expand=lambda a: rec(a).block == block)
    return any(rec(a).block == block and kind(a) == "activation" for a in reached)


def _pool_after_own_activation(n: fx.Node) -> bool:
    """Is n a max-pool whose input is an activation of the same block read by n alone (the neurons pass
    moves that activation after the pool, so the pool is not a synapse's)?"""
    if rec(n).info.key != "max_pool" or len(n.all_input_nodes) < 1:
        return False
    a = n.all_input_nodes[0]
    ra = record(a)
    return (
        ra is not None
        and ra.info.kind == "activation"
        and ra.info.source is None
        and len(a.users) == 1
        and ra.block == rec(n).block
    )


def _policy_decision(gm: fx.GraphModule, n: fx.Node, cfg: PartitionConfig) -> Decision | None:
    """The decision the policies make about n (and n's `identity` mark), or None."""
    r = rec(n)
    info = r.info
    analog = r.block_kind == "analog"
    policy, _ = norm_policy(info, cfg)
    if (
        info.kind == "norm"
        and analog
        and policy == "synapse"
        and cfg.eb_kind == "dhn"
        and r.eligible
        and not reads_own_neuron(n)
    ):
        # the paper's block entry (conv -> pool -> BN): the norm reads the block's inputs only, so it is
        # part of the input synapse, evaluated once per relaxation phase (DHNBlock.prepare); a DRN block's
        # synapses are its conductances only, so there the norm is removed as before
        if n.target is operator.getitem:  # item 0 of an exported norm's tuple: reported with the norm
            return None
        return Decision(
            node=n.name,
            action="absorbed",
            block=r.block,
            reason=f"{info.key} kept in the block's input synapse (policy synapse: "
            "it reads the block's inputs only)",
        )
    if info.kind == "norm" and r.eligible and (analog or policy == "drop"):
        r.identity = "removed"
        if n.target is operator.getitem:  # item 0 of an exported norm's tuple: removed with the norm
            return None
        zero = (
            ": its scale is zero (a zero-init residual branch), so the branch no longer starts at zero"
            if zero_scale(gm, n)
            else ""
        )
        return Decision(
            node=n.name,
            action="removed",
            block=r.block,
            reason=f"{info.key} removed (policy {policy}"
            f"{', inside an analog block' if analog else ''}){zero}",
        )
    if info.kind == "linear" and info.key == "dropout" and analog:
        r.identity = "removed"
        return Decision(
            node=n.name,
            action="removed",
            block=r.block,
            reason="dropout inside an analog block is the identity",
        )
    if (
        info.kind == "pool"
        and analog
        and n.target is not operator.getitem
        and not _pool_after_own_activation(n)
    ):
        return Decision(
            node=n.name,
            action="absorbed",
            block=r.block,
            reason=f"{info.key} absorbed into a synapse (pool policy absorb)",
        )
    if not analog and info.kind in ("weight", "norm", "pool", "activation") and not eligible(n):
        return Decision(node=n.name, action="kept_digital", block=r.block, reason=r.reason or "digital op")
    return None


def apply_policies(gm: fx.GraphModule, cfg: PartitionConfig) -> None:
    """Mark the nodes each block replaces by the identity; record the policies' decisions, in graph order."""
    for n in compute_nodes(gm):
        d = _policy_decision(gm, n, cfg)
        if d is not None:
            decide(n, d)
