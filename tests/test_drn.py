"""Deep resistive network blocks: the exact BCD solver, non-negative conductances, EP gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hybridc.api import compile, partition
from hybridc.energy.drn import DRNBlock
from hybridc.errors import UnsupportedOpError
from hybridc.gradcheck import gradcheck


def _mlp(*sizes: int) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Flatten()]
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


def _block(model: nn.Module, x: torch.Tensor, **kw) -> tuple:  # noqa: ANN001
    ff = compile(model.double(), x.double(), max_block_size=4, eb_kind="drn", **kw).double()
    block = next(iter(ff.analog_blocks.values()))
    assert isinstance(block, DRNBlock)
    return ff, block


def test_bcd_sweep_minimises_the_power() -> None:
    """Each sweep is exact coordinate descent: the energy never increases and the fixed point is a
    stationary point of E (projected gradient zero, diode constraints active where clipped)."""
    x = torch.rand(5, 12, dtype=torch.float64)
    ff, block = _block(_mlp(12, 16, 16, 4), x, drn_gamma=2.0, solver={"t1": 1})
    inputs = [x]
    states = block.initial_states(inputs)
    energies = []
    for _ in range(200):
        states = block.step_map(inputs, states)
        energies.append(-float(block.phi_per_sample(inputs, states).sum().detach()))
    assert all(b <= a + 1e-12 for a, b in zip(energies, energies[1:]))
    v = [s.clone().requires_grad_(True) for s in states]
    e = -block.phi_per_sample(inputs, v).sum()
    grads = torch.autograd.grad(e, v)
    for k, (s, g) in enumerate(zip(states, grads)):
        if k < len(states) - 1:  # diode-bounded hidden layer: zero gradient unless pinned at 0
            free = s.abs() > 1e-9
            assert g[free].abs().max() < 1e-8
            n = s.shape[-1]
            assert (s[:, : n - n // 2] >= 0).all() and (s[:, n - n // 2 :] <= 0).all()
        else:  # linear outputs
            assert g.abs().max() < 1e-8


def test_drn_gradients_match_id_and_bptt() -> None:
    model = _mlp(20, 24, 24, 5)
    r = gradcheck(model, torch.rand(2, 20), max_block_size=3, eb_kind="drn", batch=3)
    assert not r.unconverged()
    analog = [p for p in r.params if p.analog]
    assert {p.name.split(".")[1] for p in analog} == {"conductances", "biases"}
    for p in analog:
        assert p.cos_ep_id >= 0.999, p
        assert p.relerr_id_bptt <= 1e-6, p


def test_conductances_stay_non_negative_and_chain_with_digital_blocks() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Flatten(),
        nn.Linear(16, 32),
        nn.ReLU(),
        nn.Linear(32, 8),
        nn.LayerNorm(8),
        nn.Linear(8, 8),
        nn.ReLU(),
        nn.Linear(8, 3),
    )
    x = torch.rand(64, 16)
    y = (x[:, 0] > x[:, 1]).long() + (x[:, 2] > 0.8).long()
    ff = compile(model, x, max_block_size=2, eb_kind="drn", drn_gamma=4.0, solver={"t1": 6, "t2": 4})
    assert len(ff.analog_blocks) == 2  # the LayerNorm between them is a digital block
    opt = torch.optim.SGD(ff.parameters(), lr=0.5)
    first = None
    for _ in range(60):
        opt.zero_grad()
        loss = F.cross_entropy(ff(x), y)
        loss.backward()
        opt.step()
        first = first if first is not None else float(loss.detach())
        for blk in ff.analog_blocks.values():
            assert all((g >= 0).all() for g in blk.conductances)
    assert float(loss.detach()) < first
    ln = ff.blocks[[k for k, b in ff.blocks.items() if not isinstance(b, DRNBlock)][1]]
    assert any(p.grad is not None for p in ln.parameters())  # BP-EP chaining reached the digital block


def test_drn_refuses_non_chain_blocks() -> None:
    conv = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.Flatten(), nn.Linear(64, 3))
    with pytest.raises(UnsupportedOpError, match="drn"):
        compile(conv, torch.rand(2, 1, 8, 8), max_block_size=3, eb_kind="drn")


def test_plan_records_drn_kind() -> None:
    plan = partition(_mlp(8, 8, 2), torch.rand(2, 8), max_block_size=2, eb_kind="drn", drn_gamma=3.0)
    (block,) = plan.analog_blocks
    assert block.eb_kind == "drn" and block.eb_params == {"gamma": 3.0}


def test_float32_ep_gradients_survive_a_large_input_gain() -> None:
    """EP's conductance gradient is a difference of ±β phases whose ½ g (v_i − v_j)² terms are large at a
    realistic input gain γ; in float32 the squared terms must not drown the difference in rounding noise."""
    torch.manual_seed(0)
    model = _mlp(512, 256, 10)
    x = torch.randn(64, 512)
    y = torch.randint(0, 10, (64,))
    grads = {}
    for dtype, mode in ((torch.float64, "id"), (torch.float32, "ep")):
        ff = compile(
            model.to(dtype),
            x[:2].to(dtype),
            max_block_size=2,
            eb_kind="drn",
            drn_gamma=100.0,
            solver={"t1": 8, "t2": 8},
            beta=0.5,
            gradient=mode,
        ).to(dtype)
        F.cross_entropy(ff(x.to(dtype)), y).backward()
        grads[mode] = [p.grad.double() for p in ff.parameters()]
    for ep, ref in zip(grads["ep"], grads["id"]):
        assert F.cosine_similarity(ep.flatten(), ref.flatten(), dim=0) > 0.999


def test_gamma_is_an_experiment_setting() -> None:
    from hybridc.train.experiment import ExperimentConfig

    cfg = ExperimentConfig(eb_kind="drn", drn_gamma=50.0)
    assert cfg.policies()["drn_gamma"] == 50.0
    assert "drn_gamma" not in ExperimentConfig().policies()
