"""Neuron activations σ of energy-based blocks, built from the plan's ActivationSpec.

Every σ here is monotone non-decreasing (so it is the gradient of a convex G and the block has an energy).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F

from hybridc.errors import UnsupportedOpError
from hybridc.plan import ActivationSpec

Activation = Callable[[torch.Tensor], torch.Tensor]


def _hardsigmoid(u: torch.Tensor, slope: float = 1.0) -> torch.Tensor:
    """The paper's hard sigmoid clamp(a·u, 0, 1)."""
    return (u * slope).clamp(0.0, 1.0)


def _identity(u: torch.Tensor) -> torch.Tensor:
    return u


_TABLE: dict[str, Callable[..., torch.Tensor]] = {
    "hardsigmoid": _hardsigmoid,
    "identity": _identity,
    "relu": F.relu,
    "relu6": F.relu6,
    "leaky_relu": F.leaky_relu,
    "elu": F.elu,
    "celu": F.celu,
    "selu": F.selu,
    "sigmoid": torch.sigmoid,
    "tanh": torch.tanh,
    "hardtanh": F.hardtanh,
    "torch_hardsigmoid": F.hardsigmoid,
    "softplus": F.softplus,
    "softsign": F.softsign,
    "logsigmoid": F.logsigmoid,
    "tanhshrink": F.tanhshrink,
}

_PARAM_NAMES = {
    "hardsigmoid": {"slope"},
    "leaky_relu": {"negative_slope"},
    "elu": {"alpha"},
    "celu": {"alpha"},
    "hardtanh": {"min_val", "max_val"},
    "softplus": {"beta", "threshold"},
}


def make_activation(spec: ActivationSpec) -> Activation:
    """The callable σ for a spec; a clear error for unknown or non-monotone kinds."""
    fn = _TABLE.get(spec.kind)
    if fn is None:
        raise UnsupportedOpError(
            f"activation {spec.kind!r} cannot be a neuron activation (it must be monotone); "
            f"use one of {', '.join(sorted(_TABLE))}"
        )
    allowed = _PARAM_NAMES.get(spec.kind, set())
    unknown = set(spec.params) - allowed
    if unknown:
        raise UnsupportedOpError(f"activation {spec.kind!r} takes no parameter(s) {sorted(unknown)}")
    return partial(fn, **spec.params) if spec.params else fn
