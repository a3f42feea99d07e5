"""Analog blocks on crossbars: each weight layer's tiles and devices, the pass sizes a relaxation step
costs, and the inference / EP-training counts that follow from them (rules: `hybridc.cost.report`).

Why here and not in the block kinds: the counting rules are the cost model's; a block kind only says which
layout describes it (`EnergyBlock.crossbar_layout`: a DHN is `synapse_graph_layout`, a DRN
`conductance_chain_layout`), so the report needs no knowledge of the kinds.

Pass sizes (`PassSizes`, per sample): F (MACs of one forward pass of the weight ops), B (one transposed pass
of the ops reading a neuron), F_in_grad (one transposed pass of the ops reading an input that needs a
gradient: dPhi/dx), grad_readout (elements of those inputs, read out per nudged phase), dac (converted input
values per inference), neurons (neuron elements, read out per nudged phase).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.fx as fx

from hybridc.cost.counting import _dependencies, _example, _run_counter, _weight_layer
from hybridc.cost.geometry import _numel, crossbar_tiles
from hybridc.cost.schema import BlockCost, LayerCost, PhaseCost, ReportError

#: F, B, F_in_grad, grad_readout, dac, neurons (see the module docstring)
PassSizes = dict[str, int]
#: what a block kind's `crossbar_layout` returns: its weight layers on crossbars and its pass sizes
AnalogLayout = tuple[list[LayerCost], PassSizes]


def synapse_graph_layout(
    gm: fx.GraphModule,
    n_inputs: int,
    neuron_shapes: Sequence[Sequence[int] | None],
    name: str,
    in_refs: list[tuple[list[int], str | None]],
    needs_grad: list[bool],
    tile: tuple[int, int],
    devices_per_weight: int,
) -> AnalogLayout:
    """Layers and the F/B/F_in pass sizes of a block whose weights are the weight ops of a synapse graph
    `gm` ((inputs..., states...) -> pre-activations; `n_inputs` inputs, states of per-sample `neuron_shapes`),
    from one batch-1 pass of it. `devices_per_weight`: physical devices per logical weight (a signed weight
    is a differential pair G+ - G-: 2)."""
    from hybridc.passes.ops import WEIGHT_OPS, op_key

    if any(shape is None for shape in neuron_shapes):
        raise ReportError(f"{name}: neuron shapes unknown; re-run partition")
    inputs = [_example(s, d) for s, d in in_refs]
    dtype = next((p.dtype for p in gm.parameters() if p.is_floating_point()), torch.float32)
    states = [torch.zeros(1, *shape, dtype=dtype) for shape in neuron_shapes]
    counter = _run_counter(gm, [*inputs, *states])
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    input_ph, state_ph = placeholders[:n_inputs], set(placeholders[n_inputs:])
    grad_ph = {p for p, g in zip(input_ph, needs_grad) if g}
    deps = _dependencies(gm)
    per_weight = devices_per_weight
    layers: list[LayerCost] = []
    sizes = {"F": 0, "B": 0, "F_in_grad": 0, "grad_readout": 0}
    readout: set[fx.Node] = set()
    for node in gm.graph.nodes:
        key = op_key(node, gm)
        if key not in WEIGHT_OPS:
            continue
        geo = _weight_layer(node, gm, key, counter, deps)
        if geo is None:
            continue
        data, rows, cols, groups, macs = geo
        src = deps.get(data, set())
        reads_neuron, reads_input = bool(src & state_ph), bool(src - state_ph)
        logical = crossbar_tiles(rows, cols, tile, groups)
        weights = rows * cols * groups
        layer_name = str(node.target) if node.op == "call_module" else node.name
        layers.append(
            LayerCost(
                name=layer_name,
                op=key,
                rows=rows,
                cols=cols,
                groups=groups,
                weights=weights,
                devices=weights * per_weight,
                logical_tiles=logical,
                tiles=logical * per_weight,
                macs=macs,
                reads="both" if reads_neuron and reads_input else ("neuron" if reads_neuron else "input"),
            )
        )
        sizes["F"] += macs
        if reads_neuron:
            sizes["B"] += macs
        if src & grad_ph:
            sizes["F_in_grad"] += macs
            readout |= src & grad_ph
    sizes["grad_readout"] = sum(_numel(in_refs[input_ph.index(p)][0]) for p in readout)
    sizes["dac"] = sum(_numel(s) for s, _ in in_refs)
    sizes["neurons"] = sum(math.prod(s) for s in neuron_shapes)
    return layers, sizes


def conductance_chain_layout(
    layer_sizes: Sequence[int],
    in_features: int,
    weight_layers: list[str],
    in_refs: list[tuple[list[int], str | None]],
    needs_grad: list[bool],
    tile: tuple[int, int],
) -> AnalogLayout:
    """Layers and pass sizes of a chain of non-negative conductance matrices between layers of
    `layer_sizes` nodes (one device per weight), whose first layer holds the doubled input sources gamma*[x, -x]
    (layer_sizes[0] = 2*in_features; 2 DAC conversions per input element); `weight_layers` names the
    matrices (g0, g1, ... beyond them)."""
    sizes_: list[int] = list(layer_sizes)
    in_numel = _numel(in_refs[0][0])
    mult = max(1, in_numel // in_features)  # leading (e.g. token) dimensions share the network
    layers = []
    for k in range(len(sizes_) - 1):
        rows, cols = sizes_[k], sizes_[k + 1]
        logical = crossbar_tiles(rows, cols, tile)
        name = weight_layers[k] if k < len(weight_layers) else f"g{k}"
        layers.append(
            LayerCost(
                name=name,
                op="drn",
                rows=rows,
                cols=cols,
                weights=rows * cols,
                devices=rows * cols,
                logical_tiles=logical,
                tiles=logical,
                macs=mult * rows * cols,
                reads="input" if k == 0 else "neuron",
            )
        )
    grad = bool(needs_grad and needs_grad[0])
    sizes = {
        "F": sum(la.macs for la in layers),
        "B": sum(la.macs for la in layers[1:]),
        "F_in_grad": layers[0].macs if grad else 0,
        "grad_readout": 2 * in_numel if grad else 0,
        "dac": 2 * in_numel,
        "neurons": mult * sum(sizes_[1:]),
    }
    return layers, sizes


def fill_analog_cost(
    b: BlockCost, layers: list[LayerCost], s: PassSizes, out_numel: int, t1: int, t2: int
) -> None:
    """Fill an analog block's counts from its layout (rules: `hybridc.cost.report`'s docstring), at `t1`
    free-phase and `t2` nudged-phase steps. `out_numel`: elements of the block's outputs, which are output
    neurons (read out, and nudged in training)."""
    b.layers = layers
    b.weight_layers = b.weight_layers or [la.name for la in layers]
    b.tiles = sum(la.tiles for la in layers)
    b.logical_tiles = sum(la.logical_tiles for la in layers)
    b.weights = sum(la.weights for la in layers)
    b.devices = sum(la.devices for la in layers)
    b.forward_macs, b.transposed_macs = s["F"], s["B"]
    step = s["F"] + s["B"]
    b.inference = PhaseCost(analog_macs=t1 * step, dac=s["dac"], adc=out_numel)
    b.training = PhaseCost(
        analog_macs=(t1 + 2 * t2) * step + 2 * s["F_in_grad"],
        digital_flops=2 * 2 * s["F"],
        dac=s["dac"] + 2 * out_numel,
        adc=out_numel + 2 * s["neurons"] + 2 * s["grad_readout"],
    )
    for ph in (b.inference, b.training):
        ph.memory_accesses = ph.dac + ph.adc
