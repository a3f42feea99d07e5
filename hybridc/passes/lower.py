"""Lowering: turn a plan's blocks into GraphModules over the traced graph.

A digital block becomes `forward(*inputs) -> tuple(outputs)`. An analog block becomes its synapse graph
`forward(*inputs, *states) -> tuple(pre-activations)`: every neuron's value is replaced by a state
placeholder, so the graph computes u_j = Σ_i f_ij(s_i) + b_j for each neuron j.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.fx as fx

from hybridc.passes import reach
from hybridc.plan import Block


#: The data operand of ops replaced by the identity (removed norms, dropout).
def _data_arg(node: fx.Node) -> fx.Node:
    if node.args and isinstance(node.args[0], fx.Node):
        return node.args[0]
    for key in ("input", "x"):
        if isinstance(node.kwargs.get(key), fx.Node):
            return node.kwargs[key]
    raise ValueError(f"node {node.name} has no data operand to pass through")


def block_io(
    gm: fx.GraphModule, membership: dict[str, list[str]], free: set[fx.Node]
) -> dict[str, tuple[list[fx.Node], list[fx.Node]]]:
    """Inputs and outputs of every block, derived from node membership alone.

    An input is a value made outside the block (a graph input or another block's data node) that the
    block's nodes read, directly or through free nodes (which each block recomputes for itself).
    An output is a member that another block reads or that the graph returns.
    """
    by_name = {n.name: n for n in gm.graph.nodes}
    order = {n: i for i, n in enumerate(gm.graph.nodes)}
    inputs: dict[str, list[fx.Node]] = {}
    for name, nodes in membership.items():
        found = _outside_reads([by_name[x] for x in nodes], free)
        # data inputs first (graph order), then inputs read only for their shape or as masks (integer/bool):
        # an analog block takes its batch size, dtype and device from its first input
        inputs[name] = sorted(found, key=lambda a: (not _is_float(a), order[a]))
    out_node = next(n for n in gm.graph.nodes if n.op == "output")
    wanted = {a for ins in inputs.values() for a in ins} | set(out_node.all_input_nodes)
    result = {}
    for name, nodes in membership.items():
        outs = [by_name[x] for x in nodes if by_name[x] in wanted]
        outs = [o for o in outs if o not in inputs[name]]
        result[name] = (inputs[name], sorted(outs, key=order.__getitem__))
    return result


def _outside_reads(members: list[fx.Node], free: set[fx.Node]) -> list[fx.Node]:
    """The non-free values made outside `members` that they read, directly or through free nodes outside
    them (which the block recomputes, so what those read is read too); each once, in no particular order."""
    inside = set(members)

    def recomputed(a: fx.Node) -> bool:
        return a in free and a not in inside

    reads = [a for m in members for a in m.all_input_nodes]
    reached = reach.walk(reads, reach.inputs, expand=recomputed)
    return [a for a in reached if a not in inside and a not in free]


def _is_float(node: fx.Node) -> bool:
    dtype = node.meta.get("hybridc_dtype")
    return dtype is None or dtype.startswith(("float", "bfloat", "complex"))


@dataclass
class LoweredBlock:
    gm: fx.GraphModule
    inputs: list[str]  # names of the outer nodes feeding the placeholders, in order
    outputs: list[str]  # digital: outer nodes returned; analog: neuron nodes (pre-activations returned)


class _Copier:
    """Copies nodes of the outer graph into a new graph, recomputing free nodes where they are needed."""

    def __init__(self, outer: fx.Graph, block_nodes: set[str]):
        self.graph = fx.Graph()
        self.env: dict[fx.Node, fx.Node] = {}
        self.block_nodes = block_nodes
        self.by_name = {n.name: n for n in outer.nodes}

    def lookup(self, node: fx.Node) -> fx.Node:
        if node in self.env:
            return self.env[node]
        # a node from outside that is not an input: a free node (parameter expression, shape query)
        copied = self.graph.node_copy(node, self.lookup)
        self.env[node] = copied
        return copied


def lower_digital(gm: fx.GraphModule, block: Block, inputs: list[str], outputs: list[str]) -> LoweredBlock:
    cp = _Copier(gm.graph, set(block.nodes))
    for name in inputs:
        cp.env[cp.by_name[name]] = cp.graph.placeholder(_safe(name))
    identity = set(block.identity_nodes)
    members = set(block.nodes)
    for node in gm.graph.nodes:
        if node.name not in members or node in cp.env:
            continue
        if node.name in identity:
            cp.env[node] = cp.lookup(_data_arg(node))
        else:
            cp.env[node] = cp.graph.node_copy(node, cp.lookup)
    cp.graph.output(tuple(cp.env[cp.by_name[o]] for o in outputs))
    out = fx.GraphModule(gm, cp.graph, f"{block.name}")
    return LoweredBlock(out, list(inputs), list(outputs))


def lower_synapses(gm: fx.GraphModule, block: Block, inputs: list[str]) -> LoweredBlock:
    cp = _Copier(gm.graph, set(block.nodes))
    for name in inputs:
        cp.env[cp.by_name[name]] = cp.graph.placeholder(_safe(name))
    neurons = {n.node: n for n in block.neurons}
    states = {name: cp.graph.placeholder(f"s_{_safe(name)}") for name in neurons}
    identity = set(block.identity_nodes)
    members = set(block.nodes)
    pre: dict[str, fx.Node] = {}
    for node in gm.graph.nodes:
        if node.name not in members or node in cp.env:
            continue
        if node.name in neurons:
            if neurons[node.name].source:  # a composite activation: its pre-activation is its source
                pre[node.name] = cp.lookup(cp.by_name[neurons[node.name].source])
            elif neurons[node.name].preactivation == "input":
                pre[node.name] = cp.lookup(_data_arg(node))
            else:
                pre[node.name] = (
                    cp.lookup(_data_arg(node))
                    if node.name in identity
                    else cp.graph.node_copy(node, cp.lookup)
                )
            cp.env[node] = states[node.name]
        elif node.name in identity:
            cp.env[node] = cp.lookup(_data_arg(node))
        else:
            cp.env[node] = cp.graph.node_copy(node, cp.lookup)
    cp.graph.output(tuple(pre[n.node] for n in block.neurons))
    out = fx.GraphModule(gm, cp.graph, f"{block.name}_synapses")
    out.graph.eliminate_dead_code()
    out.recompile()
    return LoweredBlock(out, list(inputs), [n.node for n in block.neurons])


def _safe(name: str) -> str:
    return name if name.isidentifier() else "v_" + "".join(c if c.isalnum() else "_" for c in name)


def split_synapses(syn: fx.GraphModule, n_inputs: int) -> tuple[fx.GraphModule, fx.GraphModule, int]:
    """Split a synapse graph into a prefix that depends on the block inputs only (computed once per
    relaxation phase) and a core `(cut values..., states...) -> pre-activations` (computed every step).

    E.g. for u_1 = W_1 x + b_1 the product W_1 x is the same at every step of a phase: the core reads it.
    Returns (prefix, core, number of cut values).
    """
    graph = syn.graph
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    inputs, states = placeholders[:n_inputs], placeholders[n_inputs:]
    out_node = next(n for n in graph.nodes if n.op == "output")
    state_dep: set[fx.Node] = set(states)
    input_dep: set[fx.Node] = set(inputs)
    for n in graph.nodes:
        if n.op in ("placeholder", "output"):
            continue
        if any(a in state_dep for a in n.all_input_nodes):
            state_dep.add(n)
        elif any(a in input_dep for a in n.all_input_nodes):
            input_dep.add(n)

    core = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    cut: list[fx.Node] = []

    def lookup(node: fx.Node) -> fx.Node:
        if node in env:
            return env[node]
        # cut tensors only: a Python value computed from an input (a symbolic size) is recomputed in the core
        if (
            node in input_dep
            and node not in state_dep
            and (node.op == "placeholder" or "hybridc_shape" in node.meta)
        ):
            cut.append(node)
            env[node] = core.placeholder(f"cut_{len(cut) - 1}")
            return env[node]
        env[node] = core.node_copy(node, lookup)  # parameters and shape queries: recomputed in the core
        return env[node]

    state_ph = {s: core.placeholder(s.name) for s in states}
    env.update(state_ph)
    for n in graph.nodes:
        if n in state_dep and n.op != "placeholder":
            env[n] = core.node_copy(n, lookup)
    core.output(tuple(lookup(a) for a in out_node.args[0]))
    # placeholders must come first, in the order (cut..., states...)
    ordered = fx.Graph()
    remap: dict[fx.Node, fx.Node] = {}
    cut_ph = [env[c] for c in cut]
    for ph in cut_ph + [state_ph[s] for s in states]:
        remap[ph] = ordered.placeholder(ph.name)
    for n in core.nodes:
        if n.op != "placeholder":
            remap[n] = ordered.node_copy(n, lambda a: remap[a])
    core_gm = fx.GraphModule(syn, ordered, f"{type(syn).__name__}_core")

    prefix = fx.Graph()
    penv: dict[fx.Node, fx.Node] = {}

    def plookup(node: fx.Node) -> fx.Node:
        if node not in penv:  # a parameter expression or shape query: copied where needed
            penv[node] = prefix.node_copy(node, plookup)
        return penv[node]

    for x in inputs:
        penv[x] = prefix.placeholder(x.name)
    for n in graph.nodes:
        if n in input_dep and n.op != "placeholder" and n not in penv:
            penv[n] = prefix.node_copy(n, plookup)
    prefix.output(tuple(penv[c] for c in cut))
    prefix_gm = fx.GraphModule(syn, prefix, f"{type(syn).__name__}_prefix")
    prefix_gm.graph.eliminate_dead_code()
    prefix_gm.recompile()
    return prefix_gm, core_gm, len(cut)
