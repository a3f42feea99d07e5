"""Runtime settings of analog blocks: how they relax (solver) and how they produce gradients."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from hybridc.finite import FiniteFloat

GradientMode = Literal["ep", "id", "bptt"]


class SolverConfig(BaseModel):
    """Fixed-point relaxation of an energy-based block.

    A phase runs a fixed number of steps (`t1` free, `t2` nudged) unless `tol` is set, in which case it
    stops once max|s_{t+1} - s_t| < tol (checked every `check_every` steps, so a GPU syncs with the host
    only that often) or after `max_steps`.
    """

    model_config = ConfigDict(extra="forbid")

    t1: int = Field(20, ge=1, description="free-phase steps")
    t2: int = Field(5, ge=1, description="nudged-phase steps")
    mode: Literal["sync", "async"] = Field("sync", description="synchronous or even/odd asynchronous updates")
    tol: FiniteFloat | None = Field(None, gt=0, description="stop when max|Δs| < tol instead of fixed step counts")
    max_steps: int = Field(1000, ge=1, description="step cap in tolerance mode")
    check_every: int = Field(5, ge=1, description="steps between convergence/divergence checks")
    anderson: int = Field(0, ge=0, description="Anderson acceleration memory (0 = off)")
    anderson_beta: FiniteFloat = Field(1.0, gt=0, le=1.0, description="Anderson mixing")
    divergence_limit: FiniteFloat = Field(1e6, gt=0, description="|s| above this counts as divergence")
    fast_path: Literal["auto", "on", "off"] = Field(
        "auto", description="explicit transposed ops (on), autograd vjp (off), or fast when supported")


class GradientConfig(BaseModel):
    """How an analog block's backward pass estimates gradients."""

    model_config = ConfigDict(extra="forbid")

    mode: GradientMode = Field("ep", description="ep (equilibrium propagation), id (implicit diff.), bptt")
    beta: FiniteFloat = Field(0.05, gt=0, le=1.0, description="nudging strength (dimensionless: δ is normalised)")
    centered: bool = Field(True, description="centered EP (±β) or one-sided (+β)")
    normalize: bool = Field(True, description="scale δ to unit RMS per sample before nudging")
    bptt_steps: int | None = Field(None, ge=1, description="steps unrolled from s* in bptt mode (default t2)")
    id_tol: FiniteFloat = Field(1e-10, gt=0, description="adjoint fixed-point tolerance (id mode)")
    id_max_steps: int = Field(2000, ge=1, description="adjoint fixed-point step cap (id mode)")
    id_solver: Literal["gmres", "fixed_point"] = Field(
        "gmres", description="adjoint solve (id mode): GMRES on (I - J^T) lambda = delta, or the plain iteration")
    id_check_every: int = Field(10, ge=1, description="adjoint steps between convergence checks (host syncs)")

    @model_validator(mode="after")
    def _check(self) -> GradientConfig:
        return self
