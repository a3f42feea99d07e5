"""The runtime's invariants (DESIGN.md): exactness of single-layer blocks, EP ≈ ID ≈ BPTT on multi-layer
blocks in float64, fast path = generic path, divergence is an error, and training with standard tools."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hybridc.api import compile, partition
from hybridc.errors import EquilibriumDivergedError
from hybridc.gradcheck import gradcheck

from .conftest import small_zoo
from .fixtures.unseen_models import UNSEEN


@pytest.mark.parametrize("name", ["mlp", "vgg-paper", "resnet18", "transformer"])
def test_single_layer_blocks_are_exact(name: str) -> None:
    lm = small_zoo(name)
    r = gradcheck(lm.model, lm.example_inputs, max_block_size=1, activation="keep", batch=3)
    assert r.forward_max_abs_diff is not None and r.forward_max_abs_diff <= 1e-10
    for p in r.params:
        assert p.cos_ep_autograd is not None and p.cos_ep_autograd >= 0.9999, p
        assert p.cos_ep_id >= 0.9999, p
        # a scale error keeps every cosine at 1: relative errors too (measured <= 8.5e-10, float64, beta 1e-6)
        assert p.relerr_ep_id <= 1e-8 and p.relerr_ep_autograd <= 1e-8, p


@pytest.mark.parametrize(
    "name,n,beta",
    [
        ("mlp", 2, 1e-6),
        ("vgg-paper", 3, 1e-6),
        ("resnet18", 4, 1e-7),
        ("transformer", 2, 1e-6),
        ("vit", 2, 1e-6),
    ],
)
def test_multilayer_ep_matches_id_and_bptt(name: str, n: int, beta: float) -> None:
    """Cosine and relative error (a constant scale error in EP keeps the cosine at 1). Measured max relative
    errors EP vs ID in float64: mlp 9e-9, vgg 2.7e-7, transformer 1.3e-8, vit 1.3e-9; resnet18 2.9e-7 at
    beta 1e-7 (6e-3 at 1e-6: hard-sigmoid pre-activations within beta of a kink bias finite-beta EP)."""
    lm = small_zoo(name)
    r = gradcheck(lm.model, lm.example_inputs, max_block_size=n, batch=3, beta=beta)
    assert not r.unconverged()
    analog = [p for p in r.params if p.analog]
    plan = partition(lm.model, lm.example_inputs, max_block_size=n)
    assert max(len(b.weight_layers) for b in plan.analog_blocks) > 1  # multi-layer blocks are checked
    for p in analog:
        assert p.cos_ep_id >= 0.999, p
        assert p.relerr_ep_id <= 1e-5, p
        assert p.relerr_id_bptt <= 1e-6, p


@pytest.mark.parametrize("name", ["scratch_encoder", "preact_resnet", "functional_mlp", "mlp_mixer"])
def test_unseen_models_gradcheck(name: str) -> None:
    cls, shape = UNSEEN[name]
    r = gradcheck(cls(), torch.randn(2, *shape), max_block_size=3, batch=3)
    assert not r.unconverged()
    for p in r.params:
        if p.analog:
            assert p.cos_ep_id >= 0.999, p
            assert p.relerr_ep_id <= 1e-5, p  # measured <= 2.5e-7 (float64, beta 1e-6)
            assert p.relerr_id_bptt <= 1e-6, p


def _block_and_inputs(name: str, n: int):  # noqa: ANN202
    lm = small_zoo(name)
    ff = compile(
        lm.model.double(), lm.example_inputs[0].double(), max_block_size=n, solver={"fast_path": "on"}
    )
    ff = ff.double()
    block = max(ff.analog_blocks.values(), key=lambda b: len(b.neuron_names))
    return ff, block


@pytest.mark.parametrize("name,n", [("mlp", 2), ("vgg-paper", 3), ("resnet18", 4), ("transformer", 2)])
def test_fast_path_equals_generic(name: str, n: int) -> None:
    ff, block = _block_and_inputs(name, n)
    captured = {}

    def grab(mod, args, out):  # noqa: ANN001, ANN202
        captured["inputs"] = [a.detach() for a in args]

    h = block.register_forward_hook(grab)
    lm = small_zoo(name)
    with torch.no_grad():
        ff(torch.randn(3, *lm.example_inputs[0].shape[1:], dtype=torch.float64))
    h.remove()
    inputs = block.prepare(captured["inputs"])
    states = [torch.rand(3, *s, dtype=torch.float64) for s in block.neuron_shapes]
    assert block.fast is not None, block.fast_reason
    fast = block.phi_grad(inputs, states)
    keep, block.fast = block.fast, None
    generic = block.phi_grad(inputs, states)
    block.fast = keep
    for a, b in zip(fast, generic):
        assert torch.allclose(a, b, atol=1e-10, rtol=1e-10)


def test_divergence_names_block_and_step() -> None:
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3))
    with torch.no_grad():
        for m in model[::2]:
            m.weight.copy_(torch.eye(m.weight.shape[0], 8) * 3.0)
    # unbounded (relu) neurons with loop gain 9: the relaxation runs away
    ff = compile(
        model,
        torch.randn(2, 8),
        max_block_size=3,
        activation="keep",
        constrain=False,
        solver={"t1": 200, "check_every": 7},
    )  # constrain=False: keep it non-contractive
    with pytest.raises(EquilibriumDivergedError) as exc:
        ff(torch.randn(2, 8))
    msg = str(exc.value)
    assert "analog0" in msg and "free phase" in msg and "step" in msg
    step = int(msg.split("at step ")[1].split(" ")[0])
    assert 1 <= step <= 200


def test_nan_input_is_reported() -> None:
    ff = compile(
        nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)), torch.randn(2, 4), max_block_size=2
    )
    x = torch.randn(2, 4)
    x[0, 0] = float("nan")
    with pytest.raises(EquilibriumDivergedError, match="NaN"):
        ff(x)


def test_one_sided_and_unnormalised_ep_agree_with_id() -> None:
    lm = small_zoo("mlp")
    x = torch.randn(4, 1, 28, 28, dtype=torch.float64)
    y = torch.randint(0, 10, (4,))
    ff = compile(lm.model.double(), x, max_block_size=2, solver={"tol": 1e-13, "max_steps": 3000}).double()

    def grads(**kw):  # noqa: ANN202
        ff.set_gradient(**kw)
        ff.zero_grad()
        F.cross_entropy(ff(x), y).backward()
        return torch.cat([p.grad.flatten() for p in ff.parameters()])

    ref = grads(mode="id")
    for kw in (
        {"mode": "ep", "beta": 1e-6, "centered": False},
        {"mode": "ep", "beta": 1e-9, "normalize": False},
    ):
        g = grads(**kw)
        assert F.cosine_similarity(g, ref, 0) > 0.999, kw


def test_training_with_adam_clipping_reduces_loss() -> None:
    torch.manual_seed(0)
    x = torch.randn(64, 10)
    y = (x[:, :3].sum(1) > 0).long() + (x[:, 3] > 1).long()
    model = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 3))
    ff = compile(
        model, x, max_block_size=2, init="goe", goe_variance=1e-2, beta=0.05, solver={"t1": 15, "t2": 5}
    )
    opt = torch.optim.Adam(ff.parameters(), lr=3e-3)
    losses = []
    for _ in range(300):
        opt.zero_grad()
        loss = F.cross_entropy(ff(x), y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(ff.parameters(), 1.0)
        opt.step()
        losses.append(float(loss.detach()))
    assert sum(losses[-10:]) / 10 < 0.5 * sum(losses[:10]) / 10
    # the original model is untouched by training the compiled copy
    assert not any(p.grad is not None for p in model.parameters())


def test_compiled_parameters_are_copies() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    ff = compile(model, torch.randn(2, 4), max_block_size=2)
    before = model[0].weight.detach().clone()
    with torch.no_grad():
        for p in ff.parameters():
            p.add_(1.0)
    assert torch.equal(model[0].weight, before)


def test_block_with_several_inputs_and_outputs() -> None:
    """resnet's analog blocks take the skip input and hand on two neurons; EP chains through them."""
    lm = small_zoo("resnet18")
    ff = compile(lm.model, lm.example_inputs, max_block_size=4)
    multi = [b for b in ff.plan.analog_blocks if len(b.inputs) > 1 and len(b.outputs) > 1]
    assert multi
    x = torch.randn(2, 3, 32, 32, requires_grad=True)
    ff(x).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_batch_size_differs_from_example() -> None:
    lm = small_zoo("transformer")
    ff = compile(lm.model, lm.example_inputs, max_block_size=2).eval()
    assert ff(torch.randn(7, 1, 28, 28)).shape == (7, 10)


def test_solver_variants_reach_the_same_equilibrium() -> None:
    """sync, even/odd async and Anderson-accelerated iterations have the same fixed point; tolerance mode
    stops early; Anderson needs fewer steps than plain iteration on a slowly contracting block."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 8))
    x = torch.rand(8, 16, dtype=torch.float64)
    outs, steps = {}, {}
    for name, solver in {"sync": {}, "async": {"mode": "async"}, "anderson": {"anderson": 5}}.items():
        torch.manual_seed(1)  # the same GOE weights for every variant
        ff = compile(
            model,
            x.float(),
            max_block_size=3,
            init="goe",
            goe_variance=0.02,
            solver={"tol": 1e-12, "max_steps": 4000, "check_every": 10, **solver},
        ).double()
        with torch.no_grad():
            outs[name] = ff(x)
        block = next(iter(ff.analog_blocks.values()))
        steps[name] = block.last_steps
        assert float(block.last_residual) < 1e-12
    assert torch.allclose(outs["sync"], outs["async"], atol=1e-9)
    assert torch.allclose(outs["sync"], outs["anderson"], atol=1e-9)
    assert steps["anderson"] < steps["sync"] < 4000


def test_bf16_autocast_keeps_analog_blocks_in_float32() -> None:
    lm = small_zoo("vgg-paper")
    ff = compile(lm.model, lm.example_inputs, max_block_size=3, init="goe").train()
    x = torch.randn(4, 3, 32, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = ff(x)
        loss = F.cross_entropy(out.float(), torch.arange(4))
    loss.backward()
    grads = [p.grad for p in ff.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert all(p.dtype == torch.float32 for p in ff.parameters())
