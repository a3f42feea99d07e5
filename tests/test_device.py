"""Device effects act as the AnalogSpec says: weight range, levels, programming noise, read noise,
DAC/ADC bits — and training still gets gradients through them."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from hybridc.api import compile
from hybridc.plan import AnalogSpec


def _model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(12, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 4))


def _weights(ff) -> list[torch.Tensor]:  # noqa: ANN001
    block = next(iter(ff.analog_blocks.values()))
    return [m.weight for m in block.modules() if isinstance(m, nn.Linear)]


X = torch.rand(16, 12)


def test_off_by_default_changes_nothing() -> None:
    ff = compile(_model(), X, max_block_size=3)
    ref = compile(_model(), X, max_block_size=3, analog={})
    assert torch.equal(ff(X), ref(X))


def test_weight_range_and_levels() -> None:
    ff = compile(_model(), X, max_block_size=3, analog={"weight_range": 0.1, "weight_levels": 5})
    for w in _weights(ff):
        assert w.abs().max() <= 0.1 + 1e-7
        values = torch.unique(w.detach())
        assert len(values) <= 5
        assert torch.allclose(
            values, torch.tensor([-0.1, -0.05, 0.0, 0.05, 0.1])[: len(values)], atol=1e-7
        ) or all(min(abs(v - g) for g in (-0.1, -0.05, 0.0, 0.05, 0.1)) < 1e-7 for v in values.tolist())


def test_programming_noise_is_fixed_until_weights_change() -> None:
    model = _model()
    ff = compile(model, X, max_block_size=3, analog={"program_noise": 0.05, "weight_range": 1.0})
    ideal = [m.weight.detach().clamp(-1, 1) for m in model.modules() if isinstance(m, nn.Linear)]
    eff = [w.detach().clone() for w in _weights(ff)]
    for w, i in zip(eff, ideal):
        noise = w - i
        assert 0.035 < float(noise.std()) < 0.065  # 0.05 of the range
    assert all(torch.equal(a, b.detach()) for a, b in zip(eff, _weights(ff)))  # same programming
    out1, out2 = ff(X), ff(X)
    assert torch.equal(out1, out2)
    opt = torch.optim.SGD(ff.parameters(), lr=1e-3)
    F.cross_entropy(ff(X), torch.zeros(16, dtype=torch.long)).backward()
    opt.step()  # a weight update reprograms the devices: new noise
    after = [w.detach() for w in _weights(ff)]
    assert not torch.allclose(after[0] - eff[0], torch.zeros_like(after[0]), atol=1e-3)
    assert float((after[0] - eff[0]).std()) > 0.03


def test_read_noise_perturbs_every_relaxation() -> None:
    quiet = compile(_model(), X, max_block_size=3)
    noisy = compile(_model(), X, max_block_size=3, analog={"read_noise": 0.01})
    with torch.no_grad():
        a, b, ref = noisy(X), noisy(X), quiet(X)
    assert not torch.equal(a, b)
    assert 1e-4 < float((a - ref).abs().mean()) < 0.1


@pytest.mark.parametrize("bits", [2, 4])
def test_dac_adc_bits(bits: int) -> None:
    ff = compile(_model(), X, max_block_size=3, analog={"adc_bits": bits, "dac_bits": bits, "io_range": 2.0})
    out = ff(X)
    assert len(torch.unique(out.detach())) <= 2**bits - 1
    step = 2.0 / (2 ** (bits - 1) - 1)
    assert torch.allclose(torch.round(out.detach() / step) * step, out.detach(), atol=1e-5)
    assert float(out.detach().abs().max()) <= 2.0 + 1e-6
    # zero is a level: a zero input (image background) crosses the DAC unchanged
    from hybridc.analog.nonideal import quantize_ste

    z = quantize_ste(torch.tensor([0.0, 0.01, -2.5, 2.5]), bits, 2.0)
    assert z[0] == 0 and z[2] == -2.0 and z[3] == 2.0
    # straight-through gradients keep training possible
    F.cross_entropy(out, torch.zeros(16, dtype=torch.long)).backward()
    grads = [p.grad for p in ff.parameters()]
    assert all(g is not None for g in grads)
    # at 2 bits most N(0,1) inputs fall on the 0 level of a ±2 DAC, which silences their weights' gradients
    assert all(g.abs().sum() > 0 for g in grads) if bits > 2 else sum(float(g.abs().sum()) for g in grads) > 0


def test_spec_is_validated() -> None:
    with pytest.raises(Exception, match="weight_levels"):
        AnalogSpec(weight_levels=1)
    with pytest.raises(Exception, match="extra"):
        AnalogSpec(shot_noise=0.1)


def test_drn_conductances_stay_non_negative_under_effects() -> None:
    model = nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 4))
    ff = compile(
        model,
        X,
        max_block_size=2,
        eb_kind="drn",
        analog={"weight_range": 0.5, "weight_levels": 9, "program_noise": 0.0},
    )
    block = next(iter(ff.analog_blocks.values()))
    opt = torch.optim.SGD(ff.parameters(), lr=1.0)
    for _ in range(3):
        opt.zero_grad()
        F.cross_entropy(ff(X), torch.arange(16) % 4).backward()
        opt.step()
    for g in block.raw_conductances():
        assert (g >= 0).all()
    for g in block.conductances:
        assert (g >= 0).all() and g.max() <= 0.5 + 1e-6 and len(torch.unique(g.detach())) <= 9


# ---- changing the effects of a compiled (trained) model: FFEBM.set_analog --------------------------------
def _trained(eb_kind: str = "dhn", steps: int = 3):  # noqa: ANN202
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 4)) if eb_kind == "drn" else _model()
    ff = compile(model, X, max_block_size=3 if eb_kind == "dhn" else 2, eb_kind=eb_kind)
    opt = torch.optim.Adam(ff.parameters(), lr=1e-2)
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(ff(X), torch.arange(16) % 4).backward()
        opt.step()
    return ff.eval()


def test_set_then_clear_restores_the_ideal_model_exactly() -> None:
    ff = _trained()
    ideal_sd = {k: v.clone() for k, v in ff.state_dict().items()}
    with torch.no_grad():
        ideal = ff(X)
    ff.set_analog(
        {"program_noise": 0.05, "weight_levels": 8, "read_noise": 0.02, "adc_bits": 4, "dac_bits": 4}
    )
    assert ff.plan.analog.weight_levels == 8 and all(b.analog is None for b in ff.plan.analog_blocks)
    with torch.no_grad():
        assert not torch.equal(ff(X), ideal)
    ff.set_analog({"weight_levels": 4})  # replaces, does not stack
    assert ff.plan.analog == AnalogSpec(weight_levels=4)
    ff.set_analog(None)
    assert ff.plan.analog == AnalogSpec()
    assert not any(parametrize.is_parametrized(m) for m in ff.modules())
    with torch.no_grad():
        assert torch.equal(ff(X), ideal)
    sd = ff.state_dict()
    assert sd.keys() == ideal_sd.keys() and all(torch.equal(sd[k], ideal_sd[k]) for k in sd)


def test_state_dicts_load_across_device_settings() -> None:
    ff = _trained()
    ideal_sd = {k: v.clone() for k, v in ff.state_dict().items()}
    with torch.no_grad():
        ideal = ff(X)
    other = compile(_model(), X, max_block_size=3, analog={"weight_levels": 16}).eval()
    other.load_state_dict(ideal_sd)  # an ideal checkpoint into a model with effects
    other.set_analog(None)
    with torch.no_grad():
        assert torch.equal(other(X), ideal)
    other.set_analog({"weight_levels": 16})
    ff.load_state_dict(other.state_dict())  # and back
    with torch.no_grad():
        assert torch.equal(ff(X), ideal)


def test_set_analog_keeps_the_optimizer_parameters() -> None:
    ff = _trained()
    ids = {id(p) for p in ff.parameters()}
    opt = torch.optim.SGD(ff.parameters(), lr=0.1)
    ff.set_analog({"weight_levels": 8})
    assert {id(p) for p in ff.parameters()} == ids
    before = [p.detach().clone() for p in ff.parameters()]
    F.cross_entropy(ff(X), torch.arange(16) % 4).backward()
    opt.step()
    assert any(not torch.equal(a, b.detach()) for a, b in zip(before, ff.parameters()))


def test_set_analog_weight_levels() -> None:
    ff = _trained()
    ff.set_analog({"weight_levels": 4})
    weights = _weights(ff)
    assert weights and all(
        parametrize.is_parametrized(m, "weight")
        for blk in ff.analog_blocks.values()
        for m in blk.modules()
        if isinstance(m, nn.Linear)
    )
    for w in weights:
        assert len(torch.unique(w.detach())) <= 4


def test_program_noise_after_training_is_seeded() -> None:
    ff = _trained()
    with torch.no_grad():
        ideal = ff(X)
        ff.set_analog({"program_noise": 0.05}, seed=1)
        a = ff(X)
        torch.randn(100)  # other users of the global RNG do not matter
        ff.set_analog({"program_noise": 0.05}, seed=1)
        b = ff(X)
        ff.set_analog({"program_noise": 0.05}, seed=2)
        c = ff(X)
        torch.manual_seed(7)
        ff.set_analog({"program_noise": 0.05})
        d = ff(X)
        torch.manual_seed(7)
        ff.set_analog({"program_noise": 0.05})
        e = ff(X)
    assert not torch.equal(a, ideal) and float((a - ideal).abs().mean()) > 1e-4
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(d, e)
    ff.set_analog(None)
    with torch.no_grad():
        assert torch.equal(ff(X), ideal)


def test_set_analog_on_drn_keeps_conductances_non_negative() -> None:
    ff = _trained("drn")
    block = next(iter(ff.analog_blocks.values()))
    raw = [g.detach().clone() for g in block.raw_conductances()]
    assert all((g >= 0).all() for g in raw) and any((g == 0).any() for g in raw)
    ff.set_analog({"program_noise": 0.2, "weight_levels": 5}, seed=0)
    for mod in block.modules():
        for f in getattr(mod, "parametrizations", {}).values():
            assert all(p.non_negative for p in f)
    for g in block.conductances:
        assert (g >= 0).all()
    ff.set_analog(None)
    assert all(torch.equal(a, b) for a, b in zip(raw, block.raw_conductances()))
