"""Optimizers that simulate training on analog in-memory (resistive crossbar) hardware.

The weights of an analog tile are conductances of resistive devices.  Following

    Z. Wu, T. Gokmen, M. J. Rasch, T. Chen, "Towards Exact Gradient-based Training on
    Analog In-memory Computing", NeurIPS 2024 (arXiv:2406.12774),

each device is modelled with the asymmetric *soft-bounds* response: an update of nominal
size ``Δ`` applied to a device holding ``W`` actually changes it by

    Δ − (|Δ| / τ) ⊙ W,

i.e. increments shrink as ``W`` approaches ``+τ`` and decrements shrink as ``W`` approaches
``−τ``; ``τ > 0`` is the (symmetric) bound of the device's dynamic range.  Two
optimizers are provided:

* :class:`AnalogSGD` — plain SGD applied to the analog array ("Analog SGD" in the paper).
  Its stochastic fixed point is biased: it converges only to a neighbourhood of the
  optimum ``W*`` whose radius grows with ``‖W*‖/τ`` (and with the gradient noise).
* :class:`TikiTaka` — the two-array Tiki-Taka algorithm (TT-v1) analysed in the paper:
  the gradient is accumulated on a fast analog array ``P`` whose symmetric point is 0,
  and ``P`` is transferred into the weight array ``W``.  It converges exactly: its fixed
  point is a critical point, and with a constant step size its residual error shrinks
  with the step size (like digital SGD's) instead of growing with ``‖W*‖/τ``.

Both are ordinary :class:`torch.optim.Optimizer` subclasses (parameter groups,
``state_dict``/``load_state_dict``, closures, CPU and CUDA tensors).  The update math is
done in place with ``torch._foreach_*`` kernels when ``foreach`` is enabled (default:
enabled for CUDA tensors, disabled on CPU where the per-tensor loop is as fast), and with
a per-tensor loop otherwise; both paths compute the same expressions.

One module over 400 lines on purpose: both optimizers share the soft-bounds device model and its foreach and
per-tensor kernels, which are read and checked side by side.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

__all__ = ["AnalogSGD", "TikiTaka", "soft_bounds_update_"]


# ----------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------


def _check_positive(name: str, value: Any, *, allow_inf: bool = False) -> float:
    if isinstance(value, Tensor):
        if value.numel() != 1:
            raise ValueError(f"{name} must be a scalar, got a tensor of shape {tuple(value.shape)}")
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a real number, got {value!r}")
    value = float(value)
    if math.isnan(value) or value <= 0.0:
        raise ValueError(f"Invalid {name}: {value} (must be > 0)")
    if math.isinf(value) and not allow_inf:
        raise ValueError(f"Invalid {name}: {value} (must be finite)")
    return value


def _check_nonnegative(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a real number, got {value!r}")
    value = float(value)
    if not math.isfinite(value) or value < 0.0:
        raise ValueError(f"Invalid {name}: {value} (must be finite and >= 0)")
    return value


def _check_positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"Invalid {name}: {value!r} (must be an integer >= 1)")
    return value


def _check_param(p: Tensor) -> None:
    if p.grad is not None and p.grad.is_sparse:
        raise RuntimeError("analog optimizers do not support sparse gradients")
    if torch.is_complex(p):
        raise RuntimeError("analog optimizers do not support complex parameters")


def _default_foreach(tensors: list[Tensor]) -> bool:
    return bool(tensors) and all(t.device.type == "cuda" for t in tensors)


def _group_by_device_dtype(*lists: list[Tensor]) -> list[tuple[list[Tensor], ...]]:
    """Split parallel tensor lists into buckets of equal (device, dtype) for foreach ops."""
    buckets: dict[tuple[torch.device, torch.dtype], tuple[list[Tensor], ...]] = defaultdict(
        lambda: tuple([] for _ in lists)
    )
    for items in zip(*lists):
        key = (items[0].device, items[0].dtype)
        for bucket, item in zip(buckets[key], items):
            bucket.append(item)
    return list(buckets.values())


def soft_bounds_update_(w: Tensor, delta: Tensor, tau: float, *, clamp: bool = True) -> Tensor:
    """Apply a nominal update ``delta`` to the analog array ``w`` in place (soft bounds).

    ``w ← w + delta − (|delta| / tau) ⊙ w``, computed as ``w ⊙ (1 − |delta|/tau) + delta``;
    with ``clamp`` the result is then clipped to ``[−tau, tau]`` (a no-op whenever
    ``|delta| ≤ tau`` elementwise and ``|w| ≤ tau`` before the update, see
    :class:`AnalogSGD`).  ``tau = inf`` gives the ideal (digital) update ``w ← w + delta``.
    Returns ``w``.
    """
    tau = _check_positive("tau", tau, allow_inf=True)
    with torch.no_grad():
        if math.isinf(tau):
            w.add_(delta)
            return w
        w.mul_(delta.abs().mul_(-1.0 / tau).add_(1.0)).add_(delta)
        if clamp:
            w.clamp_(-tau, tau)
    return w


def _soft_bounds_step(
    ws: list[Tensor],
    updates: list[Tensor],
    scale: float,
    tau: float,
    clamp: bool,
    foreach: bool,
) -> None:
    """In place, for every pair: ``w ← w + scale·u − (|scale|/tau)|u| ⊙ w`` (then clamp).

    ``updates`` are not modified.
    """
    if not ws:
        return
    inv_tau = 0.0 if math.isinf(tau) else 1.0 / tau
    if foreach:
        for w_b, u_b in _group_by_device_dtype(ws, updates):
            if inv_tau != 0.0:
                factor = torch._foreach_abs(u_b)
                torch._foreach_mul_(factor, -abs(scale) * inv_tau)
                torch._foreach_add_(factor, 1.0)
                torch._foreach_mul_(w_b, factor)
            torch._foreach_add_(w_b, u_b, alpha=scale)
            if clamp and inv_tau != 0.0:
                torch._foreach_clamp_min_(w_b, -tau)
                torch._foreach_clamp_max_(w_b, tau)
        return
    for w, u in zip(ws, updates):
        if inv_tau != 0.0:
            w.mul_(u.abs().mul_(-abs(scale) * inv_tau).add_(1.0))
        w.add_(u, alpha=scale)
        if clamp and inv_tau != 0.0:
            w.clamp_(-tau, tau)


def _effective_grads(
    params: list[Tensor], grads: list[Tensor], weight_decay: float, foreach: bool
) -> list[Tensor]:
    """``g + weight_decay·W`` (new tensors when weight_decay ≠ 0, else the grads themselves)."""
    if weight_decay == 0.0:
        return grads
    if foreach:
        out: list[Tensor] = [None] * len(grads)  # type: ignore[list-item]
        index = {id(g): i for i, g in enumerate(grads)}
        for p_b, g_b in _group_by_device_dtype(params, grads):
            res = torch._foreach_add(g_b, p_b, alpha=weight_decay)
            for g, r in zip(g_b, res):
                out[index[id(g)]] = r
        return out
    return [g.add(p, alpha=weight_decay) for p, g in zip(params, grads)]


# ----------------------------------------------------------------------------------------
# Analog SGD
# ----------------------------------------------------------------------------------------


class AnalogSGD(Optimizer):
    r"""Stochastic gradient descent on a soft-bounds analog device ("Analog SGD").

    For every parameter ``W`` with gradient ``∇f`` (and ``g = ∇f + weight_decay·W``)
    one step performs the update of Wu et al. (NeurIPS 2024, Eq. "Analog SGD"):

    .. math::

        W \leftarrow W - \alpha g - \frac{\alpha}{\tau} |g| \odot W ,

    i.e. the nominal update ``Δ = −α g`` passed through the soft-bounds device response
    ``Δ − (|Δ|/τ) ⊙ W``.  It is computed as ``W ⊙ (1 − α|g|/τ) − α g``.

    Device bound.  If ``|W| ≤ τ`` and ``α|g| ≤ τ`` elementwise, the new weight is the convex
    combination ``(1 − s)·W + s·(∓τ)`` with ``s = α|g|/τ ∈ [0, 1]``, so the soft-bounds
    model itself keeps ``W`` in ``[−τ, τ]``.  Larger nominal steps would overshoot the
    bound, which a physical device cannot do; with ``clamp=True`` (default) ``W`` is
    therefore clipped to ``[−τ, τ]`` after every step.  The clip is a no-op in the regime
    above (and it also pulls initial weights that lie outside the range back into it at the
    first step).  Use ``clamp=False`` for the bare recursion.

    ``tau=math.inf`` is allowed and recovers ``torch.optim.SGD`` (no momentum) exactly.

    Args:
        params: iterable of parameters or parameter-group dicts.
        lr: learning rate ``α > 0``.
        tau: device bound ``τ > 0`` (``math.inf`` for an ideal device).
        weight_decay: L2 penalty added to the gradient (``g = ∇f + weight_decay·W``,
            as in ``torch.optim.SGD``) before the device response; ``>= 0``.
        clamp: clip ``W`` to ``[−τ, τ]`` after each step (see above).
        foreach: use the vectorised ``torch._foreach_*`` path (``None``: only when all
            parameters of a group are CUDA tensors).

    Reference: Z. Wu, T. Gokmen, M. J. Rasch, T. Chen, "Towards Exact Gradient-based
    Training on Analog In-memory Computing", NeurIPS 2024, arXiv:2406.12774.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float,
        tau: float,
        weight_decay: float = 0.0,
        *,
        clamp: bool = True,
        foreach: bool | None = None,
    ) -> None:
        defaults = {
            "lr": _check_positive("lr", lr),
            "tau": _check_positive("tau", tau, allow_inf=True),
            "weight_decay": _check_nonnegative("weight_decay", weight_decay),
            "clamp": bool(clamp),
            "foreach": foreach,
        }
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        for key, check in (("lr", _check_positive), ("weight_decay", _check_nonnegative)):
            if key in param_group:
                param_group[key] = check(key, param_group[key])
        if "tau" in param_group:
            param_group["tau"] = _check_positive("tau", param_group["tau"], allow_inf=True)
        super().add_param_group(param_group)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """Perform one optimisation step; ``closure`` re-evaluates the model and returns the loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params: list[Tensor] = []
            grads: list[Tensor] = []
            for p in group["params"]:
                if p.grad is None:
                    continue
                _check_param(p)
                params.append(p)
                grads.append(p.grad)
                state = self.state[p]
                state["step"] = state.get("step", 0) + 1
            if not params:
                continue
            foreach = group["foreach"] if group["foreach"] is not None else _default_foreach(params)
            g_eff = _effective_grads(params, grads, group["weight_decay"], foreach)
            _soft_bounds_step(params, g_eff, -group["lr"], group["tau"], group["clamp"], foreach)
        return loss


# ----------------------------------------------------------------------------------------
# Tiki-Taka
# ----------------------------------------------------------------------------------------


class TikiTaka(Optimizer):
    r"""Tiki-Taka (TT-v1, two analog arrays) as analysed by Wu et al., NeurIPS 2024.

    Each parameter ``W`` (the "main" analog array, the one the model computes with) gets an
    auxiliary analog array ``P`` of the same shape (``self.state[W]["P"]``, initialised to
    0 — the symmetric point of the device).  With ``g = ∇f(W) + weight_decay·W`` evaluated
    at the current ``W``, step ``k`` performs

    .. math::

        P_{k+1} &= P_k - \alpha g_k - \frac{\alpha}{\tau_P} |g_k| \odot P_k \\
        W_{k+1} &= W_k + \beta P_{k+1} - \frac{\beta}{\tau} |P_{k+1}| \odot W_k
                   \qquad \text{if } (k+1) \bmod T = 0, \text{ else } W_{k+1} = W_k

    (``α = lr``, ``β = transfer_lr``, ``T = transfer_every``, ``k`` counts the steps
    in which this parameter had a gradient).  Both lines are the soft-bounds device
    response to the nominal updates ``−α g`` (on ``P``) and ``β P`` (on ``W``).  With
    ``T = 1`` this is the TT recursion analysed in the paper (transfer every step).  Here
    ``P`` holds a *descent* direction; write-ups that let ``P`` accumulate ``+α g`` and
    subtract ``β P`` from ``W`` describe the same algorithm (``P ↦ −P`` leaves the
    soft-bounds terms unchanged since they only involve ``|P|``).  ``T > 1`` models the
    periodic transfer of the hardware algorithm.  Details fixed here:

    * the new ``P_{k+1}`` (not ``P_k``) is transferred, as in the paper;
    * ``P`` is **not** reset or decayed after a transfer (the analysed algorithm keeps
      accumulating on ``P``; its own soft-bounds term ``−(α/τ_P)|g|⊙P`` is what makes it
      forget, pulling it towards its symmetric point 0);
    * the whole ``P`` is transferred at once (a digital read of ``P`` and one analog
      update of ``W``), not column by column as in the original hardware proposal;
    * the model's forward/backward pass uses ``W`` only (no ``γ·P`` mixing);
    * no device noise, pulse quantisation or device-to-device variation is simulated.

    Device bounds: ``P`` lives on a device with bound ``τ_P`` (``tau_p``, default ``tau``)
    and ``W`` on one with bound ``τ``.  As in :class:`AnalogSGD`, with ``clamp=True`` both
    arrays are clipped to their ranges after each update, which is a no-op for steps with
    ``α|g| ≤ τ_P`` and ``β|P| ≤ τ``.

    Why it converges exactly: at a fixed point ``P = 0`` is forced by the ``W`` line (as
    ``|W| < τ``) and then the ``P`` line forces ``E[g] = 0``, whereas Analog SGD's fixed
    point satisfies ``E[g] = −E|g| ⊙ W / τ``, biased by the gradient noise ``E|g|`` times
    ``W/τ``.  (With a constant ``α`` the fluctuations of ``P`` leave a residual bias
    ``≈ E|P| ⊙ W/τ`` in the ``W`` line, which vanishes as ``α → 0``; Analog SGD's bias
    does not depend on ``α``.)  The ``P`` array's leak rate ``α·E|g|/τ_P`` must be fast compared with the
    transfer rate ``β`` (choose ``transfer_lr`` well below ``lr · E|g| / τ_P``), otherwise
    ``W`` oscillates around the optimum.

    Learning-rate schedulers only change ``lr`` (``α``); change a group's ``transfer_lr``
    yourself if ``β`` should follow (e.g. to keep ``β/α`` fixed).

    Args:
        params: iterable of parameters or parameter-group dicts.
        lr: learning rate ``α > 0`` of the gradient accumulation on ``P``.
        tau: device bound ``τ > 0`` of the weight array ``W``.
        transfer_lr: transfer rate ``β > 0`` from ``P`` to ``W``.
        transfer_every: transfer period ``T >= 1`` (in optimiser steps).
        weight_decay: L2 penalty added to the gradient (``>= 0``).
        tau_p: device bound of ``P`` (default: ``tau``).
        clamp: clip ``P`` to ``[−τ_P, τ_P]`` and ``W`` to ``[−τ, τ]`` after their updates.
        foreach: use the vectorised ``torch._foreach_*`` path (``None``: only when all
            parameters of a group are CUDA tensors).

    Reference: Z. Wu, T. Gokmen, M. J. Rasch, T. Chen, "Towards Exact Gradient-based
    Training on Analog In-memory Computing", NeurIPS 2024, arXiv:2406.12774; Tiki-Taka:
    T. Gokmen, W. Haensch, "Algorithm for Training Neural Networks on Resistive Device
    Arrays", Front. Neurosci. 2020.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float,
        tau: float,
        transfer_lr: float,
        transfer_every: int = 1,
        weight_decay: float = 0.0,
        *,
        tau_p: float | None = None,
        clamp: bool = True,
        foreach: bool | None = None,
    ) -> None:
        defaults = {
            "lr": _check_positive("lr", lr),
            "tau": _check_positive("tau", tau, allow_inf=True),
            "transfer_lr": _check_positive("transfer_lr", transfer_lr),
            "transfer_every": _check_positive_int("transfer_every", transfer_every),
            "weight_decay": _check_nonnegative("weight_decay", weight_decay),
            "tau_p": None if tau_p is None else _check_positive("tau_p", tau_p, allow_inf=True),
            "clamp": bool(clamp),
            "foreach": foreach,
        }
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        for key, check in (
            ("lr", _check_positive),
            ("transfer_lr", _check_positive),
            ("weight_decay", _check_nonnegative),
            ("transfer_every", _check_positive_int),
        ):
            if key in param_group:
                param_group[key] = check(key, param_group[key])
        for key in ("tau", "tau_p"):
            if param_group.get(key) is not None:
                param_group[key] = _check_positive(key, param_group[key], allow_inf=True)
        super().add_param_group(param_group)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """Perform one optimisation step; ``closure`` re-evaluates the model and returns the loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params: list[Tensor] = []
            grads: list[Tensor] = []
            ps: list[Tensor] = []
            transfer: list[bool] = []
            for p in group["params"]:
                if p.grad is None:
                    continue
                _check_param(p)
                state = self.state[p]
                if "P" not in state:
                    state["step"] = 0
                    state["P"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
                params.append(p)
                grads.append(p.grad)
                ps.append(state["P"])
                transfer.append(state["step"] % group["transfer_every"] == 0)
            if not params:
                continue
            foreach = group["foreach"] if group["foreach"] is not None else _default_foreach(params)
            tau = group["tau"]
            tau_p = tau if group["tau_p"] is None else group["tau_p"]
            g_eff = _effective_grads(params, grads, group["weight_decay"], foreach)
            # fast array: P <- P - lr*g - (lr/tau_p)|g| * P
            _soft_bounds_step(ps, g_eff, -group["lr"], tau_p, group["clamp"], foreach)
            # transfer: W <- W + beta*P - (beta/tau)|P| * W
            w_t = [w for w, t in zip(params, transfer) if t]
            p_t = [p for p, t in zip(ps, transfer) if t]
            _soft_bounds_step(w_t, p_t, group["transfer_lr"], tau, group["clamp"], foreach)
        return loss
