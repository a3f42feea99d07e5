"""Transformer encoders as ff-EBMs (issue: compile, check, train, export a ViT): attention, norms, residual
adds, pooling digital; each MLP one analog block (hidden neurons = block activation, GELU substituted and
reported; output layer linear); token-wise neurons relaxing every position in parallel; gradients exact for
single-layer blocks and EP ≈ ID in float64 for the MLP blocks — on the zoo and on encoders never tuned on."""

from __future__ import annotations

import pytest
import torch

from hybridc.api import compile, partition
from hybridc.gradcheck import gradcheck

from .conftest import small_zoo
from .fixtures.unseen_models import UNSEEN

#: the weight layers of every encoder MLP (fc1, fc2)
MLP_PAIRS = {
    "vit": [("blocks.0.mlp.0", "blocks.0.mlp.2"), ("blocks.1.mlp.0", "blocks.1.mlp.2")],
    "scratch_encoder": [("layers.0.fc1", "layers.0.fc2"), ("layers.1.fc1", "layers.1.fc2")],
    "inline_attention": [("fc1", "fc2")],
}


def _model_and_input(name: str) -> tuple[torch.nn.Module, torch.Tensor]:
    if name in UNSEEN:
        cls, shape = UNSEEN[name]
        torch.manual_seed(0)
        return cls(), torch.randn(2, *shape)
    lm = small_zoo(name)
    return lm.model, lm.example_inputs[0]


@pytest.mark.parametrize("name", ["vit", "scratch_encoder", "inline_attention"])
def test_each_mlp_is_one_analog_block_with_token_wise_neurons(name: str) -> None:
    model, x = _model_and_input(name)
    plan = partition(model, x, max_block_size=2)
    by_layers = {tuple(b.weight_layers): b for b in plan.analog_blocks}
    for pair in MLP_PAIRS[name]:
        assert pair in by_layers, (pair, list(by_layers))
        hidden, out = by_layers[pair].neurons
        assert hidden.activation.kind == "hardsigmoid" and out.activation.kind == "identity"
        tokens = 17 if name == "vit" else x.shape[1]  # vit: 16 patches + the class token
        assert hidden.shape[1] == tokens and out.shape[1] == tokens  # one neuron per token and feature
    digital = [n for b in plan.blocks if b.kind == "digital" for n in b.nodes]
    analog_layers = {w for b in plan.analog_blocks for w in b.weight_layers}
    assert not any(w.split(".")[-1] in ("attn", "q", "k", "v", "o") for w in analog_layers)
    assert any("add" in n for n in digital)  # residual adds stay digital
    if name != "inline_attention":
        assert any("ln" in n or "norm" in n for n in digital)
        assert any("attn" in n for n in digital)
    if name == "vit":
        subs = [d for d in plan.decisions if d.action == "substituted"]
        assert len(subs) == 2 and all(d.reason.startswith("gelu -> hardsigmoid") for d in subs)


def test_tokens_relax_independently() -> None:
    """An MLP block's tokens do not interact: changing one token's input moves only that token's state."""
    lm = small_zoo("vit")
    # fixed steps: a run-to-equilibrium phase stops on the whole batch's residual, so a batch and one token alone
    # may stop at different steps (both within the tolerance); with equal steps they agree exactly
    ff = compile(lm.model, lm.example_inputs, max_block_size=2, solver={"t1": 20}).double()
    blk = ff.analog_blocks["analog2"]
    torch.manual_seed(0)
    x = torch.randn(3, 17, 16, dtype=torch.float64)
    x2 = x.clone()
    x2[:, 5] += torch.randn(3, 16, dtype=torch.float64)
    with torch.no_grad():
        (y,), (y2,), (one,) = blk(x), blk(x2), blk(x[:, 5:6])
    moved = (y - y2).abs().amax(dim=(0, 2))
    assert float(moved[5]) > 1e-3
    assert float(torch.cat([moved[:5], moved[6:]]).max()) == 0.0
    # and the batch of tokens equals relaxing each token alone
    torch.testing.assert_close(one[:, 0], y[:, 5], rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", ["vit", "scratch_encoder"])
def test_single_layer_blocks_are_exact(name: str) -> None:
    model, x = _model_and_input(name)
    r = gradcheck(model, (x,), max_block_size=1, activation="keep", batch=3)
    assert r.forward_max_abs_diff is not None and r.forward_max_abs_diff <= 1e-10
    for p in r.params:
        assert p.cos_ep_autograd is not None and p.cos_ep_autograd >= 0.9999, p
        assert p.cos_ep_id >= 0.9999, p


@pytest.mark.parametrize("name", ["scratch_encoder", "inline_attention"])
def test_mlp_blocks_ep_matches_id_in_float64(name: str) -> None:
    model, x = _model_and_input(name)
    r = gradcheck(model, (x,), max_block_size=2, batch=3)
    assert not r.unconverged()
    mlp_params = [
        p for p in r.params if p.analog and any(w in p.name for pair in MLP_PAIRS[name] for w in pair)
    ]
    assert len(mlp_params) == 4 * len(MLP_PAIRS[name])  # weight and bias of both layers of every MLP
    for p in mlp_params:
        assert p.cos_ep_id >= 0.999, p
        assert p.relerr_id_bptt <= 1e-6, p
