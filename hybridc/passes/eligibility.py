"""The first partition pass: classify every node and decide whether it may live inside an analog block.

Writes a fresh `PartitionMeta` (info, eligible, reason) on every compute node. A node is eligible when its
kind has an energy form under the config's policies (weights, monotone activations, linear ops, norms and
pools that the policies absorb); a weight layer is also kept digital when its tensor is shared with a digital
reader (a tied embedding) or, under `readout=digital`, when it is the model's readout.
"""

from __future__ import annotations

import torch
import torch.fx as fx

from hybridc.passes.classify import NodeInfo, classify
from hybridc.passes.composite import UNKNOWN_COMPOSITE
from hybridc.passes.node_meta import META_KEY, PartitionMeta, compute_nodes, data_inputs, kind, rec
from hybridc.passes.ops import NON_MONOTONE_ACTIVATIONS, TOKEN_NORMS
from hybridc.passes.parameters import read_tensors, weight_tensor
from hybridc.passes.reach import walk
from hybridc.plan import PartitionConfig


def not_monotone(info: NodeInfo) -> bool:
    """An activation without an energy form as it is: non-monotone, or a composite matching none known."""
    return info.key in NON_MONOTONE_ACTIVATIONS or info.key == UNKNOWN_COMPOSITE


def activation_name(info: NodeInfo) -> str:
    """How the plan's decisions name an activation (a composite by what it was recognised as)."""
    return f"composite activation ({info.composite})" if info.composite else info.key


def norm_policy(info: NodeInfo, cfg: PartitionConfig) -> tuple[str, str]:
    """The policy that applies to a norm, and the config field it comes from (token norms: `layer_norm`)."""
    return (cfg.layer_norm, "layer_norm") if info.key in TOKEN_NORMS else (cfg.norm, "norm")


def node_eligibility(info: NodeInfo, cfg: PartitionConfig) -> tuple[bool, str]:
    """Can a node of this kind live inside an analog block under `cfg`? (False, reason) when it cannot."""
    if info.attention and cfg.attention == "digital":
        return False, f"inside attention ({info.attention}); attention policy is digital"
    if info.kind == "weight":
        return True, ""
    if info.kind == "activation":
        if not_monotone(info) and cfg.activation == "keep" and cfg.non_monotone == "refuse":
            return False, (
                f"{activation_name(info)} is not monotone and cannot be an energy's activation "
                "(non_monotone=refuse)"
            )
        return True, ""
    if info.kind in ("linear", "part"):
        return True, ""
    if info.kind == "norm":
        policy, field = norm_policy(info, cfg)
        if policy == "split":
            return False, f"{info.key} ({field} policy split)"
        return True, ""
    if info.kind == "pool":
        if cfg.pool == "digital":
            return False, "pooling (pool policy digital)"
        return True, ""
    return False, info.reason or "digital op"


def tied_to_digital(gm: fx.GraphModule) -> dict[fx.Node, str]:
    """Weight layers whose weight tensor is also read by a node that is not a weight layer (HF's `lm_head`
    tied to the token embedding): one tensor cannot be both an analog conductance array and a digital
    lookup table, so such a layer stays digital. Returns {weight node: reason}."""
    nodes = compute_nodes(gm)
    readers: dict[int, list[fx.Node]] = {}
    for n in nodes:
        for t in read_tensors(gm, n):
            if isinstance(t, torch.Tensor) and n not in readers.setdefault(id(t), []):
                readers[id(t)].append(n)
    out: dict[fx.Node, str] = {}
    for n in nodes:
        if kind(n) != "weight":
            continue
        w = weight_tensor(gm, n, rec(n).info)
        if not isinstance(w, torch.Tensor):
            continue
        others = [r for r in readers.get(id(w), []) if r is not n and kind(r) != "weight"]
        if others:
            out[n] = (
                f"its weight is tied to {others[0].name} ({rec(others[0]).info.key}), which is digital: one "
                "tensor cannot be both an analog conductance array and a digital table"
            )
    return out


def readout_layers(gm: fx.GraphModule) -> list[fx.Node]:
    """Weight layers whose result reaches the graph output unchanged but for single-input linear ops (view,
    flatten, dropout, scaling): the model's readout(s). Residual adds and other multi-input ops stop the
    walk, so only a layer that alone produces an output counts."""
    out_node = next(n for n in gm.graph.nodes if n.op == "output")

    def passes(n: fx.Node) -> bool:
        return kind(n) == "linear" and len(data_inputs(n)) == 1

    return [n for n in walk(data_inputs(out_node), data_inputs, expand=passes) if kind(n) == "weight"]


def demote(n: fx.Node, reason: str) -> None:
    """Keep an eligible node out of analog blocks, with the reason (a no-op for a node already ineligible)."""
    r = rec(n)
    if r.eligible:
        r.eligible = False
        r.reason = reason


def mark_eligibility(gm: fx.GraphModule, cfg: PartitionConfig) -> None:
    """Classify every node and record whether it may be analog (`eligible`) and, if not, why (`reason`).

    Replaces any record a previous partition left. Free nodes (no data) are never eligible: they are
    recomputed by whichever block needs them."""
    info = classify(gm)
    for n in gm.graph.nodes:
        n.meta.pop(META_KEY, None)
        if n in info:
            ok, why = (False, "") if info[n].kind == "free" else node_eligibility(info[n], cfg)
            n.meta[META_KEY] = PartitionMeta(info=info[n], eligible=ok, reason=why)
    for w, why in tied_to_digital(gm).items():
        demote(w, why)
    if cfg.readout == "digital":
        for w in readout_layers(gm):
            demote(w, "the model's readout (readout policy digital)")
