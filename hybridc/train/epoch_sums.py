"""The running sums of one training epoch, kept on the device so the loop adds no host sync per batch."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class EpochSums:
    """Running sums of one epoch, as device tensors (float64: exact across checkpoint round trips)."""

    loss: torch.Tensor
    correct: torch.Tensor
    residual: dict[str, torch.Tensor]
    samples: int = 0
    batches: int = 0
    elapsed: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def zeros(cls, device: torch.device, blocks: list[str]) -> EpochSums:
        z = functools.partial(torch.zeros, (), dtype=torch.float64, device=device)
        return cls(loss=z(), correct=z(), residual={k: z() for k in blocks})

    def read(self) -> list[float]:
        """All sums in one host transfer (one sync)."""
        return torch.stack([self.loss, self.correct, *self.residual.values()]).tolist()

    def to_state(self) -> dict[str, Any]:
        vals = self.read()
        return {
            "loss": vals[0],
            "correct": vals[1],
            "residual": dict(zip(self.residual, vals[2:])),
            "samples": self.samples,
            "batches": self.batches,
            "elapsed": self.elapsed,
        }

    @classmethod
    def from_state(cls, state: dict[str, Any], device: torch.device, blocks: list[str]) -> EpochSums:
        acc = cls.zeros(device, blocks)
        acc.loss.fill_(state["loss"])
        acc.correct.fill_(state["correct"])
        for k, v in state["residual"].items():
            if k in acc.residual:
                acc.residual[k].fill_(v)
        acc.samples, acc.batches, acc.elapsed = (
            int(state["samples"]),
            int(state["batches"]),
            float(state["elapsed"]),
        )
        return acc
