"""The cost report's schema (what `hybridc report --format json` prints) and its counting rules as text.

Why a module of its own: the schema is the report's public contract (tests, the CLI and JSON consumers read
it), while how the counts are made lives in `counting`, `geometry` and `analog`; `COUNTING_RULES` is the
list printed under the table and stored in every JSON report (`hybridc.cost.report`'s docstring explains it).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from hybridc.cost.constants import Constant
from hybridc.errors import HybridcError

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
