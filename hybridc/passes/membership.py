"""Which nodes besides its weight layers an analog group holds: the activations, shape ops, norms and pools
between its weights, the shape templates it reads, the items of its tuples, and the reshapes that give its
inputs and outputs a leading batch dimension.

Used by the cut pass, which calls `assign` for every candidate cut and `absorb_batch_restoring_tails` once
for the final one; membership is a map {node: group index} that the cut pass writes to `node.meta`.
"""

from __future__ import annotations

import torch.fx as fx

from hybridc.passes.chains import nearest_weights
from hybridc.passes.node_meta import compute_nodes, data_inputs, data_users, eligible, is_free, kind, rec
from hybridc.passes.ops import value_inputs

Membership = dict[fx.Node, int]


def _candidates(gm: fx.GraphModule) -> list[fx.Node]:
    """Eligible non-weight nodes in graph order: what may join a group besides its weights."""
    return [n for n in compute_nodes(gm) if not is_free(n) and eligible(n) and kind(n) != "weight"]


def assign(gm: fx.GraphModule, groups: list[list[fx.Node]]) -> Membership:
    """Analog membership: weights by group; an eligible node joins the latest group upstream of it
    when it also feeds a weight of that group (else it is a head/tail and stays digital)."""
    group_of: Membership = {}
    for gi, ws in enumerate(groups):
        for w in ws:
            group_of[w] = gi
    member = dict(group_of)
    candidates = _candidates(gm)
    for n in candidates:
        up = nearest_weights(n, upstream=True)
        if not up:
            continue
        g = max(group_of[w] for w in up)
        if any(group_of[w] == g for w in nearest_weights(n, upstream=False)):
            member[n] = g
    # a value read by the group only for its shape (the template of `copy`/`view_as`, a size query)
    # joins the group too, or the group would read back a value it produced
    changed = True
    while changed:
        changed = False
        for n in candidates:
            if n in member:
                continue
            up = nearest_weights(n, upstream=True)
            if up and any(member.get(u) == max(group_of[w] for w in up) for u in data_users(n)):
                member[n] = max(group_of[w] for w in up)
                changed = True
    # a tuple (split/chunk/unbind) never leaves its block: its items join it, the block hands on tensors
    for n in list(member):
        if "hybridc_shape" not in n.meta and kind(n) == "linear":
            for u in n.users:
                if u not in member and eligible(u):
                    member[u] = member[n]
    return member


def external_inputs(member: Membership, g: int) -> set[fx.Node]:
    """Values group g reads from outside."""
    return {a for m, gm in member.items() if gm == g for a in data_inputs(m) if member.get(a) != g}


def _batch_size(gm: fx.GraphModule) -> int | None:
    """The leading dimension of the first graph input that has a shape: the batch size."""
    return next(
        (
            n.meta["hybridc_shape"][0]
            for n in gm.graph.nodes
            if n.op == "placeholder" and n.meta.get("hybridc_shape")
        ),
        None,
    )


def _is_reshape(n: fx.Node, keys: tuple[str, ...]) -> bool:
    return eligible(n) and kind(n) == "linear" and rec(n).info.key in keys


def absorb_batch_restoring_tails(gm: fx.GraphModule, member: Membership) -> None:
    """A neuron's state is per sample, so an analog block's output must lead with the batch dimension.
    HF's Conv1D computes `addmm(b, x.view(-1, n), W).view(B, T, m)`: the weight's output folds batch and
    tokens. Such an output takes the reshape after it into the block (no new block edges: the reshape
    reads only values of the block, some for their shape), so the neuron is the (B, T, m) value; and the
    `x.view(-1, n)` before the block's first weight joins the block, so its input is the (B, T, n) x."""
    batch = _batch_size(gm)
    if batch is None:
        return
    nodes = compute_nodes(gm)
    # the mirror image: `x.view(-1, n)` folding batch and tokens before the block's first weight joins the
    # block, so the block reads the (B, T, n) value and its inputs lead with the batch dimension too
    for n in nodes:
        shape = n.meta.get("hybridc_shape") or []
        users = {member.get(u) for u in data_users(n)}
        if (
            n in member
            or not shape
            or shape[0] == batch
            or not _is_reshape(n, ("view", "flatten"))
            or len(users) != 1
            or None in users
        ):
            continue
        ins = data_inputs(n)
        if ins and all(a not in member and (a.meta.get("hybridc_shape") or [None])[0] == batch for a in ins):
            member[n] = users.pop()
    for n in nodes:
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
                or not _is_reshape(u, ("view", "flatten", "unflatten"))
                or [a for a in value_inputs(u) if not is_free(a)] != [n]
                or any(member.get(a) != g and a not in external_inputs(member, g) for a in data_inputs(u))
            ):
                break
            member[u] = g
            n = u
