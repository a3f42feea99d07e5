"""The feedback guard's warm-started per-step measurement (hybridc.energy.feedback_guard.DHNConstraint): after
its first cold steps it costs WARM_ITERS applications of the coupling per optimizer step (not STEP_ITERS),
its estimate stays a lower bound of ρ and is tighter than the cold STEP_ITERS one, the periodic cold estimate
still runs, anything that makes the vectors stale (load_state_dict, a dtype change) makes the next one cold,
and `guard_state` / `load_guard_state` let a restored model measure exactly what the original does."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from hybridc.api import compile
from hybridc.energy.coupling import COLD_FIRST, STEP_ITERS, WARM_ITERS, Coupling
from hybridc.energy.feedback_guard import DHNConstraint, guard_state, load_guard_state
from hybridc.models.mlp import MLP


def _model(sizes: tuple[int, ...] = (12, 24, 24, 20)) -> tuple[nn.Module, DHNConstraint]:
    """An MLP compiled as one analog block of three neuron layers (two state-reading weights), double
    precision, guarded at gain 0.8; random widths give B a small relative gap at the top of its spectrum, where
    the power iteration converges slowly."""
    torch.manual_seed(0)
    model = MLP(sizes, in_shape=(sizes[0],)).double()
    x = torch.rand(4, sizes[0], dtype=torch.float64)
    ff = compile(model, x, max_block_size=3, solver={"t1": 30, "check_every": 30})
    (blk,) = ff.analog_blocks.values()
    assert blk.constraint is not None and blk.constraint.target is not None
    return ff, blk.constraint


def _exact_norm(c: DHNConstraint) -> float:
    """‖B‖₂ from the dense B, built by applying the block's own operator to every basis vector (one per row)."""
    shapes = [tuple(s) for s in c.coupling.block.neuron_shapes]
    sizes = [int(torch.Size(s).numel()) for s in shapes]
    n = sum(sizes)
    eye = torch.eye(n, dtype=torch.float64)
    basis = [p.reshape(n, *s) for p, s in zip(torch.split(eye, sizes, dim=1), shapes)]
    with torch.no_grad():
        cols = c.coupling.apply(basis, c.coupling._probe(n))
    dense = torch.cat([b.reshape(n, -1) for b in cols], dim=1)
    return float(torch.linalg.matrix_norm(dense, 2))


def _steps(ff: nn.Module, n: int, seed: int, lr: float = 2e-3) -> None:
    """n optimizer steps (plain SGD on reproducible random gradients): the guard runs after each."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(ff.parameters(), lr=lr)
    for _ in range(n):
        for p in ff.parameters():
            p.grad = torch.randn(p.shape, generator=gen, dtype=p.dtype)
        opt.step()


class _Counter:
    """Counts `Coupling.apply` calls (one power-iteration step each) and records the estimates the guard
    rescales by, beside the old cold estimate and the exact ρ of the same weights (`DHNConstraint._scale_` sees them before rescaling)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, exact: bool = False) -> None:
        self.applies = 0
        self.rhos: list[tuple[float, float, float]] = []
        apply, scale = Coupling.apply, DHNConstraint._scale_

        def counted(coupling: Coupling, *a: object, **k: object) -> object:
            self.applies += 1
            return apply(coupling, *a, **k)

        def scaled(c: DHNConstraint, rho: torch.Tensor, *a: object) -> torch.Tensor:
            if exact:
                before = self.applies
                cold = float(c.coupling.norm(STEP_ITERS, 2))  # the old per-step estimate, same weights
                self.rhos.append((float(rho), cold, _exact_norm(c)))
                self.applies = before  # the reference's own application is not the guard's
            return scale(c, rho, *a)

        monkeypatch.setattr(Coupling, "apply", counted)
        monkeypatch.setattr(DHNConstraint, "_scale_", scaled)

    def per_step(self, ff: nn.Module, n: int, seed: int) -> list[int]:
        out = []
        for i in range(n):
            before = self.applies
            _steps(ff, 1, seed + i)
            out.append(self.applies - before)
        return out


def test_warm_guard_costs_warm_iters_applications_per_step_and_a_cold_one_periodically(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ff, c = _model()
    c.cold_every = 20
    counts = _Counter(monkeypatch).per_step(ff, 50, seed=1)
    # the first COLD_FIRST steps: cold (STEP_ITERS) and, from the second, the warm one beside it
    assert counts[:COLD_FIRST] == [STEP_ITERS] + [STEP_ITERS + WARM_ITERS] * (COLD_FIRST - 1)
    warm = [i for i, k in enumerate(counts) if k == WARM_ITERS]
    cold = [i for i, k in enumerate(counts) if k == STEP_ITERS + WARM_ITERS and i >= COLD_FIRST]
    assert len(warm) + len(cold) == 50 - COLD_FIRST  # every later step is one of the two
    assert cold == [COLD_FIRST - 1 + 20, COLD_FIRST - 1 + 40]  # every cold_every-th measurement
    # warm_start off: today's stateless measurement, STEP_ITERS every step
    c.warm_start = False
    assert _Counter(monkeypatch).per_step(ff, 3, seed=100) == [STEP_ITERS] * 3


def test_warm_estimate_is_a_lower_bound_tighter_than_the_cold_one(monkeypatch: pytest.MonkeyPatch) -> None:
    ff, c = _model()
    counter = _Counter(monkeypatch, exact=True)
    _steps(ff, 40, seed=2)
    assert len(counter.rhos) == 40
    for est, cold, exact in counter.rhos:
        assert est <= exact * (1 + 1e-9) and cold <= exact * (1 + 1e-9)  # ‖B u‖, ‖u‖ = 1: never above ρ
    later = counter.rhos[COLD_FIRST:]
    warm_err = [(exact - est) / exact for est, _, exact in later]
    cold_err = [(exact - cold) / exact for _, cold, exact in later]
    # measured: warm ≤ 8e-4 (median ≈ 1e-4), cold 1.3e-3 ... 2.6e-3 below ρ on this block
    assert max(warm_err) <= 1e-3 < min(cold_err)
    assert all(w <= c for w, c in zip(warm_err, cold_err))


def test_restored_guard_state_measures_exactly_what_the_original_does(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ff, _ = _model()
    copy_ = copy.deepcopy(ff)  # a fresh model of the same plan (its own constraint, never stepped)
    _steps(ff, COLD_FIRST + 3, seed=3)
    sd, gs = copy.deepcopy(ff.state_dict()), copy.deepcopy(guard_state(ff))
    assert list(gs) and all(s["vectors"] for s in gs.values())
    assert set(copy_.state_dict()) == set(sd)  # the guard's state is not in the state_dict
    counter = _Counter(monkeypatch, exact=False)
    copy_.load_state_dict(sd)
    load_guard_state(copy_, gs)
    assert counter.per_step(copy_, 1, seed=10) == [WARM_ITERS]  # continues warm
    _steps(ff, 1, seed=10)
    _steps(ff, 5, seed=11)
    _steps(copy_, 5, seed=11)
    a, b = ff.state_dict(), copy_.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    # without the guard's state, load_state_dict alone leaves the vectors stale: the next measurement is cold
    copy_.load_state_dict(sd)
    assert counter.per_step(copy_, 1, seed=12) == [STEP_ITERS]


def test_a_dtype_change_makes_the_next_measurement_cold(monkeypatch: pytest.MonkeyPatch) -> None:
    ff, _ = _model()
    _steps(ff, COLD_FIRST + 2, seed=4)
    counter = _Counter(monkeypatch)
    assert counter.per_step(ff, 1, seed=20) == [WARM_ITERS]
    ff.float()
    assert counter.per_step(ff, 1, seed=21) == [STEP_ITERS]
