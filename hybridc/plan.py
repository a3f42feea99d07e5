"""The plan: the declarative, human-editable description of how a model is split into analog
(energy-based) and digital (feedforward) blocks. `compile(model, plan)` builds exactly what it says."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

PLAN_VERSION = 1

NormPolicy = Literal["split", "entry", "drop"]
PoolPolicy = Literal["digital", "absorb"]
AttentionPolicy = Literal["digital", "analog"]
ActivationPolicy = Literal["hardsigmoid", "keep"]
NonMonotonePolicy = Literal["substitute", "refuse"]
EBKind = Literal["dhn", "drn"]


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
    hardsigmoid_slope: float = Field(0.5, gt=0, description="a in clamp(a*u, 0, 1)")
    non_monotone: NonMonotonePolicy = Field(
        "substitute", description="GELU/SiLU/... under `keep`: substitute ReLU or keep the op digital")
    eb_kind: EBKind = Field("dhn", description="energy-based block kind for analog blocks")
    drn_gamma: float = Field(1.0, gt=0, description="drn input voltage gain γ (sources γ·[x, −x])")


class AnalogSpec(_Strict):
    """Device non-idealities of analog blocks (all off by default). Weight effects act on the programmed
    (effective) weights with straight-through gradients, so training sees the device and updates the ideal
    weights; read noise acts on every relaxation step; DAC/ADC quantise values entering/leaving a block."""

    program_noise: float = Field(0.0, ge=0, description="std of weight programming noise, relative to the "
                                 "range (or the tensor's max |w|); resampled whenever the weights change")
    weight_range: float | None = Field(None, gt=0, description="|w| ≤ range (conductance range); none = unbounded")
    weight_levels: int | None = Field(None, ge=2, description="programmable levels across the range")
    read_noise: float = Field(0.0, ge=0, description="std of Gaussian noise added to every neuron update")
    dac_bits: int | None = Field(None, ge=2, le=32, description="bits of block inputs (digital → analog)")
    adc_bits: int | None = Field(None, ge=2, le=32, description="bits of block outputs (analog → digital)")
    io_range: float | None = Field(None, gt=0, description="DAC/ADC full scale ±range; none = per-batch max |x|")

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
    params: dict[str, float] = Field(default_factory=dict)

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
    source: str | None = Field(None, description="composite activation (an element-wise function written out "
                               "with several ops, e.g. GELU with tanh): the node whose value is the "
                               "pre-activation; None: the activation node's own input")


class Block(_Strict):
    name: str
    kind: Literal["analog", "digital"]
    nodes: list[str]
    weight_layers: list[str] = Field(default_factory=list)
    neurons: list[Neuron] = Field(default_factory=list)
    identity_nodes: list[str] = Field(default_factory=list,
                                      description="nodes replaced by identity (removed norms, dropout)")
    eb_kind: EBKind | None = None
    eb_params: dict[str, float] = Field(default_factory=dict, description="kind-specific settings (drn: gamma)")
    analog: AnalogSpec | None = Field(None, description="device effects for this block (overrides the plan's)")
    inputs: list[TensorRef] = Field(default_factory=list)
    outputs: list[TensorRef] = Field(default_factory=list)
    params: int = 0


class Decision(_Strict):
    """A record of something the partitioner changed or kept digital, and why."""

    node: str
    action: Literal["removed", "absorbed", "substituted", "kept_digital", "split", "rescaled", "unconstrained"]
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

    def to_json(self) -> str:
        return self.model_dump_json(indent=2)

    @classmethod
    def from_json(cls, text: str) -> Plan:
        return cls.model_validate_json(text)

    def save(self, path: str | Path) -> None:
        from hybridc.runtime.files import atomic_write_text

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
