"""Runtime settings of analog blocks: how they relax (solver) and how they produce gradients."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from hybridc.finite import FiniteFloat

GradientMode = Literal["ep", "id", "bptt"]


class SolverConfig(BaseModel):
    """Fixed-point relaxation of an energy-based block.

    The free phase, by default (`free="equilibrium"`), runs until its fixed-point residual max|s_{t+1} − s_t|
    is at most `free_tol`·max(1, max|s|) (read every `check_every` steps, so a GPU syncs with the host only
    that often), capped at a step count derived from the block's enforced feedback-gain bound ρ
    (`hybridc.energy.solver.free_step_cap`; `max_steps` for a block without one); a block that hits its cap
    first warns (`UnconvergedWarning`) and reports `last_converged = False`. `free="fixed"` runs exactly `t1`
    steps (the paper's fixed-iteration version); giving `t1` without `free` selects it. The nudged phase
    runs `t2` steps (EP's T2) from the free equilibrium. `tol` (absolute) overrides both: each phase then
    stops once max|Δs| < tol or after `max_steps`.
    """

    model_config = ConfigDict(extra="forbid")

    t1: int = Field(20, ge=1, description="free-phase steps (free='fixed'; giving t1 alone selects it)")
    t2: int = Field(5, ge=1, description="nudged-phase steps")
    free: Literal["equilibrium", "fixed"] = Field(
        "equilibrium",
        description="free phase: to its fixed point (free_tol, capped from the feedback-gain "
        "bound) or exactly t1 steps",
    )
    free_tol: FiniteFloat = Field(
        1e-4, gt=0, description="free='equilibrium': stop when max|Δs| ≤ free_tol·max(1, max|s|)"
    )
    mode: Literal["sync", "async"] = Field("sync", description="synchronous or even/odd asynchronous updates")
    tol: FiniteFloat | None = Field(
        None, gt=0, description="stop when max|Δs| < tol instead of fixed step counts"
    )
    max_steps: int = Field(
        1000,
        ge=1,
        description="step cap in tolerance mode (and free='equilibrium' without a feedback-gain bound)",
    )
    check_every: int = Field(5, ge=1, description="steps between convergence/divergence checks")
    anderson: int = Field(0, ge=0, description="Anderson acceleration memory (0 = off)")
    anderson_beta: FiniteFloat = Field(1.0, gt=0, le=1.0, description="Anderson mixing")
    divergence_limit: FiniteFloat = Field(1e6, gt=0, description="|s| above this counts as divergence")
    layout: Literal["auto", "channels_last", "contiguous"] = Field(
        "auto",
        description="memory layout of conv states and weights while relaxing: channels-last, contiguous "
        "(NCHW), or auto (channels-last for blocks that max-pool a state, where it is measured faster)",
    )
    fast_path: Literal["auto", "on", "off"] = Field(
        "auto", description="explicit transposed ops (on), autograd vjp (off), or fast when supported"
    )

    @model_validator(mode="before")
    @classmethod
    def _explicit_t1_is_fixed(cls, data: Any) -> Any:
        """An explicit `t1` without `free` asks for that many free steps: the fixed-iteration version. (A
        stored config — `model_dump()` — carries `free`, so a round trip keeps its mode.)"""
        return t1_selects_fixed(data) if isinstance(data, dict) else data

    def updated(self, **changes: Any) -> SolverConfig:
        """This config with `changes` applied under the same rule as construction: a `t1` given without `free`
        selects fixed steps (a plain `model_dump() | changes` would keep the stored `free`)."""
        return SolverConfig(**(self.model_dump() | t1_selects_fixed(changes)))


def t1_selects_fixed(settings: dict[str, Any]) -> dict[str, Any]:
    """`settings` with `free="fixed"` added when they give `t1` but no `free`: an explicit step count asks for
    exactly that many free steps (the paper's fixed-iteration version)."""
    if "t1" in settings and "free" not in settings:
        return {**settings, "free": "fixed"}
    return settings


class GradientConfig(BaseModel):
    """How an analog block's backward pass estimates gradients."""

    model_config = ConfigDict(extra="forbid")

    mode: GradientMode = Field("ep", description="ep (equilibrium propagation), id (implicit diff.), bptt")
    beta: FiniteFloat = Field(
        0.05, gt=0, le=1.0, description="nudging strength (dimensionless: δ is normalised)"
    )
    centered: bool = Field(True, description="centered EP (±β) or one-sided (+β)")
    normalize: bool = Field(True, description="scale δ to unit RMS per sample before nudging")
    bptt_steps: int | None = Field(None, ge=1, description="steps unrolled from s* in bptt mode (default t2)")
    id_tol: FiniteFloat = Field(1e-10, gt=0, description="adjoint fixed-point tolerance (id mode)")
    id_max_steps: int = Field(2000, ge=1, description="adjoint fixed-point step cap (id mode)")
    id_solver: Literal["gmres", "fixed_point"] = Field(
        "gmres",
        description="adjoint solve (id mode): GMRES on (I - J^T) lambda = delta, or the plain iteration",
    )
    id_check_every: int = Field(10, ge=1, description="adjoint steps between convergence checks (host syncs)")

    @model_validator(mode="after")
    def _check(self) -> GradientConfig:
        return self
