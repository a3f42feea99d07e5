"""Device effects act as the AnalogSpec says: weight range, levels, programming noise, read noise,
DAC/ADC bits — and training still gets gradients through them."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

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
        assert torch.allclose(values, torch.tensor([-0.1, -0.05, 0.0, 0.05, 0.1])[: len(values)], atol=1e-7) or \
            all(min(abs(v - g) for g in (-0.1, -0.05, 0.0, 0.05, 0.1)) < 1e-7 for v in values.tolist())


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
    assert len(torch.unique(out.detach())) <= 2**bits
    step = 4.0 / (2**bits - 1)
    assert torch.allclose(torch.round((out.detach() + 2.0) / step) * step - 2.0, out.detach(), atol=1e-5)
    # straight-through gradients keep training possible
    F.cross_entropy(out, torch.zeros(16, dtype=torch.long)).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in ff.parameters())


def test_spec_is_validated() -> None:
    with pytest.raises(Exception, match="weight_levels"):
        AnalogSpec(weight_levels=1)
    with pytest.raises(Exception, match="extra"):
        AnalogSpec(shot_noise=0.1)


def test_drn_conductances_stay_non_negative_under_effects() -> None:
    model = nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 4))
    ff = compile(model, X, max_block_size=2, eb_kind="drn",
                 analog={"weight_range": 0.5, "weight_levels": 9, "program_noise": 0.0})
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
