"""The feedback guard: keep every analog block's relaxation convergent at compile time and after every
optimizer step (`hybridc.energy.contraction`'s docstring gives the argument and the measured defaults).

- `DHNConstraint`: one block's bound ρ ≤ target, calibrated once at compile time and re-applied after each
  optimizer step by rescaling its state-reading weights (device ops only);
- the post-step mechanism: one torch.optim hook that calls `constrain_` on every registered block whose
  parameters the stepping optimizer holds (every kind: a DRN's is its conductance projection);
- compile time: `constrain_model` gives each block that needs it (`EnergyBlock.needs_feedback_guard`) a
  constraint, records what calibration did in the plan's decisions, and registers the model;
  `feedback_norms` measures ρ for diagnostics.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook

from hybridc.energy.compensation import Compensation, plan_compensation
from hybridc.energy.coupling import (
    COMPILE_ITERS,
    COMPILE_STARTS,
    STEP_ITERS,
    STEP_STARTS,
    Coupling,
    feedback_layers,
)

#: Default bound on a DHN block's feedback gain ρ, chosen by measurement: the free phase must reach a fixed
#: point in the default T1 = 20 steps (a contraction's residual after T1 steps is ≤ ρ^T1 of its first: 0.8^20 = 0.012,
#: 0.9^20 = 0.12). Since the default free phase runs to its tolerance (`hybridc.energy.solver`), the bound also
#: sets each block's step cap (`free_step_cap`: ≈ 60-70 steps at 0.8); blocks converge well before it.
#: At 0.8 the timm-style ResNet-18's blocks end at max|Δs| ≤ 2e-5 (at 0.9: 6e-4); on Fashion-MNIST the conv
#: ff-EBM at 0.9 still trains 0.04 from its fixed point at T1 = 20 (benchmarks/equilibrium_guard.py).
DEFAULT_FEEDBACK_GAIN = 0.8


class DHNConstraint:
    """Keeps one DHN block's feedback gain ρ ≤ target by rescaling its state-reading weights (see
    `hybridc.energy.contraction`).

    `calibrate` runs once, at compile time (host syncs allowed): it measures the identity-skip part ρ_I, picks
    the target, rescales and returns what it did. `apply_` runs after every optimizer step: device ops only.
    `compensation` (set by `constrain_model` from `plan_compensation`): every rescale by t also scales the top
    layers' biases by t and the weights reading the block's output by 1/t, where that is exact.
    """

    def __init__(
        self,
        block: nn.Module,
        input_shapes: Sequence[Sequence[int]],
        gain: float,
        example_batch: int | None = None,
        compensation: Compensation | None = None,
    ) -> None:
        if not gain > 0:
            raise ValueError(f"feedback gain must be positive, got {gain}")
        self.gain = float(gain)
        self.coupling = Coupling(block, input_shapes, example_batch)
        self.layers = feedback_layers(block)
        self.rho_skip = 0.0
        self.target: float | None = self.gain
        self.compensation = compensation or Compensation(reason="not planned")

    def _weights(self) -> list[torch.Tensor]:
        return [w for _, w in self.layers]

    @torch.no_grad()
    def _skip_norm(self) -> torch.Tensor:
        """ρ_I: the coupling left with every state-reading weight at zero (restored bit for bit)."""
        saved = [w.detach().clone() for w in self._weights()]
        try:
            for w in self._weights():
                w.zero_()
            return self.coupling.norm(COMPILE_ITERS // 2, COMPILE_STARTS)
        finally:
            for w, s in zip(self._weights(), saved):
                w.copy_(s)

    @staticmethod
    def _factor(
        rho: torch.Tensor, target: float | torch.Tensor, rho_skip: float | torch.Tensor
    ) -> torch.Tensor:
        """The secant factor t with ρ(t) ≤ target (1 where ρ is already within it; target ∞ = unconstrained)."""
        t = (target - rho_skip) / (rho - rho_skip).clamp_min(1e-30)
        return torch.where(rho > target, t.clamp(0.0, 1.0), torch.ones_like(rho))

    @torch.no_grad()
    def _scale_(
        self, rho: torch.Tensor, target: float | torch.Tensor, rho_skip: float | torch.Tensor
    ) -> torch.Tensor:
        t = self._factor(rho, target, rho_skip)
        for w in self._weights():
            w.mul_(t.to(w.dtype))
        self.compensation.apply_(t)
        return t

    @torch.no_grad()
    def apply_(self, iters: int = STEP_ITERS, starts: int = STEP_STARTS) -> torch.Tensor:
        """Measure ρ and rescale the state-reading weights if it exceeds the target; returns the factor.
        Device ops only (no host sync)."""
        if self.target is None or not self.layers:
            return torch.ones(())
        return self._scale_(self.coupling.norm(iters, starts), self.target, self.rho_skip)

    @torch.no_grad()
    def calibrate(self, rounds: int = 2) -> dict[str, Any]:
        """Compile-time: measure ρ_I and ρ, set the target, rescale (the secant, `rounds` times: once is exact
        where ρ(t) is affine-convex; the second absorbs power-iteration slack) - all on the device, read to
        the host once. Returns a record: rho_before, rho_after, rho_skip, target, factor, layers (names)."""
        rec: dict[str, Any] = {
            "layers": [n for n, _ in self.layers],
            "gain": self.gain,
            "compensation": self.compensation.record(),
        }
        self.coupling.settle()
        rho0 = self.coupling.norm(COMPILE_ITERS, COMPILE_STARTS)
        if not self.layers:
            self.target = None
            value = float(rho0)
            rec.update(rho_before=value, rho_after=value, rho_skip=None, target=None, factor=1.0)
            return rec
        rs = self._skip_norm()
        gain = torch.full_like(rs, self.gain)
        target = torch.where(
            rs < 0.95 * self.gain,
            gain,
            torch.where(rs < 1.0, torch.maximum(gain, 0.5 * (1.0 + rs)), torch.full_like(rs, math.inf)),
        )
        factor, rho = torch.ones_like(rs), rho0
        for _ in range(rounds):
            factor = factor * self._scale_(rho, target * (1 - 1e-4), rs)
            rho = self.coupling.norm(COMPILE_ITERS, COMPILE_STARTS)
        rho_skip, tgt, before, after, fac = torch.stack([rs, target, rho0, rho, factor]).tolist()
        self.rho_skip = rho_skip
        self.target = None if math.isinf(tgt) else tgt
        rec.update(rho_before=before, rho_after=after, rho_skip=rho_skip, target=self.target, factor=fac)
        return rec


# ---- the one post-step mechanism for every compiled model ------------------------------------------------
#: the analog blocks kept within their constraints (weak references: a block that is garbage is dropped). The
#: registry holds blocks, not models, and a block re-registers itself when it is copied or unpickled
#: (`EnergyBlock.__setstate__`), so `copy.deepcopy(model)` or `torch.load` of a whole model keeps its guard.
_LIVE: weakref.WeakSet[nn.Module] = weakref.WeakSet()
_HOOK: torch.utils.hooks.RemovableHandle | None = None


def _constrain_after_step(optimizer: torch.optim.Optimizer, args: object, kwargs: object) -> None:
    """After any optimizer step: `constrain_` every registered analog block whose parameters this optimizer
    holds. Device ops only: no host synchronisation."""
    if not _LIVE:
        return
    held = {id(p) for g in optimizer.param_groups for p in g["params"]}
    for blk in list(_LIVE):
        if getattr(blk, "keep_constrained", False) and any(id(p) in held for p in blk.parameters()):
            blk.constrain_()


def register_block(block: nn.Module) -> None:
    """Keep `block` (anything with `constrain_()`) within its constraints after every step of any torch.optim
    optimizer holding its parameters; copies and unpickled copies of it are kept too."""
    global _HOOK
    block.keep_constrained = True
    _LIVE.add(block)
    if _HOOK is None:
        _HOOK = register_optimizer_step_post_hook(_constrain_after_step)


def register(model: nn.Module) -> None:
    """`register_block` every analog block of `model` (an FFEBM)."""
    for blk in model.analog_blocks.values():
        register_block(blk)


def unregister(model: nn.Module) -> None:
    """Stop keeping `model`'s analog blocks within their constraints after optimizer steps."""
    for blk in model.analog_blocks.values():
        blk.keep_constrained = False
        _LIVE.discard(blk)


# ---- compile time ------------------------------------------------------------------------------------------
_RECORDED = ("rescaled", "unconstrained")


def _shapes(model: nn.Module) -> dict[str, list[int] | None]:
    """Example shape of every value crossing a block boundary, by node name (from the plan)."""
    plan = model.plan
    out: dict[str, list[int] | None] = {r.node: r.shape for r in plan.graph_inputs}
    for b in plan.blocks:
        out.update({r.node: r.shape for r in [*b.inputs, *b.outputs]})
    return out


def _why_unbounded(rec: dict[str, Any]) -> str:
    if not rec["layers"]:
        return "no weight op of the block reads its neuron states, so there is nothing to rescale"
    return (
        f"identity skips inside the block alone give ρ_I={rec['rho_skip']:.3g} ≥ 1; lower hardsigmoid_slope "
        "or max_block_size (so residual adds cross block boundaries)"
    )


def compensation_text(rec: dict[str, Any], layer: str | None = None) -> str:
    """One sentence on what a block's guard does to the feedforward path (for decisions and reports); `layer`:
    said of one rescaled layer (one between hidden neurons is not compensated)."""
    comp = rec.get("compensation") or {}
    if comp.get("mode") == "downstream" and layer is not None and layer not in comp.get("layers", []):
        return (
            "a layer between hidden neurons: its rescale changes the forward function (only the top layer's "
            f"factor, of {', '.join(comp['layers'])}, is moved downstream)"
        )
    if comp.get("mode") == "downstream":
        path = " → ".join(comp["path"]) or "nothing"
        return (
            f"the factor is moved downstream: {', '.join(comp['biases']) or 'no bias'} ×t with the weights and "
            f"{', '.join(comp['consumers'])} ×1/t (path {path}: positively homogeneous), so the feedforward "
            f"function is kept and only the top-down feedback of {', '.join(comp['outputs'])} shrinks (×t²)"
        )
    return (
        f"not compensated downstream ({comp.get('reason') or 'not planned'}): the block's output shrinks with "
        "its weights"
    )


def _decisions(block: str, rec: dict[str, Any]) -> list[Any]:
    """The plan decisions recording what calibration did to one block (none when nothing changed): its
    rescaled layers and, where the factor is moved downstream, the weights compensating it."""
    from hybridc.plan import Decision

    if rec["target"] is None:
        if rec["rho_before"] <= rec["gain"]:
            return []
        return [
            Decision(
                node=layer,
                action="unconstrained",
                block=block,
                reason=(
                    f"feedback gain ρ={rec['rho_before']:.3g} > {rec['gain']:g} cannot be bounded by rescaling weights: "
                    f"{_why_unbounded(rec)}; the free phase may not reach a fixed point"
                ),
            )
            for layer in rec["layers"] or [block]
        ]
    if rec["factor"] >= 1.0:
        return []
    note = (
        ""
        if math.isclose(rec["target"], rec["gain"], rel_tol=1e-6)
        else (
            f" (the gain {rec['gain']:g} is out of reach: identity skips give ρ_I={rec['rho_skip']:.3g}; target "
            f"{rec['target']:.3g})"
        )
    )
    comp = rec.get("compensation") or {}
    out = [
        Decision(
            node=layer,
            action="rescaled",
            block=block,
            reason=(
                f"weight ×{rec['factor']:.4g}: feedback gain ρ={rec['rho_before']:.3g} → {rec['rho_after']:.3g} ≤ "
                f"{rec['target']:.3g}{note}, so the free phase is a contraction; {compensation_text(rec, layer)}; the compiled "
                "forward differs from the original model's (init=keep keeps the weights up to this factor)"
            ),
        )
        for layer in rec["layers"]
    ]
    if comp.get("mode") == "downstream":
        for consumer in comp["consumers"]:
            cblock, _, layer = consumer.partition(":")
            out.append(
                Decision(
                    node=layer,
                    action="rescaled",
                    block=cblock,
                    reason=(
                        f"weight ×{1 / rec['factor']:.4g} = 1/t: compensates the feedback guard's rescale of {block} (its "
                        f"output {', '.join(comp['outputs'])} is ×{rec['factor']:.4g}; path "
                        f"{' → '.join(comp['path']) or 'direct'} is positively homogeneous), so this layer's output is "
                        "unchanged"
                    ),
                )
            )
    return out


def constrain_model(model: nn.Module, gain: float | None, compensate: bool = True) -> list[dict[str, Any]]:
    """Compile-time half of equilibrium by construction: give every multi-layer DHN block of `model` (an
    FFEBM) a `DHNConstraint` with bound `gain`, calibrate it (rescaling weights where ρ > gain), record every
    rescaling in a copy of `model.plan`'s decisions (replacing those of an earlier compile of the same plan),
    warn about blocks that cannot be bounded, and register `model` for the post-optimizer-step hook.
    Single-layer blocks have no feedback and are untouched (their compiled forward stays exact). `gain` None
    or 0: DHN blocks stay unconstrained (DRN blocks keep their conductance projection). `compensate` (default):
    move each block's factor downstream where that is exact (`plan_compensation`); what applies per block is
    kept in `model.guard_compensation` (block -> `Compensation.record()`) and in the rescaled decisions.
    Returns one record per calibrated block (see `DHNConstraint.calibrate`)."""
    import warnings

    plan = model.plan.model_copy(deep=True)
    plan.decisions = [d for d in plan.decisions if d.action not in _RECORDED]
    shapes = _shapes(model)
    records: list[dict[str, Any]] = []
    guarded = [name for name, blk in model.analog_blocks.items() if gain and blk.needs_feedback_guard]
    # planned before any calibration: structural, and every block's compensation sees the model as compiled
    plans: dict[str, Compensation] = {}
    for name in guarded:
        if not compensate:
            plans[name] = Compensation(reason="turned off (compensate=False)")
            continue
        try:
            plans[name] = plan_compensation(model, name, model.blocks[name].feedback_layers())
        except Exception as exc:  # noqa: BLE001 - an optional exact reparametrisation: never fail a compile over it
            plans[name] = Compensation(reason=f"the path could not be analysed ({type(exc).__name__}: {exc})")
    for name in guarded:
        blk = model.blocks[name]
        in_shapes = [shapes.get(n) for n in model.io(name)[0]]
        if any(s is None for s in in_shapes):
            from hybridc.errors import PlanMismatchError

            raise PlanMismatchError(
                f"analog block {name}: the plan records no shape for one of its inputs, so its "
                "feedback gain cannot be measured; re-create the plan with `hybridc partition`"
            )
        blk.constraint = DHNConstraint(
            blk, [s[1:] for s in in_shapes], gain, example_batch=in_shapes[0][0], compensation=plans[name]
        )
        rec = blk.constraint.calibrate() | {"block": name}
        records.append(rec)
        decisions = _decisions(name, rec)
        plan.decisions.extend(decisions)
        if decisions and decisions[0].action == "unconstrained":
            warnings.warn(
                f"analog block {name!r}: its feedback gain ρ={rec['rho_before']:.3g} cannot be bounded "
                f"by rescaling weights ({_why_unbounded(rec)}): its free phase may not reach a fixed "
                "point.",
                stacklevel=3,
            )
    model.plan = plan
    model.feedback_gain = gain or None
    #: per guarded block, what its guard does to the feedforward path (`Compensation.record()`)
    model.guard_compensation = {r["block"]: r["compensation"] for r in records}
    register(model)
    return records


def feedback_norms(
    model: nn.Module, iters: int = COMPILE_ITERS, starts: int = COMPILE_STARTS
) -> dict[str, float]:
    """ρ = ‖D_a^{1/2} A D_a^{1/2}‖ of every multi-layer DHN block of an FFEBM, constrained or not (reads the
    values to the host: for diagnostics and tests, not the training loop)."""
    shapes = _shapes(model)
    out: dict[str, float] = {}
    for name, blk in model.analog_blocks.items():
        if blk.needs_feedback_guard:
            if blk.constraint is not None:
                coupling = blk.constraint.coupling
            else:
                in_shapes = [shapes[n] for n in model.io(name)[0]]
                coupling = Coupling(blk, [s[1:] for s in in_shapes], example_batch=in_shapes[0][0])
                coupling.settle()
            out[name] = float(coupling.norm(iters, starts))
    return out
