"""Hardware cost model of a compiled hybrid model: crossbar tiles, analog MACs, digital FLOPs, DAC/ADC
conversions and an energy estimate, per block, per inference and per EP training step.

Why: the point of a hybrid analog/digital ff-EBM is that weight layers run in analog crossbars where a
multiply-accumulate costs femtojoules, while the conversions at the analog/digital boundary and the digital
blocks cost picojoules. Whether a partition pays off depends on those counts, and they follow from the plan
alone, so `hybridc report` derives them statically (one batch-1 pass through each block to count ops).

Counting rules (everything is per sample, i.e. batch 1; `COUNTING_RULES` (`hybridc.cost.schema`) is the same
list, printed under the table and stored in the JSON report):

- **Tiles.** An analog weight layer is laid out on ROWS x COLS crossbar arrays (default 256x256).
  Linear(in, out): ceil(in/ROWS) * ceil(out/COLS) logical tiles; Conv(Cin, Cout, k x k, groups) is unrolled
  per group as (Cin/groups * k * k) rows x (Cout/groups) columns: groups * ceil(rows/ROWS) *
  ceil(cols/COLS); a weight matmul x @ W (W of K x N): K rows x N columns. DHN weights are signed and stored
  as a differential pair (G+ - G-): physical tiles = 2 x logical (constant `dhn_devices_per_weight`).
  DRN conductances are non-negative with doubled inputs: each matrix of `DRNBlock.sizes` (incl. the 2*in
  source rows) is one device per weight. Biases are peripheral current sources: no rows.
- **Analog MACs.** F = one forward (bottom-up) pass of the block's weight ops, B = one transposed (top-down)
  pass of the ops that read a neuron (ops that read a block input have no top-down term: inputs are
  clamped). One relaxation step costs F + B (synchronous or even/odd: every layer is updated once).
  Inference: T1 steps. EP training step: T1 + 2*T2 steps (free phase, then the +beta and -beta nudged
  phases), plus, per nudged phase, one transposed pass of the input-reading ops for dPhi/dx when the block's
  input needs a gradient (it does when some block upstream has parameters).
- **Digital FLOPs** (2 per MAC, as torch's FlopCounterMode counts them). Digital blocks: FLOPs of one
  forward per inference (matmul/conv/attention from FlopCounterMode; element-wise ops estimated per output
  element: norms, softmax, pooling, activations), and forward + backward ~ 3x forward per training step.
  Analog blocks in training: the EP weight gradient -[dPhi/dtheta(s+) - dPhi/dtheta(s-)]/(2 beta) is computed
  digitally from the read-out states: one forward-sized pass (F MACs = 2F FLOPs) per nudged phase.
- **DAC conversions.** Values entering an analog block are held during relaxation: one conversion per input
  element per inference (a DRN drives both polarities gamma*[x, -x]: 2 per element). Training adds the
  nudge beta*delta on every output-neuron element, per nudged phase.
- **ADC conversions.** Every output element of an analog block is read once per inference. Training adds
  both nudged states of every neuron layer (needed for the weight gradient) and, when the input needs a
  gradient, the dPhi/dx read-out of every input that feeds a weight op, per nudged phase.
- **Energy.** analog MACs * e_mac + ADC * e_adc + DAC * e_dac + digital FLOPs * e_flop, plus (with
  `include_memory`) one SRAM word access per converted value and per digital block input, output and
  parameter element (x3 in training). Constants and their sources: `hybridc.cost.constants`.
Per-batch costs (optimizer update, programming the new weights into the devices) are not included.

Where it lives: this module assembles the report (`cost_of_compiled`, `cost_report`); the schema is
`hybridc.cost.schema`, tile geometry `hybridc.cost.geometry`, the per-node counting pass
`hybridc.cost.counting`, analog block layouts and counts `hybridc.cost.analog` (each block kind says which
layout describes it: `EnergyBlock.crossbar_layout`), and the rich tables `hybridc.cost.tables`. Every name
this module defined before the split is importable from it still.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from hybridc.cost.analog import fill_analog_cost
from hybridc.cost.constants import EnergyConstants
from hybridc.cost.counting import _example, _node_flops, _run_counter
from hybridc.cost.geometry import _numel, conv_tiles, crossbar_tiles, linear_tiles, parse_tile
from hybridc.cost.schema import (
    COUNTING_RULES,
    BlockCost,
    CostReport,
    Energy,
    LayerCost,
    PhaseCost,
    ReportError,
    ReportSettings,
    Totals,
)
from hybridc.cost.tables import breakdown_table, constants_table, joules, report_table, si

__all__ = [
    "COUNTING_RULES",
    "BlockCost",
    "CostReport",
    "Energy",
    "LayerCost",
    "PhaseCost",
    "ReportError",
    "ReportSettings",
    "Totals",
    "breakdown_table",
    "constants_table",
    "conv_tiles",
    "cost_of_compiled",
    "cost_report",
    "crossbar_tiles",
    "joules",
    "linear_tiles",
    "parse_tile",
    "report_table",
    "si",
]


# ---- per-block costs ---------------------------------------------------------------------------------------
def _energy(phase: PhaseCost, c: EnergyConstants, include_memory: bool) -> Energy:
    """The energy of a phase's counts under constants `c` (SRAM accesses only with `include_memory`)."""
    e = Energy(
        analog_mac=phase.analog_macs * c.e_mac_pj,
        adc=phase.adc * c.e_adc_pj,
        dac=phase.dac * c.e_dac_pj,
        digital=phase.digital_flops * c.e_flop_pj,
        memory=phase.memory_accesses * c.e_mem_pj if include_memory else 0.0,
    )
    e.total = e.analog_mac + e.adc + e.dac + e.digital + e.memory
    return e


# ---- the report --------------------------------------------------------------------------------------------
def cost_of_compiled(
    compiled: nn.Module,
    model_name: str = "",
    tile: tuple[int, int] = (256, 256),
    t1: int | None = None,
    t2: int | None = None,
    constants: EnergyConstants | None = None,
    include_memory: bool = False,
) -> CostReport:
    """The cost report of a compiled ff-EBM (`hybridc.api.compile`), using its plan for shapes.

    `t1`/`t2` default to the blocks' solver settings (free/nudged phase steps). A block whose free phase runs
    to equilibrium is counted at the steps its last free phase took (`EnergyBlock.last_steps`: `cost_report`
    runs the example batch first), or at its step cap (`EnergyBlock.free_cap`, an upper bound) when it has not
    run; the settings' T1 is then the largest of these."""
    from hybridc.energy.block import EnergyBlock
    from hybridc.energy.settings import SolverConfig

    plan = compiled.plan
    consts = constants or EnergyConstants()
    analog_mods = [m for m in compiled.blocks.values() if isinstance(m, EnergyBlock)]
    default = analog_mods[0].solver if analog_mods else SolverConfig()
    given_t1 = t1
    t2 = default.t2 if t2 is None else t2
    if (given_t1 is not None and given_t1 < 1) or t2 < 1:
        raise ReportError("--t1 and --t2 must be at least 1")

    def free_steps(mod: EnergyBlock) -> int:
        if given_t1 is not None:
            return given_t1
        cfg = mod.solver
        if cfg.free == "equilibrium" and cfg.tol is None:
            return int(mod.last_steps) or mod.free_cap()
        return cfg.t1

    t1 = max((free_steps(m) for m in analog_mods), default=default.t1)
    refs: dict[str, tuple[list[int] | None, str | None]] = {}
    for r in plan.graph_inputs:
        refs[r.node] = (r.shape, r.dtype)
    for blk in plan.blocks:
        for r in [*blk.inputs, *blk.outputs]:
            refs.setdefault(r.node, (r.shape, r.dtype))
        for nr in blk.neurons:
            refs.setdefault(nr.node, (nr.shape, None))
    requires: dict[str, bool] = {r.node: False for r in plan.graph_inputs}
    blocks: list[BlockCost] = []
    was_training = compiled.training
    compiled.eval()
    try:
        for pb in plan.blocks:
            mod = compiled.blocks[pb.name]
            ins, outs = compiled.io(pb.name)
            missing = [i for i in [*ins, *outs] if i not in refs or refs[i][0] is None]
            if missing:
                raise ReportError(f"{pb.name}: no recorded shape for {missing}; re-run partition")
            in_refs = [(list(refs[i][0]), refs[i][1]) for i in ins]
            needs = [requires.get(i, True) for i in ins]
            out_numel = sum(_numel(refs[o][0]) for o in outs)
            b = BlockCost(
                name=pb.name,
                kind=pb.kind,
                eb_kind=pb.eb_kind if pb.kind == "analog" else None,
                weight_layers=list(pb.weight_layers),
                input_needs_grad=any(needs),
            )
            if isinstance(mod, EnergyBlock):
                layers, sizes = mod.crossbar_layout(in_refs, needs, list(pb.weight_layers), tile, consts)
                fill_analog_cost(b, layers, sizes, out_numel, free_steps(mod), t2)
                produces_grad = True
            else:
                counter = _run_counter(mod, [_example(s, d) for s, d in in_refs])
                flops = _node_flops(mod, counter)
                traffic = sum(_numel(s) for s, _ in in_refs) + out_numel + pb.params
                b.inference = PhaseCost(digital_flops=flops, memory_accesses=traffic)
                b.training = PhaseCost(digital_flops=3 * flops, memory_accesses=3 * traffic)
                produces_grad = pb.params > 0 or any(needs)
            for o in outs:
                requires[o] = produces_grad
            for ph in (b.inference, b.training):
                ph.energy_pj = _energy(ph, consts, include_memory)
            blocks.append(b)
    finally:
        compiled.train(was_training)
    total = _totals(blocks, consts, include_memory)
    settings = ReportSettings(
        model=model_name or plan.model.model_class,
        max_block_size=plan.config.max_block_size,
        eb_kind=plan.config.eb_kind,
        tile_rows=tile[0],
        tile_cols=tile[1],
        t1=t1,
        t2=t2,
        digital_precision=consts.digital_precision,
        include_memory=include_memory,
    )
    return CostReport(
        settings=settings,
        constants=consts.table(),
        conventions=list(COUNTING_RULES),
        blocks=blocks,
        total=total,
    )


def _sum_phases(phases: list[PhaseCost], consts: EnergyConstants, include_memory: bool) -> PhaseCost:
    p = PhaseCost(
        analog_macs=sum(x.analog_macs for x in phases),
        digital_flops=sum(x.digital_flops for x in phases),
        dac=sum(x.dac for x in phases),
        adc=sum(x.adc for x in phases),
        memory_accesses=sum(x.memory_accesses for x in phases),
    )
    p.energy_pj = _energy(p, consts, include_memory)
    return p


def _totals(blocks: list[BlockCost], consts: EnergyConstants, include_memory: bool) -> Totals:
    t = Totals(
        tiles=sum(b.tiles for b in blocks),
        logical_tiles=sum(b.logical_tiles for b in blocks),
        weights=sum(b.weights for b in blocks),
        devices=sum(b.devices for b in blocks),
        inference=_sum_phases([b.inference for b in blocks], consts, include_memory),
        training=_sum_phases([b.training for b in blocks], consts, include_memory),
    )
    fwd = sum(b.inference.digital_flops for b in blocks if b.kind == "digital")
    fwd += sum(2 * b.forward_macs for b in blocks if b.kind == "analog")
    mem = sum(b.inference.memory_accesses for b in blocks if b.kind == "digital")
    mem += sum(b.weights for b in blocks if b.kind == "analog")
    for label, factor in (("inference", 1), ("training", 3)):
        p = PhaseCost(digital_flops=factor * fwd, memory_accesses=factor * mem)
        p.energy_pj = _energy(p, consts, include_memory)
        t.all_digital[label] = p
    return t


def cost_report(
    model: nn.Module,
    example_inputs: Any,
    max_block_size: int | None = None,
    *,
    tile: tuple[int, int] = (256, 256),
    t1: int | None = None,
    t2: int | None = None,
    constants: EnergyConstants | None = None,
    include_memory: bool = False,
    plan: Any = None,
    model_name: str = "",
    progress: Any | None = None,
    **policies: Any,
) -> CostReport:
    """Partition and compile `model` (or apply `plan`) and return its cost report (see module docstring).

    `progress`: a `hybridc.progress.StepProgress` told of each phase (partition, compile, counting),
    so that a report of a large model (resnet18 takes tens of seconds on a CPU) is not silent."""
    from hybridc import api

    def phase(name: str) -> None:
        if progress is not None:
            progress.start(name)

    def done(detail: str = "") -> None:
        if progress is not None:
            progress.done(detail)

    if plan is None:
        phase("partition")
        plan = api.partition(model, example_inputs, max_block_size=max_block_size, **policies)
        done(f"{len(plan.blocks)} blocks")
    phase("compile")
    compiled = api.compile(model, example_inputs, plan=plan)
    with torch.no_grad():  # each equilibrium free phase's step count on the example (what is counted)
        if isinstance(example_inputs, dict):
            compiled(**example_inputs)
        elif isinstance(example_inputs, (tuple, list)):
            compiled(*example_inputs)
        else:
            compiled(example_inputs)
    done()
    phase("count costs per block")
    rep = cost_of_compiled(
        compiled,
        model_name=model_name,
        tile=tile,
        t1=t1,
        t2=t2,
        constants=constants,
        include_memory=include_memory,
    )
    done(f"{rep.total.tiles:,} tiles")
    return rep
