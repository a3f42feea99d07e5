"""Initialisation of analog-block weights: the ff-EBM paper's Gaussian-orthogonal-ensemble (GOE) init."""

from __future__ import annotations

import math

import torch
from torch import nn


@torch.no_grad()
def goe_(weight: torch.Tensor, variance: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Fill `weight` in place with symmetric Gaussian slices: every trailing square slice (a k×k conv
    kernel, or a square Linear matrix) is (A + Aᵀ)/√2 with A ~ N(0, variance) — the GOE, whose
    off-diagonal entries have variance `variance`. Non-square 2-D weights get i.i.d. N(0, variance)."""
    std = math.sqrt(variance)
    a = torch.randn(weight.shape, generator=generator, dtype=weight.dtype, device="cpu") * std
    if weight.dim() >= 2 and weight.shape[-1] == weight.shape[-2]:
        a = (a + a.transpose(-1, -2)) / math.sqrt(2.0)
    weight.copy_(a.to(weight.device))
    return weight


@torch.no_grad()
def goe_init(compiled: nn.Module, variance: float = 5e-5) -> None:
    """GOE init of every weight of every analog block (biases set to zero)."""
    blocks = getattr(compiled, "analog_blocks", {})
    for block in blocks.values():
        for name, p in block.named_parameters():
            if p.dim() >= 2:
                goe_(p, variance)
            elif name.endswith("bias"):
                p.zero_()
