"""The neurons pass: the neuron layers of every analog block and their activations.

A neuron is a value after a nonlinearity σ (an activation node: its pre-activation is its input, or a
composite's source), or an output of the block that no nonlinearity follows (σ the identity). σ is the
activation policy's: the paper's hard sigmoid, or the model's own when it has an energy form (`keep`; a
non-monotone one is replaced by ReLU). An activation read only by a max-pool of its block is moved after the
pool (they commute for monotone σ): the pooled value is the neuron, so the pool acts on pre-activations.

Writes `neuron` on each neuron node, `identity = "moved"` on each moved activation, and the decisions
(substitutions, moves).
"""

from __future__ import annotations

import torch.fx as fx

from hybridc.passes.classify import NodeInfo
from hybridc.passes.eligibility import activation_name, not_monotone
from hybridc.passes.node_meta import decide, rec
from hybridc.passes.ops import activation_params
from hybridc.plan import ActivationSpec, Decision, Neuron, PartitionConfig


def activation_spec(
    node: fx.Node, info: NodeInfo, gm: fx.GraphModule, cfg: PartitionConfig
) -> tuple[ActivationSpec, Decision | None]:
    """The σ of the neuron an activation node makes, and the decision that records a substitution (None when
    the model's own activation is kept as it is)."""
    name = activation_name(info)
    if cfg.activation == "hardsigmoid":
        spec = ActivationSpec(kind="hardsigmoid", params={"slope": cfg.hardsigmoid_slope})
        return spec, Decision(
            node=node.name, action="substituted", reason=f"{name} -> {spec} (activation policy hardsigmoid)"
        )
    if not_monotone(info):
        spec = ActivationSpec(kind="relu")
        return spec, Decision(
            node=node.name,
            action="substituted",
            reason=f"{name} is not monotone, so it cannot be an energy's activation; "
            "substituted relu (activation policy keep)",
        )
    kind = "torch_hardsigmoid" if info.key == "hardsigmoid" else info.key
    params = {} if info.composite else activation_params(node, gm)
    decision = None
    if info.composite:
        decision = Decision(
            node=node.name,
            action="substituted",
            reason=f"{name} -> {info.key} (one neuron; activation policy keep)",
        )
    return ActivationSpec(kind=kind, params=params), decision


def pooled_activations(nodes: list[fx.Node]) -> dict[fx.Node, fx.Node]:
    """{activation: the max-pool after it} for the block's activations read only by a max-pool of the same
    block (`nodes`): σ and max-pooling commute for monotone σ, so the neuron goes after the pool."""
    node_set = set(nodes)
    out: dict[fx.Node, fx.Node] = {}
    for n in nodes:
        info = rec(n).info
        if info.kind != "activation" or info.source is not None or len(n.users) != 1:
            continue
        (u,) = n.users
        if "hybridc_shape" in u.meta and u in node_set and rec(u).info.key == "max_pool":
            out[n] = u
    return out


def _sigma(gm: fx.GraphModule, act: fx.Node, cfg: PartitionConfig, block: str) -> ActivationSpec:
    """The σ of activation `act` in analog block `block`, its substitution (if any) recorded on `act`."""
    spec, dec = activation_spec(act, rec(act).info, gm, cfg)
    if dec is not None:
        dec.block = block
        decide(act, dec)
    return spec


def mark_block_neurons(
    gm: fx.GraphModule, cfg: PartitionConfig, block: str, nodes: list[fx.Node], outputs: list[fx.Node]
) -> None:
    """Record the neurons of analog block `block` (its `nodes` in graph order; `outputs` the values it hands
    on), the activations moved after their pools, and the decisions about both."""
    pooled = pooled_activations(nodes)
    pool_of = {v: k for k, v in pooled.items()}
    for n in nodes:
        r = rec(n)
        if n in pooled:
            r.identity = "moved"
            decide(
                n,
                Decision(
                    node=n.name,
                    action="absorbed",
                    block=block,
                    reason=f"{r.info.key} moved after {pooled[n].name} (max-pool commutes with monotone "
                    "activations); the neuron is the pooled value",
                ),
            )
        elif n in pool_of:
            spec = _sigma(gm, pool_of[n], cfg, block)
            r.neuron = Neuron(
                node=n.name, activation=spec, preactivation="self", shape=n.meta.get("hybridc_shape")
            )
        elif r.info.kind == "activation":
            spec = _sigma(gm, n, cfg, block)
            r.neuron = Neuron(
                node=n.name,
                activation=spec,
                preactivation="input",
                shape=n.meta.get("hybridc_shape"),
                source=r.info.source.name if r.info.source is not None else None,
            )
        elif n in outputs:
            r.neuron = Neuron(
                node=n.name,
                activation=ActivationSpec(kind="identity"),
                preactivation="self",
                shape=n.meta.get("hybridc_shape"),
            )


def mark_neurons(
    gm: fx.GraphModule,
    cfg: PartitionConfig,
    members: dict[str, list[fx.Node]],
    io: dict[str, tuple[list[fx.Node], list[fx.Node]]],
) -> None:
    """Record the neurons of every analog block (`members`: each block's nodes; `io`: its inputs, outputs)."""
    for name, nodes in members.items():
        if rec(nodes[0]).block_kind == "analog":
            mark_block_neurons(gm, cfg, name, nodes, io[name][1])
