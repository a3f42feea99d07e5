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
    """Signed mid-tread quantisation over ±full_scale (per-tensor max |x| if None), with a straight-through
    gradient: the 2^bits − 1 levels k·r/(2^(bits−1) − 1) of a signed converter (two's complement less its
    most negative code), so 0 — an image background, a silent neuron — is converted exactly."""
    r = torch.as_tensor(full_scale, dtype=x.dtype, device=x.device) if full_scale else x.detach().abs().amax()
    r = r.clamp_min(torch.finfo(x.dtype).tiny)
    step = r / (2 ** (bits - 1) - 1)
    q = torch.round(x.clamp(-r, r) / step) * step
    return q.detach() + (x - x.detach())


class ProgrammedWeight(nn.Module):
    """Parametrization: ideal weight → programmed weight (range, levels, programming noise).

    `non_negative`: the weight is a physical conductance (DRN): the range is [0, r] and programming noise
    never makes it negative. `seed`: draw the programming noise from a private generator seeded with it
    (reproducible, and independent of the global RNG); None = the global RNG.
    """

    def __init__(self, spec: AnalogSpec, non_negative: bool = False, seed: int | None = None):
        super().__init__()
        self.spec = spec
        self.non_negative = non_negative
        self.seed = seed
        self._generator: torch.Generator | None = None
        self._noise: torch.Tensor | None = None
        self._key: tuple | None = None

    def _draw(self, w: torch.Tensor) -> torch.Tensor:
        if self.seed is None:
            return torch.randn_like(w)
        if self._generator is None or self._generator.device != w.device:
            self._generator = torch.Generator(device=w.device)
            self._generator.manual_seed(self.seed)
        return torch.randn(w.shape, generator=self._generator, dtype=w.dtype, device=w.device)

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
                    self._noise = self._draw(w) * (spec.program_noise * r)
                    self._key = key
                eff = eff + self._noise
                if self.non_negative:
                    eff = eff.clamp_min(0.0)  # a programmed conductance is still a conductance
        return eff + (w - w.detach())  # value: exactly eff; gradient: identity (straight-through)


def _non_negative(block: nn.Module) -> bool:
    """Whether a block's weights are physical conductances (≥ 0): DRN blocks (or a block that says so)."""
    return bool(getattr(block, "non_negative_weights", getattr(block, "kind", None) == "drn"))


def _weight_slots(block: nn.Module) -> list[tuple[nn.Module, str, bool]]:
    """(owner module, attribute, non-negative?) of every weight matrix/kernel in an analog block."""
    non_negative = _non_negative(block)
    slots = []
    for mod in block.modules():
        for name, p in list(mod._parameters.items()):
            if p is not None and p.dim() >= 2 and not parametrize.is_parametrized(mod, name):
                slots.append((mod, name, non_negative))
    return slots


def remove_device_effects(block: nn.Module) -> None:
    """Take every device-effect weight parametrization off `block` (the ideal weights stay, as the same
    Parameter objects, so optimizers holding them keep working) and reset `block.analog` to ideal."""
    for mod in list(block.modules()):
        if not parametrize.is_parametrized(mod):
            continue
        for name in list(mod.parametrizations.keys()):
            plist = mod.parametrizations[name]
            ours = [isinstance(f, ProgrammedWeight) for f in plist]
            if not any(ours):
                continue
            if not all(ours):
                raise ValueError(
                    f"{type(mod).__name__}.{name} has device effects stacked with other "
                    "parametrizations; remove those first"
                )
            parametrize.remove_parametrizations(mod, name, leave_parametrized=False)
    block.analog = AnalogSpec()


def apply_device_effects(block: nn.Module, spec: AnalogSpec, seed: int | None = None) -> None:
    """Install `spec` on an analog block, replacing any effects it had: weight parametrizations now; read
    noise and DAC/ADC are read from `block.analog` by the block at run time. `seed`: see ProgrammedWeight
    (each weight gets its own seed, `seed + i`)."""
    remove_device_effects(block)
    block.analog = spec
    if spec.weights_affected:
        for i, (mod, name, non_negative) in enumerate(_weight_slots(block)):
            parametrize.register_parametrization(
                mod,
                name,
                ProgrammedWeight(spec, non_negative, None if seed is None else seed + i),
                unsafe=True,
            )
