"""Hardware cost model of a compiled hybrid model: crossbar tiles, analog MACs, digital FLOPs, DAC/ADC
conversions and an energy estimate, per block, per inference and per EP training step.

Why: the point of a hybrid analog/digital ff-EBM is that weight layers run in analog crossbars where a
multiply-accumulate costs femtojoules, while the conversions at the analog/digital boundary and the digital
blocks cost picojoules. Whether a partition pays off depends on those counts, and they follow from the plan
alone, so `hybridc report` derives them statically (one batch-1 pass through each block to count ops).

Counting rules (everything is per sample, i.e. batch 1; `COUNTING_RULES` below is the same list, printed
under the table and stored in the JSON report):

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
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import torch
import torch.fx as fx
from pydantic import BaseModel, Field
from torch import nn

from hybridc.cost.constants import Constant, EnergyConstants
from hybridc.errors import HybridcError
from hybridc.passes.ops import PURE_SHAPE_OPS

COUNTING_RULES: list[str] = [
    "All counts are per sample (batch 1).",
    "Tiles: ROWSxCOLS crossbar arrays. Linear(in,out) -> ceil(in/ROWS)*ceil(out/COLS); Conv(Cin,Cout,kxk,g) "
    "unrolled per group as (Cin/g*k*k) rows x (Cout/g) cols -> g*ceil(rows/ROWS)*ceil(cols/COLS); "
    "weight matmul x@W (KxN) -> K rows x N cols. DHN weights are signed: differential pair G+ - G-, physical "
    "tiles = dhn_devices_per_weight x logical. DRN: conductance matrices from DRNBlock.sizes (doubled inputs), "
    "1 device/weight. Biases are peripheral current sources (no rows).",
    "Analog MACs: a relaxation step = F (forward pass of all weight ops) + B (transposed pass of the ops "
    "reading a neuron; block inputs are clamped). Inference = T1 steps. EP training step = (T1 + 2*T2) steps "
    "+ per nudged phase a transposed pass of the input-reading ops (dPhi/dx) when the block input needs a "
    "gradient.",
    "Digital FLOPs (2 per MAC): digital blocks 1x forward per inference, ~3x forward (fwd + bwd) per training "
    "step; analog blocks in training: EP weight-gradient outer products computed digitally from the read-out "
    "states, one forward-sized pass (2F FLOPs) per nudged phase.",
    "DAC: each block-input element once per inference (held during relaxation; DRN: 2 per element, "
    "gamma*[x,-x]); training adds the nudge on each output-neuron element per nudged phase.",
    "ADC: each block-output element once per inference; training adds both nudged states of every neuron "
    "layer and the dPhi/dx read-out of inputs that need a gradient, per nudged phase.",
    "Energy = analog MACs*e_mac + ADC*e_adc + DAC*e_dac + digital FLOPs*e_flop (+ SRAM accesses*e_mem with "
    "--memory: one per converted value and per digital-block input/output/parameter element, x3 in training). "
    "Not included: optimizer update and device programming (per batch), control, interconnect.",
]


class ReportError(HybridcError):
    """The cost model cannot describe this model or these settings."""


# ---- result schema -----------------------------------------------------------------------------------------
class LayerCost(BaseModel):
    """One analog weight layer mapped onto crossbars."""

    name: str
    op: str = Field(description="linear | conv | conv_transpose | matmul | addmm | drn")
    rows: int = Field(description="crossbar rows per group (inputs of the unrolled weight matrix)")
    cols: int = Field(description="crossbar columns per group (outputs)")
    groups: int = 1
    weights: int = Field(description="logical weights rows*cols*groups (no biases)")
    devices: int = Field(description="physical devices (weights x devices per weight)")
    logical_tiles: int
    tiles: int = Field(description="physical ROWSxCOLS arrays")
    macs: int = Field(description="MACs of one forward pass, per sample")
    reads: Literal["input", "neuron", "both"] = Field(description="what the layer's data operand comes from")


class Energy(BaseModel):
    """Energy in pJ by component."""

    analog_mac: float = 0.0
    adc: float = 0.0
    dac: float = 0.0
    digital: float = 0.0
    memory: float = 0.0
    total: float = 0.0


class PhaseCost(BaseModel):
    """Operation counts and energy of one inference or one EP training step, per sample."""

    analog_macs: int = 0
    digital_flops: int = 0
    dac: int = 0
    adc: int = 0
    memory_accesses: int = 0
    energy_pj: Energy = Field(default_factory=Energy)


class BlockCost(BaseModel):
    name: str
    kind: Literal["analog", "digital"]
    eb_kind: str | None = None
    weight_layers: list[str] = Field(default_factory=list)
    tiles: int = 0
    logical_tiles: int = 0
    weights: int = 0
    devices: int = 0
    forward_macs: int = Field(0, description="F: one forward pass of the weight ops")
    transposed_macs: int = Field(0, description="B: one transposed pass of the neuron-reading weight ops")
    input_needs_grad: bool = False
    layers: list[LayerCost] = Field(default_factory=list)
    inference: PhaseCost = Field(default_factory=PhaseCost)
    training: PhaseCost = Field(default_factory=PhaseCost)


class ReportSettings(BaseModel):
    model: str
    max_block_size: int
    eb_kind: str
    tile_rows: int
    tile_cols: int
    t1: int
    t2: int
    digital_precision: str
    include_memory: bool


class Totals(BaseModel):
    tiles: int = 0
    logical_tiles: int = 0
    weights: int = 0
    devices: int = 0
    inference: PhaseCost = Field(default_factory=PhaseCost)
    training: PhaseCost = Field(default_factory=PhaseCost)
    all_digital: dict[str, PhaseCost] = Field(
        default_factory=dict,
        description="reference: the same model entirely digital, inference (1x forward FLOPs) and BP training "
        "step (3x); analog weight ops counted as 2 FLOPs per forward MAC; with --memory every "
        "weight is read once per sample (batch 1) plus the digital blocks' traffic",
    )


class CostReport(BaseModel):
    """What `hybridc report --format json` prints."""

    settings: ReportSettings
    constants: dict[str, Constant]
    conventions: list[str]
    blocks: list[BlockCost]
    total: Totals


# ---- geometry ----------------------------------------------------------------------------------------------
def parse_tile(text: str) -> tuple[int, int]:
    """'256x256' -> (256, 256); '128' -> (128, 128)."""
    parts = text.lower().replace("×", "x").split("x")
    try:
        dims = [int(p) for p in parts]
    except ValueError:
        raise ReportError(f"--tile {text!r} is not ROWSxCOLS (e.g. 256x256)") from None
    if len(dims) == 1:
        dims = dims * 2
    if len(dims) != 2 or min(dims) <= 0:
        raise ReportError(f"--tile {text!r} must be two positive sizes ROWSxCOLS (e.g. 256x256)")
    return dims[0], dims[1]


def crossbar_tiles(rows: int, cols: int, tile: tuple[int, int], groups: int = 1) -> int:
    """Logical ROWSxCOLS tiles for a rows x cols weight matrix per group: groups * ceil * ceil."""
    return groups * math.ceil(rows / tile[0]) * math.ceil(cols / tile[1])


def linear_tiles(in_features: int, out_features: int, tile: tuple[int, int] = (256, 256)) -> int:
    """Logical tiles of Linear(in, out): ceil(in/ROWS) * ceil(out/COLS)."""
    return crossbar_tiles(in_features, out_features, tile)


def conv_tiles(
    c_in: int, c_out: int, kernel: Sequence[int], groups: int = 1, tile: tuple[int, int] = (256, 256)
) -> int:
    """Logical tiles of Conv(c_in, c_out, kernel, groups), unrolled per group as
    (c_in/groups * prod(kernel)) rows x (c_out/groups) columns."""
    return crossbar_tiles(c_in // groups * math.prod(kernel), c_out // groups, tile, groups)


def _numel(shape: Sequence[int] | None) -> int:
    """Elements per sample of a shape that includes the batch dimension."""
    if not shape:
        return 1
    return math.prod(shape[1:])


# ---- counting one pass through a block ---------------------------------------------------------------------
class _Counter(fx.Interpreter):
    """Runs a GraphModule once, recording each node's FLOPs (torch FlopCounterMode) and output value."""

    def __init__(self, gm: fx.GraphModule):
        super().__init__(gm, garbage_collect_values=False)
        self.flops: dict[fx.Node, int] = {}
        self.values: dict[fx.Node, Any] = {}

    def run_node(self, n: fx.Node) -> Any:
        from torch.utils.flop_counter import FlopCounterMode

        if n.op in ("placeholder", "output", "get_attr"):
            out = super().run_node(n)
            self.flops[n] = 0
        else:
            with FlopCounterMode(display=False, custom_mapping=_extra_flop_formulas()) as fc:
                out = super().run_node(n)
            self.flops[n] = int(fc.get_total_flops())
        self.values[n] = out
        return out


def _extra_flop_formulas() -> dict:
    """FLOP formulas torch's FlopCounterMode lacks: the CPU flash-attention kernel that
    F.scaled_dot_product_attention (and nn.MultiheadAttention) dispatch to on CPU."""
    from torch.utils.flop_counter import sdpa_flop_count

    def cpu_sdpa(
        query_shape: Any, key_shape: Any, value_shape: Any, *args: Any, out_shape: Any = None, **kwargs: Any
    ) -> int:
        return sdpa_flop_count(query_shape, key_shape, value_shape)

    ops = [getattr(torch.ops.aten, name, None) for name in ("_scaled_dot_product_flash_attention_for_cpu",)]
    return {op: cpu_sdpa for op in ops if op is not None}


def _run_counter(gm: fx.GraphModule, args: Sequence[torch.Tensor]) -> _Counter:
    counter = _Counter(gm)
    # grad mode on (nothing is backpropagated): with trainable parameters it turns off the fused inference
    # fast paths (e.g. nn.MultiheadAttention's native kernel) that FlopCounterMode cannot see into
    with torch.enable_grad():
        counter.run(*args)
    return counter


_ZERO_COST = PURE_SHAPE_OPS | frozenset(
    {
        "cat",
        "clone",
        "contiguous",
        "detach",
        "dropout",
        "float",
        "get_attr",
        "getitem",
        "meta",
        "output",
        "placeholder",
        "pos",
        "repeat",
        "reshape",
        "size",
        "stack",
        "to",
        "type_as",
    }
)
_PER_ELEMENT = {
    "batch_norm": 2,
    "layer_norm": 7,
    "group_norm": 7,
    "instance_norm": 7,
    "rms_norm": 4,
    "local_response_norm": 7,
    "softmax": 5,
    "sigmoid": 4,
    "tanh": 4,
    "gelu": 8,
    "silu": 5,
    "mish": 8,
    "softplus": 4,
    "elu": 4,
    "celu": 4,
    "selu": 4,
    "hardswish": 3,
    "logsigmoid": 4,
}
_POOLS = frozenset({"max_pool", "avg_pool", "adaptive_avg_pool", "adaptive_max_pool", "mean"})


def _tensors(value: Any) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in _tensors(v)]
    return []


def _elementwise_flops(node: fx.Node, key: str, counter: _Counter) -> int:
    """FLOPs of an op FlopCounterMode does not count (norms, activations, pooling, adds), estimated from
    element counts: `_PER_ELEMENT` FLOPs per output element (1 by default), pools one per input element."""
    if key in _ZERO_COST:
        return 0
    out = sum(t.numel() for t in _tensors(counter.values.get(node)) if t.is_floating_point())
    if key in _POOLS:
        ins = sum(t.numel() for a in node.all_input_nodes for t in _tensors(counter.values.get(a)))
        return max(out, ins)
    return _PER_ELEMENT.get(key, 1) * out


def _node_flops(gm: fx.GraphModule, counter: _Counter) -> int:
    from hybridc.passes.ops import op_key

    total = 0
    for node in gm.graph.nodes:
        f = counter.flops.get(node, 0)
        if f == 0 and node.op not in ("placeholder", "output", "get_attr"):
            f = _elementwise_flops(node, op_key(node, gm), counter)
        total += f
    return total


def _dependencies(gm: fx.GraphModule) -> dict[fx.Node, set[fx.Node]]:
    """For every node, the placeholders its value depends on."""
    deps: dict[fx.Node, set[fx.Node]] = {}
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            deps[node] = {node}
        else:
            deps[node] = (
                set().union(*(deps[a] for a in node.all_input_nodes)) if node.all_input_nodes else set()
            )
    return deps


def _weight_layer(
    node: fx.Node,
    gm: fx.GraphModule,
    key: str,
    counter: _Counter,
    deps: dict[fx.Node, set],
) -> tuple[fx.Node, int, int, int, int] | None:
    """(data operand, rows, cols, groups, forward MACs) of a weight op, or None if it has no weight."""
    vals = counter.values
    args = list(node.args)
    mod = gm.get_submodule(str(node.target)) if node.op == "call_module" else None
    out = _tensors(vals.get(node))
    out_numel = out[0].numel() if out else 0
    macs = counter.flops.get(node, 0) // 2
    if key in ("linear", "conv", "conv_transpose"):
        data = args[0] if args else node.kwargs.get("input")
        w = (
            getattr(mod, "weight", None)
            if mod is not None
            else (vals.get(args[1]) if len(args) > 1 and isinstance(args[1], fx.Node) else None)
        )
        if w is None and isinstance(node.kwargs.get("weight"), fx.Node):
            w = vals.get(node.kwargs["weight"])
        if not isinstance(w, torch.Tensor) or not isinstance(data, fx.Node):
            return None
        x = vals.get(data)
        if key == "linear":
            rows, cols, groups = w.shape[-1], w.numel() // w.shape[-1], 1
            macs = macs or out_numel * rows
        elif key == "conv":
            c_in = x.shape[1] if isinstance(x, torch.Tensor) and x.dim() > 1 else w.shape[1]
            groups = max(1, c_in // w.shape[1])
            rows, cols = w.shape[1] * math.prod(w.shape[2:]), w.shape[0] // groups
            macs = macs or out_numel * rows
        else:
            groups = int(getattr(mod, "groups", 1) or 1)
            rows, cols = w.shape[0] // groups, w.shape[1] * math.prod(w.shape[2:])
            macs = macs or (x.numel() if isinstance(x, torch.Tensor) else 0) * cols
        return data, int(rows), int(cols), int(groups), int(macs)
    if key in ("matmul", "addmm"):
        operands = args[1:3] if key == "addmm" else args[:2]
        if len(operands) != 2:
            return None
        left, right = operands
        data_left = isinstance(left, fx.Node) and bool(deps.get(left))
        data, weight = (left, right) if data_left else (right, left)
        x = vals.get(data) if isinstance(data, fx.Node) else None
        w = vals.get(weight) if isinstance(weight, fx.Node) else None
        if not isinstance(x, torch.Tensor) or not isinstance(w, torch.Tensor) or w.dim() < 1:
            return None
        rows = x.shape[-1] if data_left else (x.shape[-2] if x.dim() > 1 else x.shape[0])
        cols = max(1, w.numel() // max(1, rows))
        macs = macs or out_numel * rows
        return data, int(rows), int(cols), 1, int(macs)
    return None


# ---- per-block costs ---------------------------------------------------------------------------------------
def _energy(phase: PhaseCost, c: EnergyConstants, include_memory: bool) -> Energy:
    e = Energy(
        analog_mac=phase.analog_macs * c.e_mac_pj,
        adc=phase.adc * c.e_adc_pj,
        dac=phase.dac * c.e_dac_pj,
        digital=phase.digital_flops * c.e_flop_pj,
        memory=phase.memory_accesses * c.e_mem_pj if include_memory else 0.0,
    )
    e.total = e.analog_mac + e.adc + e.dac + e.digital + e.memory
    return e


def _example(shape: Sequence[int] | None, dtype: str | None) -> torch.Tensor:
    if not shape:
        raise ReportError("a block input has no recorded shape; re-run partition")
    dt = getattr(torch, dtype) if dtype and hasattr(torch, dtype) else torch.float32
    return torch.zeros(1, *shape[1:], dtype=dt)


def _analog_dhn(
    blk: nn.Module,
    in_refs: list[tuple[list[int], str | None]],
    needs_grad: list[bool],
    tile: tuple[int, int],
    consts: EnergyConstants,
) -> tuple[list[LayerCost], dict[str, int]]:
    """Layers and the F/B/F_in pass sizes of a DHN block, from one batch-1 pass of its synapse graph."""
    from hybridc.passes.ops import WEIGHT_OPS, op_key

    gm: fx.GraphModule = blk.synapses
    if any(shape is None for shape in blk.neuron_shapes):
        raise ReportError(f"{blk.name}: neuron shapes unknown; re-run partition")
    inputs = [_example(s, d) for s, d in in_refs]
    dtype = next((p.dtype for p in gm.parameters() if p.is_floating_point()), torch.float32)
    states = [torch.zeros(1, *shape, dtype=dtype) for shape in blk.neuron_shapes]
    counter = _run_counter(gm, [*inputs, *states])
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    input_ph, state_ph = placeholders[: blk.n_inputs], set(placeholders[blk.n_inputs :])
    grad_ph = {p for p, g in zip(input_ph, needs_grad) if g}
    deps = _dependencies(gm)
    per_weight = int(consts.dhn_devices_per_weight.value)
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
    sizes["neurons"] = sum(math.prod(s) for s in blk.neuron_shapes)
    return layers, sizes


def _analog_drn(
    blk: nn.Module,
    weight_layers: list[str],
    in_refs: list[tuple[list[int], str | None]],
    needs_grad: list[bool],
    tile: tuple[int, int],
) -> tuple[list[LayerCost], dict[str, int]]:
    """Layers and pass sizes of a DRN block from its conductance sizes (inputs doubled: sizes[0] = 2*in)."""
    sizes_: list[int] = list(blk.sizes)
    in_numel = _numel(in_refs[0][0])
    mult = max(1, in_numel // blk.in_features)  # leading (e.g. token) dimensions share the network
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


def _analog_cost(
    b: BlockCost, layers: list[LayerCost], s: dict[str, int], out_numel: int, t1: int, t2: int
) -> None:
    """Fill an analog block's counts from its pass sizes (see the module docstring for the rules).
    `out_numel`: elements of the block's outputs, which are output neurons (read out, and nudged in training)."""
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
    from hybridc.energy.drn import DRNBlock
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
                if isinstance(mod, DRNBlock):
                    layers, sizes = _analog_drn(mod, list(pb.weight_layers), in_refs, needs, tile)
                else:
                    layers, sizes = _analog_dhn(mod, in_refs, needs, tile, consts)
                _analog_cost(b, layers, sizes, out_numel, free_steps(mod), t2)
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


# ---- rendering ---------------------------------------------------------------------------------------------
def si(n: float) -> str:
    """1234567 -> '1.23M' (k, M, G, T); small integers unchanged."""
    if abs(n) < 1000:
        return f"{n:.0f}" if float(n).is_integer() else f"{n:.3g}"
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3g}{unit}"
    return str(n)


def joules(pj: float) -> str:
    """An energy in pJ with a readable unit (pJ, nJ, µJ, mJ, J)."""
    for unit, scale in (("J", 1e12), ("mJ", 1e9), ("µJ", 1e6), ("nJ", 1e3)):
        if abs(pj) >= scale:
            return f"{pj / scale:.3g} {unit}"
    return f"{pj:.3g} pJ"


def report_table(rep: CostReport):  # noqa: ANN201 - rich.table.Table (rich imported lazily)
    """The per-block table with a total row; the counting rules are its caption."""
    from rich.markup import escape
    from rich.table import Table

    s = rep.settings
    title = (
        f"{s.model}: hardware cost per sample (max_block_size={s.max_block_size}, eb_kind={s.eb_kind}, "
        f"tile={s.tile_rows}x{s.tile_cols}, T1={s.t1}, T2={s.t2}, digital={s.digital_precision}"
        f"{', +SRAM' if s.include_memory else ''})"
    )
    t = Table(
        title=title,
        title_justify="left",
        caption=escape("\n".join(rep.conventions)),
        caption_justify="left",
        show_footer=False,
    )
    cols = [
        ("block", "left"),
        ("kind", "left"),
        ("layers", "right"),
        ("tiles", "right"),
        ("analog MACs\ninf / train", "right"),
        ("digital FLOPs\ninf / train", "right"),
        ("DAC\ninf / train", "right"),
        ("ADC\ninf / train", "right"),
        ("energy\ninference", "right"),
        ("energy\ntrain step", "right"),
    ]
    for name, just in cols:
        t.add_column(name, justify=just)

    def pair(a: int, b: int) -> str:
        return f"{si(a)} / {si(b)}"

    for b in rep.blocks:
        kind = b.kind if b.kind == "digital" else f"analog ({b.eb_kind or 'dhn'})"
        style = "bold yellow" if b.kind == "analog" else "cyan"
        t.add_row(
            f"[{style}]{b.name}[/]",
            kind,
            str(len(b.weight_layers)) if b.kind == "analog" else "-",
            f"{b.tiles:,}" if b.kind == "analog" else "-",
            pair(b.inference.analog_macs, b.training.analog_macs),
            pair(b.inference.digital_flops, b.training.digital_flops),
            pair(b.inference.dac, b.training.dac),
            pair(b.inference.adc, b.training.adc),
            joules(b.inference.energy_pj.total),
            joules(b.training.energy_pj.total),
        )
    tot = rep.total
    t.add_section()
    t.add_row(
        "[bold]total[/]",
        "",
        str(sum(len(b.weight_layers) for b in rep.blocks if b.kind == "analog")),
        f"{tot.tiles:,}",
        pair(tot.inference.analog_macs, tot.training.analog_macs),
        pair(tot.inference.digital_flops, tot.training.digital_flops),
        pair(tot.inference.dac, tot.training.dac),
        pair(tot.inference.adc, tot.training.adc),
        f"[bold]{joules(tot.inference.energy_pj.total)}[/]",
        f"[bold]{joules(tot.training.energy_pj.total)}[/]",
    )
    return t


def breakdown_table(rep: CostReport):  # noqa: ANN201 - rich.table.Table
    """Where the total energy goes, next to an all-digital reference of the same model."""
    from rich.table import Table

    t = Table(title="energy breakdown (total, per sample)", title_justify="left")
    for col in ("", "analog MAC", "ADC", "DAC", "digital", "SRAM", "total", "all-digital reference"):
        t.add_column(col, justify="right" if col else "left")
    for label, ph in (("inference", rep.total.inference), ("EP training step", rep.total.training)):
        e = ph.energy_pj
        ref = rep.total.all_digital["inference" if label == "inference" else "training"]
        t.add_row(
            label,
            joules(e.analog_mac),
            joules(e.adc),
            joules(e.dac),
            joules(e.digital),
            joules(e.memory) if rep.settings.include_memory else "-",
            f"[bold]{joules(e.total)}[/]",
            f"{joules(ref.energy_pj.total)} ({si(ref.digital_flops)} FLOPs{', BP' if ph is rep.total.training else ''})",
        )
    return t


def constants_table(rep: CostReport):  # noqa: ANN201 - rich.table.Table
    """The constants in effect and their sources."""
    from rich.markup import escape
    from rich.table import Table

    t = Table(title="constants (override with --constants FILE)", title_justify="left")
    for col in ("constant", "value", "unit", "source"):
        t.add_column(col, overflow="fold")
    for name, c in rep.constants.items():
        t.add_row(escape(name), f"{c.value:g}", escape(c.unit), escape(c.source))
    return t
