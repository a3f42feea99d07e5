"""The feedback guard: keep every analog block's relaxation convergent at compile time and after every
optimizer step (`hybridc.energy.contraction`'s docstring gives the argument and the measured defaults).

- `DHNConstraint`: one block's bound ρ ≤ target, calibrated once at compile time and re-applied after each
  optimizer step by rescaling its state-reading weights (device ops only), measuring ρ by a power iteration
  warm-started from the previous step's vectors (`guard_state` / `load_guard_state` carry them through a
  checkpoint, so a resumed run continues exactly);
- compile time: `constrain_model` gives each block that needs it (`EnergyBlock.needs_feedback_guard`) a
  constraint, records what calibration did in the plan's decisions, and registers the model;
  `feedback_norms` measures ρ for diagnostics.

One module over 400 lines on purpose: the constraint and the compile-time record of what it did (the plan's
decisions and their texts) are read together; the post-step hook is `hybridc.energy.post_step`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from hybridc.energy.compensation import Compensation, plan_compensation
from hybridc.energy.coupling import (
    COLD_EVERY,
    COLD_FIRST,
    COMPILE_ITERS,
    COMPILE_STARTS,
    STEP_ITERS,
    STEP_STARTS,
    WARM_ITERS,
    Coupling,
    feedback_layers,
)
from hybridc.energy.post_step import register

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

    Per-step measurement (`warm_start`, the default): an optimizer step moves the weights little, so ρ is
    measured by WARM_ITERS power-iteration steps continuing from the previous step's vectors (STEP_STARTS rows,
    orthonormalised: the second tracks the next singular direction) instead of STEP_ITERS from the fixed
    starts. Every estimate is ‖B u‖ for unit u, a lower bound of ρ from any start, as before; the power
    iteration simply runs on across steps, so the warm estimate is tighter than the cold one wherever the
    weights move slowly against the spectral gap (measured: `WARM_ITERS`); where they move fast it lags by a
    fraction of a per cent at the steps measured.
    The cold estimate (STEP_ITERS from the fixed starts) still runs, and the larger of the two is kept:
    - on the first COLD_FIRST measurements after a reset: the very first, and those after anything that makes
      the vectors stale or unusable: a `load_state_dict` into the block (other weights: `_reset_after_load`), a
      change of the weights' device or dtype or of the probe layout (`_key`), `reset_warm_start()`; the first
      steps of a run also move the weights most (Adam's first, bias-corrected steps), more than 3 iterations
      follow;
    - every COLD_EVERY-th measurement: the warm rows can only follow directions they hold, the fixed starts
      hold every direction, so a direction whose gain overtakes is caught within COLD_EVERY steps.
    All of it is device ops and Python counters: no host sync. The vectors and the counter are the only state;
    they live here (not in module buffers: state_dict is unchanged) and travel through checkpoints by
    `guard_state` / `load_guard_state`, so a resumed run measures exactly what the uninterrupted one does.
    `warm_start = False` gives the stateless measurement (STEP_ITERS from the fixed starts every step).
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
        #: measure ρ after each step warm-started from the previous step's vectors (False: cold every step)
        self.warm_start = True
        self.warm_iters = WARM_ITERS
        self.cold_first, self.cold_every = COLD_FIRST, COLD_EVERY
        self._warm: list[torch.Tensor] | None = None
        self._warm_key: tuple[Any, ...] | None = None
        #: per-step measurements since the last reset, and since the last cold one
        self._measured = 0
        self._since_cold = 0
        if _reset_after_load not in block._load_state_dict_post_hooks.values():
            block.register_load_state_dict_post_hook(_reset_after_load)

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

    # ---- the per-step measurement ----------------------------------------------------------------------
    def _key(self, starts: int) -> tuple[Any, ...]:
        """What the warm vectors are valid for: the probe's rows and layout and the weights' device and dtype."""
        ref = self.coupling._ref()
        return (self.coupling.rows(starts), self.coupling.batch, ref.device, ref.dtype)

    def reset_warm_start(self) -> None:
        """Forget the warm vectors: the next measurement is cold (STEP_ITERS from the fixed starts)."""
        self._warm, self._warm_key, self._measured, self._since_cold = None, None, 0, 0

    @torch.no_grad()
    def measure(self, starts: int = STEP_STARTS) -> torch.Tensor:
        """The per-step estimate of ρ (0-d device tensor, no host sync): warm (`warm_iters` steps from the
        previous vectors), or on a cold step the larger of the cold estimate and the warm one (see the class
        docstring); keeps the vectors of the estimate it returns for the next step."""
        key = self._key(starts)
        if self._warm_key != key:
            self.reset_warm_start()
        warm = self._warm
        self._measured += 1
        if warm is not None and self._measured > self.cold_first and self._since_cold + 1 < self.cold_every:
            rho, vecs = self.coupling.power(warm, self.warm_iters)
            self._since_cold += 1
        else:
            rho, vecs = self.coupling.norm_and_vectors(STEP_ITERS, starts)
            if warm is not None:
                rho_w, vecs_w = self.coupling.power(warm, self.warm_iters)
                take_warm = rho_w >= rho
                vecs = [torch.where(take_warm, a, b) for a, b in zip(vecs_w, vecs)]
                rho = torch.maximum(rho, rho_w)
            self._since_cold = 0
        self._warm, self._warm_key = vecs, key
        return rho

    @torch.no_grad()
    def apply_(self, iters: int | None = None, starts: int = STEP_STARTS) -> torch.Tensor:
        """Measure ρ and rescale the state-reading weights if it exceeds the target; returns the factor.
        `iters` None: the per-step measurement (`measure`: warm-started unless `warm_start` is off); a number:
        that many power-iteration steps from the fixed starts (the warm state untouched). Device ops only."""
        if self.target is None or not self.layers:
            return torch.ones(())
        if iters is None and self.warm_start:
            rho = self.measure(starts)
        else:
            rho = self.coupling.norm(STEP_ITERS if iters is None else iters, starts)
        return self._scale_(rho, self.target, self.rho_skip)

    # ---- checkpoints ------------------------------------------------------------------------------------
    def warm_state(self) -> dict[str, Any]:
        """The measurement's state for a checkpoint (plain tensors and ints: weights_only-loadable)."""
        vecs = None if self._warm is None else [v.detach().clone() for v in self._warm]
        return {"vectors": vecs, "measured": self._measured, "since_cold": self._since_cold}

    def load_warm_state(self, state: dict[str, Any] | None) -> None:
        """Continue from `warm_state()`'s record (moved to the weights' device); a missing record or one that
        does not fit this probe (other shapes or dtype) leaves the next measurement cold."""
        self.reset_warm_start()
        vecs = (state or {}).get("vectors")
        if not vecs:
            return
        ref = self.coupling._ref()
        _, _, shapes = self.coupling._layout(self.coupling.rows(STEP_STARTS))
        if len(vecs) != len(shapes) or any(
            tuple(v.shape) != tuple(s) or v.dtype != ref.dtype for v, s in zip(vecs, shapes)
        ):
            return
        self._warm = [v.to(ref.device) for v in vecs]
        self._warm_key = self._key(STEP_STARTS)
        self._measured = int(state.get("measured", 0))
        self._since_cold = int(state.get("since_cold", 0))

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


def _reset_after_load(module: nn.Module, incompatible_keys: object) -> None:
    """load_state_dict post-hook of a guarded block: its weights were replaced, so its constraint's warm
    vectors are stale (a module-level function, so the hook survives deepcopy and pickling)."""
    constraint = getattr(module, "constraint", None)
    if isinstance(constraint, DHNConstraint):
        constraint.reset_warm_start()


def _constraints(model: nn.Module) -> dict[str, DHNConstraint]:
    return {
        name: m.constraint
        for name, m in model.named_modules()
        if isinstance(getattr(m, "constraint", None), DHNConstraint)
    }


def guard_state(model: nn.Module) -> dict[str, dict[str, Any]]:
    """The feedback guards' measurement state of every guarded block of `model` (block module name ->
    `DHNConstraint.warm_state()`), for a checkpoint beside `model.state_dict()`."""
    return {name: c.warm_state() for name, c in _constraints(model).items()}


def load_guard_state(model: nn.Module, state: dict[str, dict[str, Any]] | None) -> None:
    """Restore `guard_state`'s record (call after `model.load_state_dict`, which resets it); blocks it does
    not cover (a checkpoint written before it existed) start their next measurement cold."""
    for name, c in _constraints(model).items():
        c.load_warm_state((state or {}).get(name))


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
