"""Solvers of the implicit-differentiation adjoint system of an analog block at its free equilibrium s*:

    λ = δ + Jᵀλ,   i.e.   (I − Jᵀ) λ = δ,

J = ∂T/∂s the Jacobian of the block's fixed-point map, Jᵀ applied by one autograd vjp per step.

Why a Krylov method: the plain iteration λ ← δ + Jᵀλ needs log(tol)/log ρ(J) steps (ρ the contraction
factor: 86 steps to 1e-10 at ρ ≈ 0.77, thousands near ρ → 1). GMRES builds the best λ in the Krylov space
of those same vjps and needs about the square root of that (the spectrum is real, below).

Structure of the system (checked): for a Deep Hopfield block T(s) = σ(∇Φ(s)), so J = Λ A with Λ = diag σ'(u)
(0 or the slope for hard sigmoid, 1 for identity outputs) and A = ∇²Φ symmetric. Hence Λ^{1/2}(I − AΛ)Λ^{-1/2}
is symmetric where Λ > 0: the eigenvalues of Jᵀ are real and, for a contraction, in (−1, 1). Conjugate
gradients / MINRES on the symmetrised system would need Λ explicitly (activation-specific code, and not
constant for smooth σ), and DRN blocks (block coordinate descent) have no such symmetry at all, so the solver
is GMRES on the unsymmetrised system, which needs only the vjp and converges like MINRES on a real spectrum.

Samples are independent in an analog block (no op of a block mixes the batch), so GMRES runs per sample on
the flattened state (B, n): each sample gets its own Krylov coefficients. Convergence is read on the host only
every `check_every` steps (one sync per check, none per step), and the final answer is accepted on its true
residual, recomputed with one more vjp: ‖δ + Jᵀλ − λ‖_∞ ≤ tol · ‖λ‖_∞, the criterion of the plain iteration,
whose step change is exactly this residual.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

#: v ↦ Jᵀv on the per-sample flattened state (B, n)
VJP = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class AdjointResult:
    """The solution λ (flattened, (B, n)), vjps used, and the final relative residual (device scalar)."""

    lam: torch.Tensor
    steps: int
    residual: torch.Tensor


def _relative_residual(r: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """max|r| / max|x| as a device scalar (0 when both vanish: δ = 0 gives λ = 0 exactly)."""
    num, den = r.abs().amax(), x.abs().amax()
    return torch.where(num == 0, torch.zeros_like(num), num / den)


def fixed_point(vjp: VJP, delta: torch.Tensor, tol: float, max_steps: int, check_every: int) -> AdjointResult:
    """λ ← δ + Jᵀλ until max|Δλ| ≤ tol·max|λ| (read every `check_every` steps) or `max_steps`."""
    lam = delta.clone()
    rel = torch.full((), float("inf"), dtype=delta.dtype, device=delta.device)
    steps = 0
    while steps < max_steps:
        steps += 1
        new = delta + vjp(lam)
        if steps % check_every == 0 or steps == max_steps:
            rel = _relative_residual(new - lam, new)
            lam = new
            if not bool(rel > tol):  # converged, or non-finite (left to the caller's finiteness check)
                break
        else:
            lam = new
    return AdjointResult(lam, steps, rel)


def gmres(
    vjp: VJP, delta: torch.Tensor, tol: float, max_steps: int, check_every: int, restart: int = 20
) -> AdjointResult:
    """Restarted GMRES(restart) on (I − Jᵀ)λ = δ, one Krylov space per sample (Givens-rotation form)."""
    x = torch.zeros_like(delta)
    r = delta  # the true residual of x = 0
    steps = 0
    while True:
        rel = _relative_residual(r, x)
        if not bool(rel > tol) or steps >= max_steps:  # accepted on the true residual (or out of budget)
            return AdjointResult(x, steps, rel)
        x, used = _cycle(vjp, x, r, tol, min(restart, max_steps - steps), check_every)
        steps += used
        r = delta - (x - vjp(x))
        steps += 1


def _cycle(
    vjp: VJP, x0: torch.Tensor, r0: torch.Tensor, tol: float, m: int, check_every: int
) -> tuple[torch.Tensor, int]:
    """One GMRES cycle of at most m Arnoldi steps from x0 with residual r0; returns the improved x."""
    batch, dtype, dev = r0.shape[0], r0.dtype, r0.device
    beta = r0.norm(dim=1)
    V = torch.empty(batch, m + 1, r0.shape[1], dtype=dtype, device=dev)  # the Krylov basis, preallocated
    V[:, 0] = r0 / _safe(beta).unsqueeze(1)
    R = torch.zeros(batch, m, m, dtype=dtype, device=dev)
    g = torch.zeros(batch, m + 1, dtype=dtype, device=dev)
    g[:, 0] = beta
    cs: list[torch.Tensor] = []
    sn: list[torch.Tensor] = []
    x = x0
    for k in range(m):
        w = V[:, k] - vjp(V[:, k])
        h = torch.zeros(batch, k + 2, dtype=dtype, device=dev)
        Vk = V[:, : k + 1]
        before = w.norm(dim=1)
        for sweep in range(2):  # classical Gram-Schmidt; a second sweep only where cancellation was large
            c = torch.bmm(Vk, w.unsqueeze(2)).squeeze(2)
            w = w - torch.bmm(c.unsqueeze(1), Vk).squeeze(1)
            h[:, : k + 1] += c
            h[:, k + 1] = w.norm(dim=1)
            if sweep == 0 and not bool((h[:, k + 1] < 0.5 * before).any()):
                break  # "twice is enough" (Kahan/Parlett): one sweep already kept half the norm
        V[:, k + 1] = w / _safe(h[:, k + 1]).unsqueeze(1)
        for i in range(k):  # earlier rotations
            a, b = h[:, i].clone(), h[:, i + 1].clone()
            h[:, i], h[:, i + 1] = cs[i] * a + sn[i] * b, -sn[i] * a + cs[i] * b
        d = torch.hypot(h[:, k], h[:, k + 1])
        cs.append(torch.where(d > 0, h[:, k] / _safe(d), torch.ones_like(d)))
        sn.append(torch.where(d > 0, h[:, k + 1] / _safe(d), torch.zeros_like(d)))
        R[:, : k + 1, k] = h[:, : k + 1]
        R[:, k, k] = d
        g[:, k + 1] = -sn[k] * g[:, k]
        g[:, k] = cs[k] * g[:, k]
        last = k == m - 1
        if (k + 1) % check_every == 0 or last:
            x = x0 + _combine(R[:, : k + 1, : k + 1], g[:, : k + 1], V[:, : k + 1])
            est = g[:, k + 1].abs().amax()  # ‖r‖₂ per sample ≥ max|r|: the estimate errs on the strict side
            if last or not bool(est > tol * x.abs().amax()):
                return x, k + 1
    return x, m


def _combine(R: torch.Tensor, g: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """Σ_i y_i v_i with R y = g (upper triangular). A sample whose Krylov space broke down exactly has zero
    rows and zero right-hand side there: a unit diagonal makes those y_i = 0 instead of 0/0."""
    diag = R.diagonal(dim1=1, dim2=2)
    R = R + torch.diag_embed(torch.where(diag == 0, torch.ones_like(diag), torch.zeros_like(diag)))
    y = torch.linalg.solve_triangular(R, g.unsqueeze(2), upper=True).squeeze(2)
    return torch.bmm(y.unsqueeze(1), basis).squeeze(1)


def _safe(t: torch.Tensor) -> torch.Tensor:
    return torch.where(t > 0, t, torch.ones_like(t))
