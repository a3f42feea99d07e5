"""The feedback-gain bound of hybridc.energy.contraction: ρ = ‖D_a^½ A D_a^½‖ measured through the block's own
∂Φ/∂s matches the norm built by hand from the weights, the compile-time calibration brings ρ to the gain
(also with an identity skip inside the block, which cannot be rescaled), a block whose skips alone give
ρ_I ≥ 1 is reported instead of being zeroed, and a bounded block relaxes to one fixed point from any start,
synchronously and even/odd."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from hybridc.api import compile
from hybridc.energy.contraction import feedback_layers, feedback_norms, spectral_norm
from hybridc.models.mlp import MLP


def test_power_iteration_matches_the_exact_operator_norm() -> None:
    torch.manual_seed(0)
    lin = nn.Linear(20, 30).double()
    exact = float(torch.linalg.matrix_norm(lin.weight.detach(), 2))
    assert abs(float(spectral_norm(lin, (20,), iters=200)) - exact) <= 1e-6 * exact
    conv = nn.Conv2d(2, 3, 3, padding=1).double()
    shape = (2, 5, 5)
    dense = torch.autograd.functional.jacobian(
        lambda u: conv._conv_forward(u, conv.weight, None), torch.zeros(1, *shape, dtype=torch.float64)
    ).reshape(75, 50)
    exact = float(torch.linalg.matrix_norm(dense, 2))
    assert abs(float(spectral_norm(conv, shape, iters=300)) - exact) <= 1e-4 * exact


def _three_layer_block(scale: float, **kw) -> tuple[nn.Module, nn.Module, torch.Tensor]:  # noqa: ANN003
    """MLP 12-10-8-6 as one analog block (neurons h1, h2 hard-sigmoid a=0.5, out identity), W2 and W3 ×scale."""
    torch.manual_seed(0)
    model = MLP((12, 10, 8, 6), in_shape=(12,)).double()
    lins = [m for m in model.modules() if isinstance(m, nn.Linear)]
    with torch.no_grad():
        for lin in lins[1:]:
            lin.weight.mul_(scale)
    x = torch.rand(5, 12, dtype=torch.float64)
    return model, compile(model, x, max_block_size=3, solver={"t1": 200, "check_every": 200}, **kw), x


def _hand_norm(w2: torch.Tensor, w3: torch.Tensor, a: float = 0.5) -> float:
    """‖D^½ A D^½‖ with A = [[0, W2ᵀ, 0], [W2, 0, W3ᵀ], [0, W3, 0]], slopes (a, a, 1)."""
    n1, n2, n3 = w2.shape[1], w2.shape[0], w3.shape[0]
    A = torch.zeros(n1 + n2 + n3, n1 + n2 + n3, dtype=torch.float64)
    A[n1 : n1 + n2, :n1] = w2
    A[n1 + n2 :, n1 : n1 + n2] = w3
    A = A + A.T
    d = torch.tensor([a] * (n1 + n2) + [1.0] * n3, dtype=torch.float64).sqrt()
    return float(torch.linalg.matrix_norm(d[:, None] * A * d[None, :], 2))


def test_measured_coupling_norm_equals_the_hand_built_one() -> None:
    _, ff, _ = _three_layer_block(3.0, constrain=False)
    (blk,) = ff.analog_blocks.values()
    w2, w3 = [w.detach() for _, w in feedback_layers(blk)]
    exact = _hand_norm(w2, w3)
    assert exact > 1.0  # out of contraction before the bound
    assert abs(feedback_norms(ff, iters=2000)[blk.name] - exact) <= 1e-6 * exact


def test_compile_bounds_the_gain_rescales_only_state_reading_layers_and_records_it() -> None:
    model, ff, x = _three_layer_block(3.0, feedback_gain=0.7)
    (blk,) = ff.analog_blocks.values()
    lins = [m for m in model.modules() if isinstance(m, nn.Linear)]
    w1, w2, w3 = [m.weight for m in blk.modules() if isinstance(m, nn.Linear)]
    assert torch.equal(w1, lins[0].weight)  # reads the block input only: no feedback through it
    factor = float(w2[0, 0].detach() / lins[1].weight[0, 0].detach())
    assert (
        factor < 1
        and torch.allclose(w2, factor * lins[1].weight)
        and torch.allclose(w3, factor * lins[2].weight)
    )
    assert _hand_norm(w2.detach(), w3.detach()) == pytest.approx(0.7, rel=1e-4)
    rescaled = [d for d in ff.plan.decisions if d.action == "rescaled"]
    assert [d.block for d in rescaled] == [blk.name] * 2 and f"×{factor:.4g}" in rescaled[0].reason
    assert "differs from the original" in rescaled[0].reason


class _SkipInside(nn.Module):
    """h1 = act(fc1 x), h2 = act(fc2 h1 + h1), out = fc3 h2: the residual add's source is a neuron of the block."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(6, 8), nn.Linear(8, 8), nn.Linear(8, 4)
        self.act1, self.act2 = nn.ReLU(), nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act1(self.fc1(x))
        return self.fc3(self.act2(self.fc2(h) + h))


def _skip_block(**kw) -> tuple[nn.Module, torch.Tensor]:  # noqa: ANN003
    torch.manual_seed(1)
    model = _SkipInside().double()
    with torch.no_grad():
        model.fc2.weight.mul_(4.0)
        model.fc3.weight.mul_(4.0)
    x = torch.rand(5, 6, dtype=torch.float64)
    return compile(model, x, max_block_size=3, solver={"t1": 200, "check_every": 200}, **kw), x


def test_identity_skip_inside_a_block_is_measured_and_the_secant_still_reaches_the_gain() -> None:
    ff, _ = _skip_block(feedback_gain=0.8)
    (blk,) = ff.analog_blocks.values()
    assert blk.constraint.rho_skip == pytest.approx(0.5, rel=1e-3)  # √(a·a)·‖I‖ with a = 0.5
    rho = feedback_norms(ff, iters=3000)[blk.name]
    assert 0.6 < rho <= 0.8 * (1 + 1e-4)


def test_a_skip_that_alone_breaks_contraction_is_reported_not_zeroed() -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ff, _ = _skip_block(feedback_gain=0.8, activation="keep")  # ReLU neurons: slope 1, ρ_I = 1
    (blk,) = ff.analog_blocks.values()
    assert blk.constraint.target is None
    assert any("cannot be bounded" in str(w.message) and "ρ_I=1" in str(w.message) for w in caught)
    unconstrained = [d for d in ff.plan.decisions if d.action == "unconstrained"]
    assert unconstrained and "ρ_I=1" in unconstrained[0].reason
    assert not any(d.action == "rescaled" for d in ff.plan.decisions)


@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.parametrize("model", ["chain", "skip"])
def test_bounded_block_reaches_one_fixed_point_from_any_start(mode: str, model: str) -> None:
    if model == "chain":
        _, ff, x = _three_layer_block(6.0, feedback_gain=0.9)
    else:  # with an identity skip inside the block (ρ_I = 0.5)
        ff, x = _skip_block(feedback_gain=0.9)
    (blk,) = ff.analog_blocks.values()
    blk.solver = blk.solver.model_copy(update={"mode": mode})
    ends = []
    for seed in (0, 1):
        g = torch.Generator().manual_seed(seed)
        start = [4 * torch.randn(x.shape[0], *s, generator=g, dtype=torch.float64) for s in blk.neuron_shapes]
        ends.append(blk.relax([x], start, 400, "free"))
        assert float(blk.last_residual) < 1e-10
    assert all(torch.allclose(a, b, atol=1e-9) for a, b in zip(*ends))
