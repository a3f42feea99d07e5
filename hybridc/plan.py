"""The plan: the declarative, human-editable description of how a model is split into analog
(energy-based) and digital (feedforward) blocks. `compile(model, plan)` builds exactly what it says."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from hybridc.errors import HybridcError
from hybridc.finite import FiniteFloat

PLAN_VERSION = 1

NormPolicy = Literal["split", "entry", "synapse", "drop"]
PoolPolicy = Literal["digital", "absorb"]
AttentionPolicy = Literal["digital", "analog"]
ActivationPolicy = Literal["hardsigmoid", "keep"]
NonMonotonePolicy = Literal["substitute", "refuse"]
EBKind = Literal["dhn", "drn"]
ReadoutPolicy = Literal["analog", "digital"]


class PlanFileError(HybridcError):
    """A plan file is missing, not JSON, or does not validate (each reason listed)."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PartitionConfig(_Strict):
    """Every policy the partitioner applies. Defaults: see README ("Partition policies")."""

    max_block_size: int = Field(2, ge=1, description="most weight layers in one analog block")
    norm: NormPolicy = Field("entry", description="batch/group/instance norms inside a chain")
    layer_norm: NormPolicy = Field("split", description="LayerNorm/RMSNorm inside a chain")
    pool: PoolPolicy = Field("absorb", description="linear pooling inside a chain")
    attention: AttentionPolicy = Field("digital", description="attention modules")
    activation: ActivationPolicy = Field("hardsigmoid", description="neuron activation in analog blocks")
    hardsigmoid_slope: FiniteFloat = Field(0.5, gt=0, le=1e3, description="a in clamp(a*u, 0, 1)")
    non_monotone: NonMonotonePolicy = Field(
        "substitute", description="GELU/SiLU/... under `keep`: substitute ReLU or keep the op digital"
    )
    eb_kind: EBKind = Field("dhn", description="energy-based block kind for analog blocks")
    drn_gamma: FiniteFloat = Field(1.0, gt=0, description="drn input voltage gain γ (sources γ·[x, −x])")
    readout: ReadoutPolicy = Field(
        "analog",
        description="weight layers that produce the model's output: analog, or digital (the ff-EBM "
        "paper's readout, a digital Linear read of the last block)",
    )


class AnalogSpec(_Strict):
    """Device non-idealities of analog blocks (all off by default). Weight effects act on the programmed
    (effective) weights with straight-through gradients, so training sees the device and updates the ideal
    weights; read noise acts on every relaxation step; DAC/ADC quantise values entering/leaving a block."""

    program_noise: FiniteFloat = Field(
        0.0,
        ge=0,
        description="std of weight programming noise, relative to the "
        "range (or the tensor's max |w|); resampled whenever the weights change",
    )
    weight_range: FiniteFloat | None = Field(
        None, gt=0, description="|w| ≤ range (conductance range); none = unbounded"
    )
    weight_levels: int | None = Field(None, ge=2, description="programmable levels across the range")
    read_noise: FiniteFloat = Field(
        0.0, ge=0, description="std of Gaussian noise added to every neuron update"
    )
    dac_bits: int | None = Field(None, ge=2, le=32, description="bits of block inputs (digital → analog)")
    adc_bits: int | None = Field(None, ge=2, le=32, description="bits of block outputs (analog → digital)")
    io_range: FiniteFloat | None = Field(
        None, gt=0, description="DAC/ADC full scale ±range; none = per-batch max |x|"
    )

    @property
    def weights_affected(self) -> bool:
        return bool(self.program_noise or self.weight_range or self.weight_levels)

    @property
    def any(self) -> bool:
        return self.weights_affected or bool(self.read_noise or self.dac_bits or self.adc_bits)


class TensorRef(_Strict):
    """A value crossing a block boundary: the fx node that produces it and its example shape."""

    node: str
    shape: list[int] | None = None
    dtype: str | None = None


class ActivationSpec(_Strict):
    """A neuron's activation σ: a name and its numeric parameters (e.g. hardsigmoid slope)."""

    kind: str
    params: dict[str, FiniteFloat] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _monotone(self) -> ActivationSpec:
        """Parameters that would make σ non-monotone (no energy) or degenerate are refused here, so that a
        hand-edited plan or manifest cannot carry them into training or an export."""
        p = self.params
        positive = {"hardsigmoid": ("slope",), "celu": ("alpha",), "softplus": ("beta",)}.get(self.kind, ())
        for k in positive:
            if k in p and p[k] <= 0:
                raise ValueError(f"{self.kind} {k} must be > 0, not {p[k]:g}")
        for k in {"leaky_relu": ("negative_slope",), "elu": ("alpha",)}.get(self.kind, ()):
            if k in p and p[k] < 0:
                raise ValueError(f"{self.kind} {k} must be >= 0 (a monotone activation), not {p[k]:g}")
        if self.kind == "hardtanh" and p.get("min_val", -1.0) >= p.get("max_val", 1.0):
            raise ValueError("hardtanh min_val must be below max_val")
        return self

    def __str__(self) -> str:
        if not self.params:
            return self.kind
        args = ", ".join(f"{k}={v:g}" for k, v in sorted(self.params.items()))
        return f"{self.kind}({args})"


class Neuron(_Strict):
    """A neuron layer of an analog block: the node whose value is the state, and its activation.
    For an activation node the pre-activation is the node's input; otherwise the node's own value."""

    node: str
    activation: ActivationSpec
    preactivation: Literal["input", "self"] = "self"
    shape: list[int] | None = None
    source: str | None = Field(
        None,
        description="composite activation (an element-wise function written out "
        "with several ops, e.g. GELU with tanh): the node whose value is the "
        "pre-activation; None: the activation node's own input",
    )


class Block(_Strict):
    name: str
    kind: Literal["analog", "digital"]
    nodes: list[str]
    weight_layers: list[str] = Field(default_factory=list)
    neurons: list[Neuron] = Field(default_factory=list)
    identity_nodes: list[str] = Field(
        default_factory=list, description="nodes replaced by identity (removed norms, dropout)"
    )
    eb_kind: EBKind | None = None
    eb_params: dict[str, FiniteFloat] = Field(
        default_factory=dict, description="kind-specific settings (drn: gamma)"
    )
    analog: AnalogSpec | None = Field(
        None, description="device effects for this block (overrides the plan's)"
    )
    inputs: list[TensorRef] = Field(default_factory=list)
    outputs: list[TensorRef] = Field(default_factory=list)
    params: int = 0


class Decision(_Strict):
    """A record of something the partitioner changed or kept digital, and why."""

    node: str
    action: Literal[
        "removed", "absorbed", "substituted", "kept_digital", "split", "rescaled", "unconstrained"
    ]
    reason: str
    block: str | None = None


class ModelFingerprint(_Strict):
    """What a plan was made from, to refuse applying it to another model."""

    model_class: str
    trace: Literal["fx", "export"]
    graph_hash: str
    example_shapes: list[list[int]]


class Plan(_Strict):
    version: int = PLAN_VERSION
    model: ModelFingerprint
    config: PartitionConfig
    graph_inputs: list[TensorRef]
    graph_outputs: list[str]
    blocks: list[Block]
    decisions: list[Decision] = Field(default_factory=list)
    analog: AnalogSpec = Field(default_factory=AnalogSpec, description="device effects of every analog block")

    @field_validator("version")
    @classmethod
    def _known_version(cls, v: int) -> int:
        if v != PLAN_VERSION:
            raise ValueError(f"plan version {v} is not supported (this hybridc reads version {PLAN_VERSION})")
        return v

    @model_validator(mode="after")
    def _runs_in_order(self) -> Plan:
        """Blocks run in list order, so each block reads only graph inputs and earlier blocks' outputs: a
        block reading its own or a later block's output (a cycle, or blocks reordered by a hand edit) can
        never run, and is refused here with the names instead of failing inside compile or export."""
        names = [b.name for b in self.blocks]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"block names must be unique (repeated: {', '.join(dup)})")
        producer = {r.node: i for i, b in enumerate(self.blocks) for r in b.outputs}
        for i, b in enumerate(self.blocks):
            for r in b.inputs:
                j = producer.get(r.node)
                if j is not None and j >= i:
                    where = "itself" if j == i else f"the later block {self.blocks[j].name}"
                    raise ValueError(
                        f"block {b.name} reads {r.node}, an output of {where}: blocks must run in "
                        "order (a cycle, or blocks reordered by hand?); re-create the plan with "
                        "`hybridc partition`"
                    )
        return self

    def to_json(self) -> str:
        return self.model_dump_json(indent=2)

    @classmethod
    def from_json(cls, text: str) -> Plan:
        return cls.model_validate_json(text)

    def save(self, path: str | Path) -> None:
        from hybridc.files import atomic_write_text

        atomic_write_text(Path(path), self.to_json() + "\n")

    @classmethod
    def load(cls, path: str | Path) -> Plan:
        return cls.from_json(Path(path).read_text())

    def block(self, name: str) -> Block:
        for b in self.blocks:
            if b.name == name:
                return b
        raise KeyError(name)

    @property
    def analog_blocks(self) -> list[Block]:
        return [b for b in self.blocks if b.kind == "analog"]

    def schema_json(self) -> str:
        return json.dumps(self.model_json_schema(), indent=2)


def _validation_lines(exc: ValidationError) -> list[str]:
    out = []
    for e in exc.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"]
        if e["type"] == "json_invalid":
            msg = f"not valid JSON ({e.get('ctx', {}).get('error', msg)})"
        out.append(f"{loc}: {msg}")
    return out


def read_plan(path: str | Path) -> Plan:
    """`Plan.load` with every problem a PlanFileError naming the file and each reason (up to 10), e.g.
    `blocks.0.neurons.1.activation: hardsigmoid slope must be > 0`, instead of pydantic's bare count."""
    path = Path(path)
    if not path.is_file():
        raise PlanFileError(
            f"plan {path} does not exist" if not path.exists() else f"plan {path} is not a file"
        )
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise PlanFileError(f"cannot read plan {path}: {exc}") from None
    try:
        return Plan.from_json(text)
    except ValidationError as exc:
        lines = _validation_lines(exc)
        more = f"\n  ... and {len(lines) - 10} more" if len(lines) > 10 else ""
        raise PlanFileError(
            f"{path} is not a valid plan:\n  - "
            + "\n  - ".join(lines[:10])
            + more
            + "\n  Re-create it with `hybridc partition MODEL -f json -o FILE`."
        ) from None
