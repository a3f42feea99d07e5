"""Initialisation of analog-block weights: the ff-EBM paper's Gaussian-orthogonal-ensemble (GOE) init.

Two variants:

* ``goe_init(compiled, variance)`` (``init="goe"``): every weight of every analog block (convs *and* Linear
  layers) gets GOE slices of off-diagonal variance ``variance`` (`goe_`), biases zero. hybridc's original
  reading of the paper; MLP tests and benchmarks rely on it touching Linear layers.
* ``goe_init(compiled, variance, scope="conv")`` (``init="goe-conv"``): the reference code's
  (``src/models/initializers.py``, weight class ``GOE``): only the convolutions of analog blocks are
  re-drawn, every k×k kernel slice from `goe_reference_` (off-diagonal variance V/k, diagonal 8V/k), their
  biases zeroed; Linear layers, norms and the (digital) readout keep the model's own (PyTorch) init.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn

GoeScope = Literal["all", "conv"]


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
def goe_reference_(
    weight: torch.Tensor, variance: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """The reference code's GOE kernel (``gaussian_symmetric_random_matrix(k, V)``), in place, for a conv
    weight (out, in, k, k): per slice, A ~ N(0, V/k), S = tril(A) + tril(A)ᵀ with the diagonal scaled by √2,
    so off-diagonal entries have variance V/k and diagonal entries 8V/k (2·A_ii·√2)."""
    if weight.dim() != 4 or weight.shape[-1] != weight.shape[-2]:
        raise ValueError(
            f"goe_reference_ needs a conv weight with square kernels, got shape {tuple(weight.shape)}"
        )
    k = weight.shape[-1]
    a = torch.randn(weight.shape, generator=generator, dtype=torch.float64) * math.sqrt(variance / k)
    low = torch.tril(a)
    s = low + low.transpose(-1, -2)
    idx = torch.arange(k)
    s[..., idx, idx] *= math.sqrt(2.0)
    weight.copy_(s.to(weight.device, weight.dtype))
    return weight


def _conv_modules(block: nn.Module) -> list[nn.Module]:
    return [m for m in block.modules() if isinstance(m, nn.modules.conv._ConvNd)]


@torch.no_grad()
def goe_init(compiled: nn.Module, variance: float = 5e-5, scope: GoeScope = "all") -> None:
    """GOE init of the analog blocks' weights. `scope` "all": every weight (≥ 2-D) by `goe_`, every bias
    zeroed; "conv": the reference's — conv kernels by `goe_reference_`, their biases zeroed, nothing else
    touched (Linear layers, norms and digital blocks keep their init)."""
    blocks = getattr(compiled, "analog_blocks", {})
    if scope not in ("all", "conv"):
        raise ValueError(f"goe_init scope must be 'all' or 'conv', not {scope!r}")
    for block in blocks.values():
        if scope == "conv":
            for m in _conv_modules(block):
                goe_reference_(m.weight, variance)
                if m.bias is not None:
                    m.bias.zero_()
            continue
        for name, p in block.named_parameters():
            if p.dim() >= 2:
                goe_(p, variance)
            elif name.endswith("bias"):
                p.zero_()
