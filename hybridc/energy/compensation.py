"""Moving the feedback guard's rescale downstream, where that is exact: the plan (`plan_compensation`, at
compile time) and its application after every rescale (`Compensation.apply_`).

Rescaling a DHN block's state-reading weights by t also shrinks its output. Where the block's top neurons
carry t exactly and every path to the weights reading them is positively homogeneous
(`hybridc.energy.homogeneity`), the top layers' biases are scaled by t with their weights and those consumer
weights by 1/t, so the feedforward function is kept and only the top-down feedback shrinks (the argument:
`hybridc.energy.contraction`'s docstring). Blocks are asked for what they are (`EnergyBlock.synapse_graph`,
`feedback_layers`), not tested for their class.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx
from torch import nn

from hybridc.energy.coupling import _LAYERS, _trainable
from hybridc.energy.homogeneity import _HOMOGENEOUS_NEURONS, _Broken, _degree, _param_of, _weight_operands
from hybridc.passes.reach import ancestors, users, walk


@dataclass
class Compensation:
    """How one DHN block's guard keeps its feedforward function: scale the top neurons' biases with their
    weights and the weights reading the block's output by 1/t (`applies`), or why it falls back to the plain
    rescale (`reason`). Holds module references (owner, attribute), resolved at every step, so a copy or an
    unpickled model compensates its own tensors."""

    outputs: list[str] = field(default_factory=list)
    #: the rescaled weights that compute those outputs (the top layers)
    layers: list[str] = field(default_factory=list)
    #: (label, owner module, attribute) of the top layers' biases, scaled by t with the weights
    biases: list[tuple[str, nn.Module, str]] = field(default_factory=list)
    #: (block, label, owner module, attribute) of every weight reading the block's output, scaled by 1/t
    consumers: list[tuple[str, str, nn.Module, str]] = field(default_factory=list)
    #: the ops the factor crosses between the block and the consumers (op names, first occurrence order)
    path: list[str] = field(default_factory=list)
    reason: str | None = None
    #: output neurons of a multi-output block left uncompensated, with why
    notes: list[str] = field(default_factory=list)

    @property
    def applies(self) -> bool:
        return self.reason is None and bool(self.consumers)

    def record(self) -> dict[str, Any]:
        """JSON-able summary: mode ("downstream" or "none"), outputs, biases, consumers (block:layer), path,
        reason (why not; None when it applies)."""
        return {
            "mode": "downstream" if self.applies else "none",
            "outputs": list(self.outputs),
            "layers": list(self.layers),
            "biases": [b[0] for b in self.biases],
            "consumers": [f"{c[0]}:{c[1]}" for c in self.consumers],
            "path": list(self.path),
            "reason": self.reason,
            "notes": list(self.notes),
        }

    @torch.no_grad()
    def apply_(self, t: torch.Tensor) -> None:
        """Biases ×t, consumer weights ×1/t (t > 0; where t = 0 the consumers are left alone)."""
        if not self.applies:
            return
        for _, owner, attr in self.biases:
            b = _trainable(owner, attr)
            b.mul_(t.to(b.dtype))
        inv = torch.where(t > 0, 1.0 / t.clamp_min(torch.finfo(t.dtype).tiny), torch.ones_like(t))
        for _, _, owner, attr in self.consumers:
            w = _trainable(owner, attr)
            w.mul_(inv.to(w.dtype))


def _top_terms(
    blk: nn.Module, j: int, scaled: dict[int, str]
) -> tuple[list[str], list[tuple[str, nn.Module, str]]]:
    """In-block half: the rescaled weights computing neuron j and the biases to scale with them so that its
    state becomes exactly t× what the unscaled layer computes; raises _Broken with the reason where not."""
    from hybridc.passes.ops import WEIGHT_OPS, op_key

    name, spec = blk.neuron_names[j], blk.activation_specs[j]
    if spec.kind not in _HOMOGENEOUS_NEURONS:
        what = (
            "a hard sigmoid clamp(a·u, 0, 1), not positively homogeneous"
            if spec.kind == "hardsigmoid"
            else f"{spec.kind}, not positively homogeneous"
        )
        raise _Broken(f"output neuron {name} has activation {what}")
    core = blk._split[1]
    states = [n for n in core.graph.nodes if n.op == "placeholder"][blk.n_cut :]
    if states[j].users:
        raise _Broken(
            f"output neuron {name} is read by other neurons of the block (it feeds back through them)"
        )
    out = next(n for n in core.graph.nodes if n.op == "output")
    pre = list(out.args[0])
    target = pre[j]
    # the cone of u_j: the nodes it is computed from
    cone = ancestors([target]) if isinstance(target, fx.Node) else set()
    deg: dict[fx.Node, int] = {}
    biases: list[tuple[str, nn.Module, str]] = []
    layers: list[str] = []
    sources: list[fx.Node] = []
    where = f"the pre-activation of output neuron {name}"
    for node in core.graph.nodes:
        if node not in cone or node.op in ("placeholder", "get_attr", "output"):
            continue
        is_weight = (
            node.op == "call_module" and isinstance(core.get_submodule(str(node.target)), _LAYERS)
        ) or (node.op == "call_function" and op_key(node, core) in WEIGHT_OPS)
        if is_weight:
            data, param, bias = _weight_operands(node, core)
            w = _trainable(param[1], param[2]) if param is not None else None
            if w is not None and id(w) in scaled:
                if deg.get(data, 0) if isinstance(data, fx.Node) else 0:
                    raise _Broken(f"{where}: two rescaled layers in series ({node.name})")
                sources.append(node)
                layers.append(param[0])
                deg[node] = 1
                if isinstance(bias, tuple) and getattr(bias[0], bias[1], None) is not None:
                    biases.append((f"{param[0]}.bias", bias[0], bias[1]))
                elif isinstance(bias, fx.Node):
                    bp = _param_of(bias, core)
                    if bp is None:
                        raise _Broken(f"{where}: the bias of {node.name} is not a parameter")
                    biases.append((bp[0], bp[1], bp[2]))
                continue
            if any(deg.get(a, 0) for a in node.all_input_nodes):
                raise _Broken(f"{where}: {node.name} applies an unscaled weight to a rescaled value")
            deg[node] = 0
            continue
        deg[node] = _degree(node, core, deg, where)
    if not isinstance(target, fx.Node) or deg.get(target, 0) != 1:
        raise _Broken(
            f"{where} has a term that the rescale does not scale (an identity skip, an input term or "
            "an unscaled bias)"
        )
    # the scaled biases must reach no other neuron
    fed = set(walk(sources, users))
    others = [blk.neuron_names[k] for k, p in enumerate(pre) if k != j and p in fed]
    if others:
        raise _Broken(f"the layer of output neuron {name} also feeds neuron(s) {others} of the block")
    return layers, biases


def _block_graph(model: nn.Module, name: str) -> fx.GraphModule | None:
    """The graph a block computes its outputs (digital) or pre-activations (an analog block's
    `EnergyBlock.synapse_graph`) with; None for a kind without one (DRN)."""
    blk = model.blocks[name]
    if isinstance(blk, fx.GraphModule):
        return blk
    return blk.synapse_graph


def plan_compensation(
    model: nn.Module, name: str, scaled: Sequence[tuple[str, torch.Tensor]]
) -> Compensation:
    """Decide, at compile time, whether analog block `name` of `model` (an FFEBM) can move its guard's factor
    downstream (`hybridc.energy.contraction`'s docstring): which top neurons and biases scale with t, which
    weights of later blocks scale by 1/t, and the ops in between; or why not (`reason`). `scaled`: the block's
    rescaled weights."""
    from hybridc.passes.ops import WEIGHT_OPS, op_key

    blk = model.blocks[name]
    comp = Compensation()
    scaled_ids = {id(w): n for n, w in scaled}
    try:
        if blk.analog.read_noise:
            raise _Broken("the block's neurons have read noise, which does not scale with the factor")
        if blk.analog.adc_bits:
            raise _Broken("the block's outputs are ADC-quantised, which does not commute with the factor")
        for j in blk.output_idx:
            try:
                layers, biases = _top_terms(blk, j, scaled_ids)
                comp.layers += layers
                comp.biases += biases
                comp.outputs.append(blk.neuron_names[j])
            except _Broken as exc:
                if len(blk.output_idx) == 1:
                    raise
                comp.notes.append(f"{blk.neuron_names[j]}: {exc}")
        if not comp.outputs:
            raise _Broken(
                "no output neuron of the block carries the factor exactly: " + "; ".join(comp.notes)
            )
        carried: dict[str, int] = dict.fromkeys(comp.outputs, 1)
        uses: dict[int, list[int]] = {}  # weight id -> degrees of the data it is applied to
        feedback_ids = {id(w) for b in model.analog_blocks.values() for _, w in b.feedback_layers()}
        for bname in model.blocks:  # topological order; the guarded block's own weights count as uses too
            ins, outs = model.io(bname)
            gm = _block_graph(model, bname)
            analog = bname in model.analog_blocks
            reads = any(carried.get(x, 0) for x in ins)
            if reads and gm is None:  # a kind without a synapse graph the factor could be followed through
                raise _Broken(f"block {bname}, a {model.blocks[bname].kind.upper()} block, reads the output")
            if reads and analog and model.blocks[bname].analog.dac_bits:
                raise _Broken(
                    f"block {bname} DAC-quantises its inputs, which does not commute with the factor"
                )
            if gm is None:
                continue
            placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
            deg: dict[fx.Node, int] = {placeholders[i]: carried.get(x, 0) for i, x in enumerate(ins)}
            where = f"block {bname}"
            for node in gm.graph.nodes:
                if node.op in ("placeholder", "get_attr", "output"):
                    continue
                is_weight = (
                    node.op == "call_module" and isinstance(gm.get_submodule(str(node.target)), _LAYERS)
                ) or (node.op in ("call_function", "call_method") and op_key(node, gm) in WEIGHT_OPS)
                if is_weight:
                    data, param, _ = _weight_operands(node, gm)
                    d = deg.get(data, 0) if isinstance(data, fx.Node) else 0
                    others = [a for a in node.all_input_nodes if a is not data and deg.get(a, 0)]
                    if param is not None:
                        uses.setdefault(id(_trainable(param[1], param[2])), []).append(d)
                    if d and (param is None or others):
                        raise _Broken(
                            f"{where}: {node.name} reads the factor through an operand that is not "
                            "its data input"
                        )
                    if d:
                        w = _trainable(param[1], param[2])
                        if id(w) in feedback_ids or id(w) in scaled_ids:
                            raise _Broken(f"{where}: the weight of {node.name} also reads neuron states")
                        if all(w is not _trainable(c[2], c[3]) for c in comp.consumers):
                            comp.consumers.append((bname, param[0], param[1], param[2]))
                    deg[node] = 0
                    continue
                deg[node] = _degree(node, gm, deg, where)
                if deg[node]:
                    key = op_key(node, gm)
                    if key not in comp.path:
                        comp.path.append(key)
            out = next(n for n in gm.graph.nodes if n.op == "output")
            values = list(out.args[0]) if isinstance(out.args[0], (tuple, list)) else [out.args[0]]
            if analog:
                hit = [
                    blk2
                    for blk2, v in zip(model.blocks[bname].neuron_names, values)
                    if isinstance(v, fx.Node) and deg.get(v, 0)
                ]
                if hit:
                    raise _Broken(f"{where}: neuron(s) {hit} read the output without a weight in between")
            else:
                for o, v in zip(outs, values):
                    if isinstance(v, fx.Node) and deg.get(v, 0):
                        carried[o] = 1
        graph_out: list[str] = []
        fx.node.map_arg(model._output_template, lambda n: graph_out.append(n.name))
        reaching = [o for o in graph_out if carried.get(o)]
        if reaching:
            raise _Broken(
                f"the output reaches the model's output {reaching} (compensating it would need a "
                "digital output gain)"
            )
        shared = [
            c[1] for c in comp.consumers if any(d == 0 for d in uses.get(id(_trainable(c[2], c[3])), []))
        ]
        if shared:
            raise _Broken(f"weight(s) {shared} are also applied to values that do not carry the factor")
        if not comp.consumers:
            raise _Broken("no weight reads the block's output")
    except _Broken as exc:
        return Compensation(outputs=comp.outputs, layers=comp.layers, reason=str(exc), notes=comp.notes)
    return comp
