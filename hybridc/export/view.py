"""The compiled model in its export state, for the duration of an export: eval mode, float32 parameters and
buffers, fixed-step solvers, the autograd-free ∂Φ/∂s in every analog block; restored exactly afterwards.

Everything an export writes (the reference samples, every block file, model.onnx) is taken in this state, so
that the files reproduce what the model computes in it; what the fixed-step solvers change from the compiled
ones is recorded (`ExportView`) for the manifest and for measuring the difference.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from hybridc.energy.settings import SolverConfig
from hybridc.export.full import ensure_fast_path, export_solver

if TYPE_CHECKING:
    from hybridc.runtime.ffebm import FFEBM


@dataclass
class ExportView:
    """What `export_view` changed: per analog block the compiled solver, and a note where the exported
    fixed-step solver differs from it."""

    originals: dict[str, SolverConfig]
    notes: dict[str, str]


@contextlib.contextmanager
def export_view(ff: FFEBM, steps: int | None = None) -> Iterator[ExportView]:
    """Put `ff` in its export state for the duration of the block, then restore it exactly:
    eval mode, float32 parameters and buffers, fixed-step solvers, autograd-free ∂Φ/∂s in every analog
    block. (The compiled module is modified in place and restored: a deep copy is not possible for
    graphs captured by torch.export, whose fx nodes carry fake tensors.)"""
    training = {m: m.training for m in ff.modules()}
    analog = ff.analog_blocks
    saved_solver = {n: b.solver for n, b in analog.items()}
    saved_fast = {n: b.fast for n, b in analog.items() if b.export_unsupported_reason() is None}
    saved_data: list[tuple[torch.Tensor, torch.Tensor]] = []
    try:
        ff.eval()
        for t in [*ff.parameters(), *ff.buffers()]:
            if t.is_floating_point() and t.dtype != torch.float32:
                saved_data.append((t, t.data))
                t.data = t.data.to(torch.float32)
        fixed = {n: export_solver(b.solver, steps, b.free_cap()) for n, b in analog.items()}
        view = ExportView(
            originals=dict(saved_solver), notes={n: note for n, (_, note) in fixed.items() if note}
        )
        for n, b in analog.items():
            b.solver = fixed[n][0]
            ensure_fast_path(b)
        yield view
    finally:
        for t, data in saved_data:
            t.data = data
        for n, b in analog.items():
            b.solver = saved_solver[n]
            if n in saved_fast:
                b.fast = saved_fast[n]
        for m, mode in training.items():
            m.training = mode


__all__ = ["ExportView", "export_view"]
