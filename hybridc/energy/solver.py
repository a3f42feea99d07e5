"""Fixed-point relaxation of an energy-based block's neurons: s ← T(s), synchronous or even/odd,
fixed step counts or a tolerance, optional Anderson acceleration, divergence detection.

Convergence and divergence are tracked in device tensors and read on the host only every
`check_every` steps (and once at the end), so a CUDA relaxation does not sync on every iteration.

The default free phase runs to its fixed point (`SolverConfig.free = "equilibrium"`): EP's gradient is the
gradient at an equilibrium, so a fixed T1 that a slowly contracting block does not reach gives a transient,
not an EP result (measured: at the guard's ρ ≤ 0.8, T1 = 20 leaves ResNet/RegNet/LeViT blocks 1-5e-3 from
their fixed point). It stops on the relative residual max|T(s) − s| ≤ free_tol·max(1, max|s|), read every
`check_every` steps, and is capped by `free_step_cap`, the step count at which the block's enforced
feedback-gain bound ρ guarantees that residual (a contraction's step change shrinks by ρ per step). A block
that reaches its cap unconverged warns and records `last_converged = False`: never silently accepted.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch

from hybridc.energy.settings import SolverConfig
from hybridc.errors import EquilibriumDivergedError

States = list[torch.Tensor]
StepFn = Callable[[States], States]


def _max_change(new: States, old: States) -> torch.Tensor:
    return torch.stack([(a - b).abs().amax() for a, b in zip(new, old)]).amax()


def _peak(states: States) -> torch.Tensor:
    """max|s| over all states (NaN propagates, so `~(peak <= limit)` catches non-finite states too)."""
    return torch.stack([s.abs().amax() for s in states]).amax()


#: A free phase whose last step still moves some state by more than this fraction of max(1, max|s|) ends
#: "far from its fixed point": `relax` reports it (the block warns once).
UNCONVERGED_RELATIVE = 1e-2


#: Slack on a block's enforced bound ρ when deriving its free-phase step cap: the post-step guard measures ρ by
#: power iteration from a fixed start, which underestimates it by ≈1-3 % (`hybridc.energy.contraction`).
RHO_SLACK = 0.03


def free_step_cap(cfg: SolverConfig, rho: float | None, neurons: int = 1) -> int:
    """The free phase's step cap in `free="equilibrium"` mode for a block whose feedback gain is bounded by
    `rho` (None: no bound known: `cfg.max_steps`), with `neurons` state entries per sample.

    Why this count: with ρ < 1 the sync map is a contraction in the weighted norm ‖D_a^{-1/2}·‖₂, so the step
    change after T steps is at most ρ^T times the first one; converting that norm to the max-norm the
    criterion reads costs at most a factor √n (n = `neurons`, equal slopes). Steps T with
    ρ'^T·√n ≤ free_tol, ρ' = ρ·(1 + RHO_SLACK), therefore guarantee max|Δs| ≤ free_tol·max|Δs_first|; a block
    that still has not converged there is not the contraction its bound says (or the bound was measured
    loosely) and is flagged instead of running on. Rounded up to a multiple of `check_every` (checks are the
    only steps that can stop the phase), within [check_every, max_steps]."""
    if rho is None or not math.isfinite(rho):
        return cfg.max_steps
    rate = min(max(rho, 1e-6) * (1.0 + RHO_SLACK), 1.0 - 1e-3)
    steps = math.ceil(math.log(cfg.free_tol / math.sqrt(max(neurons, 1))) / math.log(rate))
    k = cfg.check_every
    return max(k, min(cfg.max_steps, k * math.ceil(steps / k)))


def free_schedule(cfg: SolverConfig, rho: float | None, neurons: int = 1) -> tuple[int, float | None]:
    """(steps, relative tolerance) of a free phase: `(t1, None)` for fixed steps (`free="fixed"`) or an
    explicit `tol` (which runs to `max_steps` anyway), else `(free_step_cap(...), free_tol)`."""
    if cfg.tol is not None or cfg.free == "fixed":
        return cfg.t1, None
    return free_step_cap(cfg, rho, neurons), cfg.free_tol


def free_rule_text(cfg: SolverConfig, cap: int) -> str:
    """The free phase's stopping rule in words (for warnings and reports)."""
    if cfg.tol is not None:
        return f"tolerance {cfg.tol:g}, {cfg.max_steps} steps"
    if cfg.free == "fixed":
        return f"T1={cfg.t1} fixed steps"
    return f"to max|Δs| ≤ {cfg.free_tol:g}·max(1, max|s|), cap {cap} steps"


class UnconvergedWarning(UserWarning):
    """An analog block's free phase ended far from its fixed point (EP's gradient assumes an equilibrium)."""


class _Anderson:
    """Type-II Anderson mixing on the flattened per-sample state (memory m, Tikhonov-regularised)."""

    def __init__(self, m: int, beta: float, lam: float = 1e-8):
        self.m, self.beta, self.lam = m, beta, lam
        self.xs: list[torch.Tensor] = []
        self.fs: list[torch.Tensor] = []
        self.best: torch.Tensor | None = None

    def __call__(self, x: torch.Tensor, fx: torch.Tensor) -> torch.Tensor:
        res = (fx - x).norm(dim=1)
        if self.best is None:
            self.best = res
        # safeguard: a sample whose residual did not improve takes a plain step and restarts its history
        improving = res <= self.best
        self.best = torch.minimum(self.best, res)
        self.xs.append(x)
        self.fs.append(fx)
        if len(self.xs) > self.m:
            self.xs.pop(0)
            self.fs.pop(0)
        if len(self.xs) == 1:
            return fx
        X = torch.stack(self.xs, 1)  # (B, k, n)
        F = torch.stack(self.fs, 1)
        G = F - X
        k = G.shape[1]
        H = G @ G.transpose(1, 2)
        H = H + self.lam * (
            H.diagonal(dim1=1, dim2=2).mean(-1, keepdim=True).unsqueeze(-1) + 1e-30
        ) * torch.eye(k, dtype=x.dtype, device=x.device)
        ones = torch.ones(x.shape[0], k, 1, dtype=x.dtype, device=x.device)
        w = torch.linalg.solve(H, ones)
        alpha = w / w.sum(1, keepdim=True)  # (B, k, 1)
        mixed_f = (alpha * F).sum(1)
        mixed_x = (alpha * X).sum(1)
        mixed = self.beta * mixed_f + (1 - self.beta) * mixed_x
        keep = improving.unsqueeze(1)
        if not bool(keep.all()):
            # forget the history of stalled samples: their past iterates now equal the current one
            for i in range(len(self.xs)):
                self.xs[i] = torch.where(keep, self.xs[i], x)
                self.fs[i] = torch.where(keep, self.fs[i], fx)
        return torch.where(keep, mixed, fx)


def flatten_states(states: States) -> torch.Tensor:
    """Per-sample flattening: a list of (B, ...) tensors -> (B, n), for solvers that see one vector."""
    return torch.cat([s.reshape(s.shape[0], -1) for s in states], 1)


def unflatten_states(flat: torch.Tensor, like: States) -> States:
    """The inverse of `flatten_states`, shaped like `like`."""
    out, i = [], 0
    for s in like:
        n = s[0].numel()
        out.append(flat[:, i : i + n].reshape(s.shape))
        i += n
    return out


class Relaxed(NamedTuple):
    """What `relax` returns: the states, the last fixed-point residual max|T(s) − s| (a device scalar; inf if
    no step ran), the steps taken, and whether the phase met its stopping criterion (None in fixed-step mode:
    there is none; there `on_unconverged` judges the residual instead)."""

    states: States
    residual: torch.Tensor
    steps: int
    converged: bool | None


def relax(
    step: StepFn,
    states: States,
    steps: int,
    cfg: SolverConfig,
    block: str,
    phase: str,
    on_unconverged: Callable[[float, float], None] | None = None,
    rel_tol: float | None = None,
) -> Relaxed:
    """Iterate `step` from `states`.

    Three stopping rules: with cfg.tol set, until max|Δs| < tol (checked every cfg.check_every steps) or
    cfg.max_steps; else with `rel_tol`, until max|Δs| ≤ rel_tol·max(1, max|s|) (same checks) or `steps` (the
    cap); otherwise exactly `steps` steps. Raises EquilibriumDivergedError naming the block, phase and step.
    `on_unconverged(residual, peak)` is called when `rel_tol` was not met within the cap, or (fixed steps,
    cfg.tol) when the last step still moved a state by more than UNCONVERGED_RELATIVE·max(1, max|s|);
    it costs nothing extra: the values come with the end-of-phase read.
    """
    tolerance = cfg.tol is not None or rel_tol is not None
    budget = cfg.max_steps if cfg.tol is not None else steps
    device = states[0].device
    first_bad = torch.full((), -1, dtype=torch.long, device=device)
    residual = torch.full((), float("inf"), dtype=states[0].dtype, device=device)
    peak = residual
    anderson = _Anderson(cfg.anderson, cfg.anderson_beta) if cfg.anderson > 0 else None
    taken = 0
    converged: bool | None = None
    for t in range(1, budget + 1):
        mapped = step(states)
        new = (
            mapped
            if anderson is None
            else unflatten_states(anderson(flatten_states(states), flatten_states(mapped)), mapped)
        )
        check = t % cfg.check_every == 0 or t == budget
        if check:
            # device-side bookkeeping only on check steps; the host reads it below (one sync per check in
            # tolerance mode, one per phase in fixed-step mode). The residual is the fixed-point residual
            # max|T(s) − s| (with Anderson, of the iterate the map was applied to).
            residual = _max_change(mapped, states)
            peak = _peak(new)
            bad = ~(peak <= cfg.divergence_limit)
            first_bad = torch.where(bad & (first_bad < 0), torch.full_like(first_bad, t), first_bad)
        states = new
        taken = t
        if check and (tolerance or t == budget):
            bad_step, res, top = torch.stack([first_bad.float(), residual.float(), peak.float()]).tolist()
            if bad_step >= 0:
                _raise_diverged(block, phase, int(bad_step), states, cfg)
            if cfg.tol is not None:
                converged = res < cfg.tol
            elif rel_tol is not None:
                converged = res <= rel_tol * max(1.0, top)
            if converged or t == budget:
                # the default free phase must meet its criterion; an explicit `tol` (gradcheck's 1e-13 may
                # stall on round-off) and fixed steps are judged on being far from a fixed point
                far = (
                    not converged
                    if cfg.tol is None and rel_tol is not None
                    else not res <= UNCONVERGED_RELATIVE * max(1.0, top)
                )
                if on_unconverged is not None and far:
                    on_unconverged(res, top)
                break
    return Relaxed(states, residual, taken, converged)


def check_gradients_finite(
    block: str,
    mode: str,
    incoming: Sequence[torch.Tensor | None],
    outgoing: Sequence[torch.Tensor | None],
    residual: torch.Tensor | None,
) -> None:
    """Raise EquilibriumDivergedError naming `block` when the gradient reaching its outputs (`incoming`) or
    the gradients it computes (`outgoing`) hold NaN/Inf, before they reach an optimizer (one host read per
    backward of a block; it lives here with the solver's other documented syncs)."""

    def finite(ts: Sequence[torch.Tensor | None]) -> torch.Tensor:
        flags = [torch.isfinite(t).all() for t in ts if t is not None]
        return torch.stack(flags).all() if flags else torch.ones((), dtype=torch.bool)

    flag_in, flag_out = finite(incoming), finite(outgoing)
    ok_in, ok_out = torch.stack([flag_in, flag_out.to(flag_in.device)]).tolist()
    if ok_in and ok_out:
        return
    if not ok_in:
        raise EquilibriumDivergedError(
            f"analog block {block!r}: the gradient reaching its outputs is NaN/Inf, so its {mode.upper()} "
            "gradient cannot be computed; look at the loss and the blocks after it (lower the learning rate)."
        )
    where = (
        "" if residual is None else f" (its last free phase ended {float(residual):.3g} from a fixed point)"
    )
    raise EquilibriumDivergedError(
        f"analog block {block!r}: its {mode.upper()} gradient is NaN/Inf{where}; an unconverged or non-"
        "contractive block has no well-defined equilibrium gradient. Compile with constrain=True (the default; "
        "`--feedback-gain` > 0) so the block is a contraction, raise T1 or set a solver tolerance, or lower "
        "the learning rate."
    )


def _raise_diverged(block: str, phase: str, step: int, states: States, cfg: SolverConfig) -> None:
    finite = all(bool(torch.isfinite(s).all()) for s in states)
    what = f"|s| exceeded {cfg.divergence_limit:g}" if finite else "NaN/Inf appeared"
    raise EquilibriumDivergedError(
        f"analog block {block!r} diverged in the {phase} phase at step {step} "
        f"(checked every {cfg.check_every} steps): {what}. "
        "Lower the learning rate or the weights' scale, use bounded activations (hardsigmoid), "
        "or switch the solver to mode='async'."
    )
