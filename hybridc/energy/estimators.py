"""Gradients through analog blocks, as autograd Functions so that ordinary `loss.backward()` chains them
with backprop through the digital blocks (Alg. 2 of Nest & Ernoult, implicit BP-EP chaining).

Modes:
- ep:   nudged equilibria s^{±β}: s_j = σ_j(∂Φ/∂s_j ∓ β δ̂_j) on output neurons, from s*, batched as one 2B
        relaxation; ∂L/∂θ ≈ −c·[∂_θΦ(s^{+β}) − ∂_θΦ(s^{−β})]/(2β) (the same for inputs x), δ̂ = δ/c with c
        the per-sample RMS of δ, so β is dimensionless.
- id:   implicit differentiation: λ = δ + J^T λ at s* (J the Jacobian of the fixed-point map T),
        ∂L/∂θ = (∂T/∂θ)^T λ. The true gradient, including every top-down use of each weight.
- bptt: autograd through `bptt_steps` unrolled steps of T from s*.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from hybridc.energy.solver import check_gradients_finite, flatten_states, unflatten_states

if TYPE_CHECKING:
    from hybridc.energy.block import EnergyBlock as DHNBlock


def _params(block: DHNBlock) -> list[torch.nn.Parameter]:
    return [p for p in block.parameters()]


def run_block(block: DHNBlock, inputs: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    mode = block.gradient.mode
    grad_needed = torch.is_grad_enabled() and (
        any(x.requires_grad for x in inputs) or any(p.requires_grad for p in block.parameters())
    )
    if not grad_needed:
        states = block.free_phase(inputs)
        return tuple(states[i] for i in block.output_idx)
    if mode == "bptt":
        return _bptt(block, inputs)
    fn = _EPFunction if mode == "ep" else _IDFunction
    params = _params(block)
    return fn.apply(block, len(inputs), *inputs, *params)


def _bptt(block: DHNBlock, inputs: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    states = [s.detach() for s in block.free_phase(inputs)]
    steps = block.gradient.bptt_steps or block.solver.t2
    prepared = block.prepare(inputs)
    for _ in range(steps):
        states = block.step_prepared(prepared, states, differentiable=True)
    return tuple(states[i] for i in block.output_idx)


def _deltas(
    block: DHNBlock, grads: Sequence[torch.Tensor | None], states: list[torch.Tensor]
) -> list[torch.Tensor | None]:
    """δ_j for every neuron: the incoming gradient on output neurons, None elsewhere."""
    out: list[torch.Tensor | None] = [None] * len(states)
    for k, i in enumerate(block.output_idx):
        g = grads[k]
        out[i] = torch.zeros_like(states[i]) if g is None else g
    return out


def _shape(c: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return c.reshape(-1, *([1] * (like.dim() - 1)))


class _EquilibriumFunction(torch.autograd.Function):
    """Forward: the free phase. Backward: `block`'s gradient rule at the free equilibrium, from the
    incoming gradients of the output neurons. Subclasses name the rule."""

    @staticmethod
    def rule(block, inputs, s_star, deltas, need_in, need_p):  # noqa: ANN001, ANN205
        raise NotImplementedError

    @staticmethod
    def forward(ctx, block: DHNBlock, n_in: int, *tensors: torch.Tensor):  # noqa: ANN001
        inputs = [t.detach() for t in tensors[:n_in]]
        states = block.free_phase(inputs)
        ctx.block = block
        ctx.n_in = n_in
        ctx.save_for_backward(*inputs, *states)
        return tuple(states[i].clone() for i in block.output_idx)

    @classmethod
    def backward(cls, ctx, *grad_outputs: torch.Tensor):  # noqa: ANN001
        block: DHNBlock = ctx.block
        saved = ctx.saved_tensors
        inputs, s_star = list(saved[: ctx.n_in]), list(saved[ctx.n_in :])
        need_in = list(ctx.needs_input_grad[2 : 2 + ctx.n_in])
        need_p = list(ctx.needs_input_grad[2 + ctx.n_in :])
        in_grads, p_grads = cls.rule(
            block, inputs, s_star, _deltas(block, grad_outputs, s_star), need_in, need_p
        )
        check_gradients_finite(
            block.name, block.gradient.mode, grad_outputs, [*in_grads, *p_grads], block.last_residual
        )
        return (None, None, *in_grads, *p_grads)


def ep_gradients(
    block: DHNBlock,
    inputs: list[torch.Tensor],
    s_star: list[torch.Tensor],
    deltas: list[torch.Tensor | None],
    need_in: list[bool],
    need_p: list[bool],
) -> tuple[list[torch.Tensor | None], list[torch.Tensor | None]]:
    """EP estimates of ∂L/∂x and ∂L/∂θ from the free equilibrium `s_star` and output gradients."""
    cfg = block.gradient
    beta = cfg.beta
    batch = s_star[0].shape[0]
    outs = [d for d in deltas if d is not None]
    if cfg.normalize:
        sq = sum(d.reshape(batch, -1).pow(2).sum(1) for d in outs)
        count = sum(d[0].numel() for d in outs)
        c = (sq / count).sqrt()
        c_safe = torch.where(c > 0, c, torch.ones_like(c))
    else:
        c = torch.ones(batch, dtype=s_star[0].dtype, device=s_star[0].device)
        c_safe = c
    dhat = [None if d is None else d / _shape(c_safe, d) for d in deltas]

    with torch.no_grad():
        if cfg.centered:
            sign = torch.cat([torch.ones(batch), -torch.ones(batch)]).to(s_star[0])
            x2 = [torch.cat([x, x]) for x in inputs]
            start = [torch.cat([s, s]) for s in s_star]
            nudge = [None if d is None else beta * _shape(sign, d) * torch.cat([d, d]) for d in dhat]
            nudged = block.relax(x2, start, block.solver.t2, "nudged", nudge)
            states_for_phi = nudged
            w = torch.cat([-c / (2 * beta), c / (2 * beta)])
        else:
            x2 = [torch.cat([x, x]) for x in inputs]
            nudge = [None if d is None else beta * d for d in dhat]
            plus = block.relax(inputs, list(s_star), block.solver.t2, "nudged", nudge)
            states_for_phi = [torch.cat([p, s]) for p, s in zip(plus, s_star)]
            w = torch.cat([-c / beta, c / beta])

    params = _params(block)
    with torch.enable_grad():
        xs = [x.detach().requires_grad_(n) for x, n in zip(inputs, need_in)]
        xcat = [torch.cat([x, x]) for x in xs]
        phi = block.phi_per_sample(xcat, [s.detach() for s in states_for_phi])
        total = (w.to(phi.dtype) * phi).sum()
        wanted = [p for p, n in zip(params, need_p) if n] + [x for x, n in zip(xs, need_in) if n]
        grads = torch.autograd.grad(total, wanted, allow_unused=True) if wanted else []
    it = iter(grads)
    p_grads = [_zero_if_none(next(it), p) if n else None for p, n in zip(params, need_p)]
    in_grads = [_zero_if_none(next(it), x) if n else None for x, n in zip(xs, need_in)]
    return in_grads, p_grads


def _zero_if_none(g: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(like) if g is None else g


def id_gradients(
    block: DHNBlock,
    inputs: list[torch.Tensor],
    s_star: list[torch.Tensor],
    deltas: list[torch.Tensor | None],
    need_in: list[bool],
    need_p: list[bool],
) -> tuple[list[torch.Tensor | None], list[torch.Tensor | None]]:
    """Implicit differentiation at the fixed point s* = T(s*): solve λ = δ + Jᵀλ (GMRES by default, or the
    plain iteration: `GradientConfig.id_solver`, `hybridc.energy.implicit`), then ∂L/∂θ = (∂T/∂θ)ᵀλ.
    Records `block.last_adjoint_steps` (vjps) and `block.last_adjoint_residual` (relative, device scalar)."""
    from hybridc.energy import implicit as adj

    cfg = block.gradient
    params = _params(block)
    delta = [torch.zeros_like(s) if d is None else d for d, s in zip(deltas, s_star)]
    with torch.enable_grad():
        xs = [x.detach().requires_grad_(n) for x, n in zip(inputs, need_in)]
        s = [t.detach().requires_grad_(True) for t in s_star]
        t_out = block.step_map(xs, s, differentiable=True)

        def vjp(v: torch.Tensor) -> torch.Tensor:
            jt = torch.autograd.grad(
                t_out, s, grad_outputs=unflatten_states(v, s_star), retain_graph=True, allow_unused=True
            )
            return flatten_states([torch.zeros_like(t) if j is None else j for j, t in zip(jt, s_star)])

        solve = adj.gmres if cfg.id_solver == "gmres" else adj.fixed_point
        result = solve(vjp, flatten_states(delta), cfg.id_tol, cfg.id_max_steps, cfg.id_check_every)
        block.last_adjoint_steps = result.steps
        block.last_adjoint_residual = result.residual
        lam = unflatten_states(result.lam, s_star)
        wanted = [p for p, n in zip(params, need_p) if n] + [x for x, n in zip(xs, need_in) if n]
        grads = torch.autograd.grad(t_out, wanted, grad_outputs=lam, allow_unused=True) if wanted else []
    it2 = iter(grads)
    p_grads = [_zero_if_none(next(it2), p) if n else None for p, n in zip(params, need_p)]
    in_grads = [_zero_if_none(next(it2), x) if n else None for x, n in zip(xs, need_in)]
    return in_grads, p_grads


class _EPFunction(_EquilibriumFunction):
    rule = staticmethod(ep_gradients)


class _IDFunction(_EquilibriumFunction):
    rule = staticmethod(id_gradients)
