"""Analog device non-idealities applied to energy-based blocks (configured by the plan's AnalogSpec).

- Weights: clipped to the conductance range, quantised to n levels, plus programming noise that is drawn
  once per programming event (i.e. whenever the weights change) — through a parametrization with a
  straight-through gradient, so EP/ID/BPTT see the programmed weights and the optimizer updates the ideal ones.
- Read noise: Gaussian noise on every neuron update during relaxation (see `EnergyBlock.read_noise`).
- DAC/ADC: uniform quantisation of block inputs/outputs with straight-through gradients.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize

from hybridc.plan import AnalogSpec


def quantize_ste(x: torch.Tensor, bits: int, full_scale: float | None) -> torch.Tensor:
    """Uniform symmetric quantisation to 2^bits levels over ±full_scale (per-tensor max |x| if None),
    with a straight-through gradient."""
    r = torch.as_tensor(full_scale, dtype=x.dtype, device=x.device) if full_scale else x.detach().abs().amax()
    r = r.clamp_min(torch.finfo(x.dtype).tiny)
    step = 2 * r / (2**bits - 1)
    q = torch.round((x.clamp(-r, r) + r) / step) * step - r
    return q.detach() + (x - x.detach())


class ProgrammedWeight(nn.Module):
    """Parametrization: ideal weight → programmed weight (range, levels, programming noise)."""

    def __init__(self, spec: AnalogSpec, non_negative: bool = False):
        super().__init__()
        self.spec = spec
        self.non_negative = non_negative
        self._noise: torch.Tensor | None = None
        self._key: tuple | None = None

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        spec = self.spec
        with torch.no_grad():
            r = spec.weight_range if spec.weight_range else float(w.detach().abs().amax()) or 1.0
            lo = 0.0 if self.non_negative else -r
            eff = w.detach().clamp(lo, r)
            if spec.weight_levels:
                step = (r - lo) / (spec.weight_levels - 1)
                eff = torch.round((eff - lo) / step) * step + lo
            if spec.program_noise:
                key = (w.data_ptr(), w._version, tuple(w.shape), w.dtype, w.device)
                if key != self._key or self._noise is None:
                    self._noise = torch.randn_like(w) * (spec.program_noise * r)
                    self._key = key
                eff = eff + self._noise
        return eff + (w - w.detach())  # value: exactly eff; gradient: identity (straight-through)


def _weight_slots(block: nn.Module) -> list[tuple[nn.Module, str, bool]]:
    """(owner module, attribute, non-negative?) of every weight matrix/kernel in an analog block."""
    slots = []
    for mod in block.modules():
        for name, p in list(mod._parameters.items()):
            if p is not None and p.dim() >= 2 and not parametrize.is_parametrized(mod, name):
                slots.append((mod, name, bool((p.detach() >= 0).all())))
    return slots


def apply_device_effects(block: nn.Module, spec: AnalogSpec) -> None:
    """Install `spec` on an analog block: weight parametrizations now; read noise and DAC/ADC are read
    from `block.analog` by the block at run time."""
    block.analog = spec
    if spec.weights_affected:
        for mod, name, non_negative in _weight_slots(block):
            parametrize.register_parametrization(mod, name, ProgrammedWeight(spec, non_negative), unsafe=True)
