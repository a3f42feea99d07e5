"""The files of one block in an export directory, and the manifest entry that describes them.

- a digital block: `blocks/<name>.onnx`, `forward(inputs...) -> outputs` (`write_digital_block`);
- an analog block: `blocks/<name>.safetensors` (its synapse weights) and `blocks/<name>.step.onnx` (one
  relaxation step, `(inputs..., states...) -> next states`, reading its weights from the safetensors file
  rather than a copy), with its energy specification and exported solver (`write_analog_block`).

Both are traced on the trace batch's values (`hybridc.export.reference`), their batch axes as the manifest's
tensor table gives them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from hybridc.energy.dhn import DHNBlock
from hybridc.energy.settings import SolverConfig
from hybridc.export.energy import (
    describe_neurons,
    describe_synapses,
    save_weights,
    state_input_name,
    state_output_name,
)
from hybridc.export.full import StepModule
from hybridc.export.manifest import AnalogBlockInfo, DigitalBlockInfo, SolverInfo, TensorInfo
from hybridc.export.onnx_blocks import export_digital_block, export_onnx
from hybridc.export.shared_weights import share_weights

#: the directory of the block files, relative to the export directory
BLOCK_DIR = "blocks"


def block_file_paths(info: DigitalBlockInfo | AnalogBlockInfo) -> list[str]:
    """The files (relative paths) a block's manifest entry names, in the order they are written."""
    if isinstance(info, AnalogBlockInfo):
        return [info.step_onnx, info.weights]
    return [info.onnx]


def write_digital_block(
    block: nn.Module,
    name: str,
    ins: list[str],
    outs: list[str],
    env: dict[str, torch.Tensor],
    tensors: dict[str, TensorInfo],
    root: Path,
    opset: int,
    nodes: int,
) -> DigitalBlockInfo:
    """Write digital block `name` as `blocks/<name>.onnx` under `root`, traced on `env`'s values; `nodes`:
    how many graph nodes the plan puts in it (recorded in the manifest)."""
    rel = f"{BLOCK_DIR}/{name}.onnx"
    export_digital_block(
        block,
        name,
        [env[i] for i in ins],
        list(ins),
        list(outs),
        [tensors[i].shape for i in ins],
        root / rel,
        opset,
    )
    return DigitalBlockInfo(name=name, inputs=list(ins), outputs=list(outs), onnx=rel, nodes=nodes)


def _state_batch_multiples(
    states: list[torch.Tensor], inputs: list[torch.Tensor], specs: list[list[Any]]
) -> list[int]:
    """Rows per sample of each state: its leading dim over the batch, read off the first input whose leading
    dim scales with the batch ('batch' or 'k*batch' in its manifest shape); 1 when none does."""
    for x, spec in zip(inputs, specs):
        if spec and isinstance(spec[0], str):
            k = int(spec[0].split("*")[0]) if "*" in spec[0] else 1
            batch = x.shape[0] // k
            return [max(1, s.shape[0] // batch) if batch and s.shape[0] % batch == 0 else 1 for s in states]
    return [1] * len(states)


def write_analog_block(
    block: DHNBlock,
    name: str,
    ins: list[str],
    outs: list[str],
    env: dict[str, torch.Tensor],
    tensors: dict[str, TensorInfo],
    root: Path,
    opset: int,
    original: SolverConfig,
    note: str | None,
    weight_layers: list[str],
) -> AnalogBlockInfo:
    """Write analog block `name` under `root` as `blocks/<name>.safetensors` and `blocks/<name>.step.onnx`
    (traced on `env`'s inputs and random states) and describe it: neurons, synapses, the exported solver
    next to the compiled one (`original`, with `note` where they differ) and the plan's weight layers."""
    weights_rel = f"{BLOCK_DIR}/{name}.safetensors"
    step_rel = f"{BLOCK_DIR}/{name}.step.onnx"
    save_weights(block, root / weights_rel)
    inputs = [env[i] for i in ins]
    gen = torch.Generator().manual_seed(0)
    states = [torch.rand(s.shape, generator=gen) for s in block.initial_states(inputs)]
    multiples = _state_batch_multiples(states, inputs, [tensors[i].shape for i in ins])
    state_specs = [
        ["batch" if k == 1 else f"{k}*batch", *shape] for k, shape in zip(multiples, block.neuron_shapes)
    ]
    export_onnx(
        StepModule(block),
        [*inputs, *states],
        root / step_rel,
        [*ins, *(state_input_name(n) for n in block.neuron_names)],
        [state_output_name(n) for n in block.neuron_names],
        [*(tensors[i].shape for i in ins), *state_specs],
        f"analog block {name} (relaxation step)",
        opset,
    )
    share_weights(root / step_rel, root / weights_rel)  # the step file reads the weights, not a copy
    return AnalogBlockInfo(
        name=name,
        inputs=list(ins),
        outputs=list(outs),
        weights=weights_rel,
        step_onnx=step_rel,
        neurons=describe_neurons(block, multiples),
        synapses=describe_synapses(block, ins),
        solver=SolverInfo(
            mode=block.solver.mode, steps=block.solver.t1, original=original.model_dump(), note=note
        ),
        weight_layers=list(weight_layers),
    )


__all__ = ["BLOCK_DIR", "block_file_paths", "write_analog_block", "write_digital_block"]
