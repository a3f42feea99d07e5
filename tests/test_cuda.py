"""The runtime invariants on a CUDA GPU (run with `python -m pytest -m cuda` on a machine that has one)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from hybridc.api import compile
from hybridc.gradcheck import gradcheck

from .conftest import small_zoo

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


@pytest.mark.parametrize("name", ["mlp", "vgg-paper", "resnet18", "transformer"])
def test_single_layer_exact_on_cuda(name: str) -> None:
    lm = small_zoo(name)
    r = gradcheck(lm.model, lm.example_inputs, max_block_size=1, activation="keep", batch=3, device="cuda")
    assert r.forward_max_abs_diff is not None and r.forward_max_abs_diff <= 1e-10
    assert all(p.cos_ep_autograd >= 0.9999 for p in r.params)


@pytest.mark.parametrize("name,n", [("mlp", 2), ("vgg-paper", 3), ("resnet18", 4), ("transformer", 2)])
def test_ep_matches_id_on_cuda(name: str, n: int) -> None:
    lm = small_zoo(name)
    r = gradcheck(lm.model, lm.example_inputs, max_block_size=n, batch=3, device="cuda")
    assert not r.unconverged()
    for p in r.params:
        if p.analog:
            assert p.cos_ep_id >= 0.999 and p.relerr_id_bptt <= 1e-6, p


def test_training_step_on_cuda_with_drn_and_device_effects() -> None:
    lm = small_zoo("mlp")
    ff = compile(
        lm.model,
        lm.example_inputs,
        max_block_size=2,
        eb_kind="drn",
        drn_gamma=4.0,
        analog={"read_noise": 0.01, "adc_bits": 8},
    ).cuda()
    x = torch.rand(16, 1, 28, 28, device="cuda")
    loss = F.cross_entropy(ff(x), torch.arange(16, device="cuda") % 10)
    loss.backward()
    assert all(p.grad is not None and p.grad.is_cuda for p in ff.parameters())
