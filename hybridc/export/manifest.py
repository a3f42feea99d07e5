"""The manifest of an exported ff-EBM: `DIR/manifest.json`, a pydantic model (JSON round-trip exact).

It describes the hybrid graph so that a consumer needs nothing else: the graph's inputs and outputs, every
tensor that links two blocks (name, shape with symbolic batch, dtype, producer), the blocks in execution
order, and for each block which file holds what:

- a **digital** block: one ONNX file `forward(inputs...) -> outputs`, whose input/output names are the
  tensor names of the manifest;
- an **analog** block (a deep Hopfield network): its weights (safetensors), its energy specification
  (neurons with their activations and shapes, synapses as paths of weight ops from a source tensor to a
  neuron, naming the weight tensors of the safetensors file) and solver settings (how many fixed-point
  steps, synchronous or even/odd), plus one ONNX file of the fixed-point map T (one relaxation step
  `(inputs..., states...) -> next states`) that a runtime iterates from zero states.

Tensor shapes list the batch axis as the string "batch" (or "k*batch" for a dimension that is a multiple of
the batch); every other entry is a fixed size.

The manifest carries its own SHA-256 (`digest`, over its content without that field; `save` seals it, `load`
checks it), as every other file of the export is covered by the manifest's `files`: a hand-edited manifest
(say, an activation changed) is refused. `hybridc verify` further checks the neuron, activation and solver
fields against the step graphs themselves (`hybridc.export.verify_spec`).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from hybridc.errors import HybridcError
from hybridc.plan import ActivationSpec

MANIFEST_VERSION = 1
MANIFEST_NAME = "manifest.json"
EXPORT_FORMAT = "hybridc-export"

#: a dimension: a fixed size, or "batch" / "k*batch" for the dynamic batch axis
Dim = int | str
JsonScalar = int | float | bool | str | None


class ExportError(HybridcError):
    """An export could not be written, or an export directory is missing, corrupt or inconsistent."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TensorInfo(_Strict):
    """A value that crosses a block boundary (or a graph input/output)."""

    shape: list[Dim] = Field(description="full shape; the batch axis is 'batch' (or 'k*batch')")
    dtype: str = "float32"
    producer: str = Field(description="the block that computes it, or 'input' for a graph input")


class FileInfo(_Strict):
    """A file of the export directory, with its SHA-256 (verify refuses a file that changed)."""

    path: str = Field(description="relative to the export directory, '/'-separated")
    kind: Literal["onnx", "safetensors", "plan", "samples", "manifest"]
    sha256: str
    bytes: int


class SourceInfo(_Strict):
    """What was exported: a model (zoo name or file) or a training run directory."""

    kind: Literal["model", "run", "python"]
    spec: str | None = Field(None, description="MODEL as given to the CLI (zoo name or path[:factory])")
    model_kwargs: dict[str, Any] = Field(default_factory=dict, description="zoo factory keyword arguments")
    run_dir: str | None = None
    checkpoint: str | None = None
    model_class: str | None = None


class OpInfo(_Strict):
    """One op on a synapse path: what it is, which weight tensors it reads, its static attributes."""

    node: str = Field(description="fx node name in the block's synapse graph")
    op: str = Field(
        description="module class (Conv2d, Linear, MaxPool2d, ...) or function (aten.linear.default)"
    )
    module: str | None = Field(None, description="qualified module name for a module call")
    weights: dict[str, str] = Field(
        default_factory=dict, description="role (weight, bias, arg1, ...) -> tensor name in the weights file"
    )
    attrs: dict[str, Any] = Field(default_factory=dict, description="static arguments (stride, padding, ...)")


class SynapseInfo(_Strict):
    """f_ij: a linear path from a source (block input or neuron) to a neuron's pre-activation.

    The neuron's pre-activation u_j is the sum of all its synapses' outputs (residual adds appear as an
    `add` op at the end of each summed path)."""

    target: str = Field(description="neuron whose pre-activation this path feeds")
    source: str = Field(description="block input tensor or neuron")
    source_kind: Literal["input", "neuron"]
    path: list[OpInfo] = Field(description="ops from the source to the pre-activation, in order")


class NeuronInfo(_Strict):
    """A neuron layer j: state s_j = σ_j(∂Φ/∂s_j) at equilibrium."""

    name: str
    shape: list[int] = Field(description="per-sample shape (the state is [batch_multiple·batch, *shape])")
    batch_multiple: int = Field(
        1,
        ge=1,
        description="rows of the state per sample: >1 where the neurons live "
        "in a patch layout (MobileViT unfolds an image into "
        "patch-area rows), like the block's inputs",
    )
    activation: ActivationSpec
    layer: int = Field(description="depth: 1 + deepest neuron its pre-activation reads (inputs are 0)")
    parity: int = Field(description="layer % 2: even neurons update first in async mode")
    output: bool = Field(description="handed on to other blocks / the graph output")
    state_input: str = Field(description="input name of this state in the step ONNX file")
    state_output: str = Field(description="output name of the next state in the step ONNX file")


class SolverInfo(_Strict):
    """How the exported relaxation runs: `steps` applications of T from zero states."""

    mode: Literal["sync", "async"]
    steps: int = Field(description="free-phase steps T1 the exported relaxation runs (fixed step mode)")
    init: Literal["zeros"] = "zeros"
    original: dict[str, Any] = Field(description="the block's SolverConfig as compiled (may use a tolerance)")
    note: str | None = Field(None, description="how the original settings were turned into fixed steps")


class DigitalBlockInfo(_Strict):
    name: str
    kind: Literal["digital"] = "digital"
    inputs: list[str]
    outputs: list[str]
    onnx: str = Field(description="forward(inputs...) -> outputs; ONNX names = tensor names")
    nodes: int = Field(0, description="fx nodes of the plan in this block")


class AnalogBlockInfo(_Strict):
    name: str
    kind: Literal["analog"] = "analog"
    eb_kind: Literal["dhn"] = "dhn"
    inputs: list[str]
    outputs: list[str] = Field(
        description="output neurons (their equilibrium states are the block's outputs)"
    )
    weights: str = Field(description="safetensors file of the synapse weights (names as in `synapses`)")
    step_onnx: str = Field(
        description="one step of the fixed-point map T: (inputs..., states...) -> next states"
    )
    energy: str = "E(s) = sum_j G_j(s_j) - Phi(s), Phi(s) = sum_j <s_j, u_j(s, x)>, grad G_j = sigma_j^-1"
    fixed_point: str = "s_j <- sigma_j(dPhi/ds_j), dPhi/ds_j = u_j + sum_k (du_k/ds_j)^T s_k"
    neurons: list[NeuronInfo]
    synapses: list[SynapseInfo]
    solver: SolverInfo
    weight_layers: list[str] = Field(default_factory=list)


BlockInfo = Annotated[DigitalBlockInfo | AnalogBlockInfo, Field(discriminator="kind")]


class FullModelInfo(_Strict):
    """The whole ff-EBM as one ONNX model, each analog relaxation run for its steps from zero states."""

    onnx: str
    relaxation: Literal["unroll", "loop"] = Field(
        "unroll", description="unroll: T copies of the step (loop-free graph); loop: one ONNX Loop per block"
    )
    steps: dict[str, int] = Field(description="analog block -> relaxation steps")
    inputs: list[str]
    outputs: list[str]


class PreprocessInfo(_Strict):
    """The input transform the model was trained with: raw images (the dataset's, values in [0, 1]) -> the
    graph input `input`. The full ONNX model applies it (its input is `raw_input`); the per-block files take
    `input` itself, so a runtime feeding them applies the formula first."""

    input: str = Field(description="the graph input the transform produces")
    raw_input: str = Field(description="name of the raw-image input of the full model (and of samples.npz)")
    raw_shape: list[int] = Field(description="per-sample shape of the raw images (C, H, W)")
    resize_to: list[int] | None = Field(
        None, description="(H, W) the raw images are resampled to first; None: no resampling"
    )
    resize_mode: str = Field(
        "bilinear",
        description="bilinear, align_corners=False (ONNX Resize linear, half_pixel), no antialiasing",
    )
    mean: list[float] = Field(description="per-channel mean subtracted after resizing")
    std: list[float] = Field(description="per-channel std divided by after subtracting the mean")
    formula: str = "input[:, c] = (resize(raw)[:, c] - mean[c]) / std[c]"
    applied_by_full_model: bool = Field(description="whether the full ONNX model takes raw images")


class SamplesInfo(_Strict):
    """Reference values computed by the torch model at export time (verify compares against them)."""

    file: str
    batch: int
    seed: int
    tensors: list[str] = Field(description="every graph input and block output, by tensor name")


class Manifest(_Strict):
    """Everything an export directory contains and how the pieces connect."""

    format: Literal["hybridc-export"] = EXPORT_FORMAT
    version: int = MANIFEST_VERSION
    hybridc_version: str
    torch_version: str
    created: str
    opset: int = Field(ge=17)
    dtype: Literal["float32"] = "float32"
    source: SourceInfo
    plan: str = Field(description="the plan the model was compiled with (plan.json)")
    graph_inputs: list[str]
    graph_outputs: list[str] = Field(description="distinct output tensors, in order of first use")
    output_structure: Any = Field(
        description="the model's output: a tensor name, or nested lists/dicts of them"
    )
    tensors: dict[str, TensorInfo]
    blocks: list[BlockInfo] = Field(description="in execution order")
    full: FullModelInfo | None = None
    preprocess: PreprocessInfo | None = Field(
        None, description="the trained input transform (None: the graph inputs are fed as they are)"
    )
    samples: SamplesInfo
    files: list[FileInfo] = Field(default_factory=list)
    warnings: list[str] = Field(default_factory=list)
    checks: dict[str, float] = Field(
        default_factory=dict, description="export-time measurements (e.g. fixed-step vs tolerance solver)"
    )
    digest: str | None = Field(
        None,
        description="SHA-256 of this manifest's content without this field (set by save, checked by load)",
    )

    @field_validator("version")
    @classmethod
    def _known_version(cls, v: int) -> int:
        if v != MANIFEST_VERSION:
            raise ValueError(f"manifest version {v} is not supported (this hybridc reads {MANIFEST_VERSION})")
        return v

    # ---- (de)serialisation ------------------------------------------------------------------------
    def to_json(self) -> str:
        return self.model_dump_json(indent=2)

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        return cls.model_validate_json(text)

    def content_digest(self) -> str:
        """SHA-256 of the manifest's JSON without the `digest` field."""
        return hashlib.sha256(self.model_dump_json(exclude={"digest"}).encode()).hexdigest()

    def save(self, path: str | Path) -> None:
        """Seal (set `digest`) and write atomically."""
        from hybridc.files import atomic_write_text

        self.digest = self.content_digest()
        atomic_write_text(Path(path), self.to_json() + "\n")

    @classmethod
    def load(cls, directory: str | Path) -> Manifest:
        """Read DIR/manifest.json; ExportError (one line per problem) when missing or invalid."""
        path = Path(directory) / MANIFEST_NAME
        if not Path(directory).is_dir():
            raise ExportError(
                f"{directory} is not a directory (expected an export directory with {MANIFEST_NAME})"
            )
        if not path.is_file():
            raise ExportError(f"{directory} has no {MANIFEST_NAME}: not a hybridc export directory")
        try:
            manifest = cls.from_json(path.read_text())
        except ValidationError as exc:
            msgs = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()[:5])
            raise ExportError(f"{path} is not a valid hybridc manifest: {msgs}") from None
        if manifest.digest is None:
            raise ExportError(
                f"{path} carries no digest (written by an older hybridc, or edited): re-export it"
            )
        if manifest.digest != manifest.content_digest():
            raise ExportError(
                f"{path} was changed after export (its content does not match its SHA-256 digest): "
                "the manifest describes the hardware-facing model and must not be edited; re-export"
            )
        return manifest

    # ---- queries ----------------------------------------------------------------------------------
    def block(self, name: str) -> DigitalBlockInfo | AnalogBlockInfo:
        for b in self.blocks:
            if b.name == name:
                return b
        raise KeyError(name)

    def file(self, path: str) -> FileInfo | None:
        return next((f for f in self.files if f.path == path), None)


def structure_to_json(template: Any) -> Any:
    """An fx output template (nodes, or their names, in tuples/lists/dicts) as JSON: node -> its name."""
    import torch.fx as fx

    if isinstance(template, fx.Node):
        return template.name
    if isinstance(template, str):
        return template
    if isinstance(template, (tuple, list)):
        return [structure_to_json(t) for t in template]
    if isinstance(template, dict):
        return {str(k): structure_to_json(v) for k, v in template.items()}
    if template is None:
        return None
    raise ExportError(f"the model's output contains a {type(template).__name__}, which cannot be exported")


def structure_names(structure: Any) -> list[str]:
    """Distinct tensor names of an output structure, in order of first appearance."""
    out: list[str] = []

    def walk(s: Any) -> None:
        if isinstance(s, str):
            if s not in out:
                out.append(s)
        elif isinstance(s, list):
            for t in s:
                walk(t)
        elif isinstance(s, dict):
            for t in s.values():
                walk(t)

    walk(structure)
    return out


def fill_structure(structure: Any, values: dict[str, Any]) -> Any:
    """Replace tensor names in `structure` by `values[name]` (lists stay lists)."""
    if isinstance(structure, str):
        return values[structure]
    if isinstance(structure, list):
        return [fill_structure(s, values) for s in structure]
    if isinstance(structure, dict):
        return {k: fill_structure(v, values) for k, v in structure.items()}
    return structure
