"""Even/odd (async) relaxation at the cost of a synchronous step, and the channels-last layout of conv blocks.

The async sweep computes each half's ∂Φ/∂s only for that half's neurons and reuses, through the phase's
`StepCache`, the ops whose inputs the other half left unchanged: its trajectory must be exactly today's
(full ∂Φ/∂s per half) while every synapse op runs once per sweep. Float64 throughout.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from hybridc.api import compile
from hybridc.energy.dhn import DHNBlock
from hybridc.energy.transpose.program import StepCache
from hybridc.load import load_model


@pytest.fixture(autouse=True)
def _float64():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    torch.manual_seed(0)
    yield
    torch.set_default_dtype(old)


def _compiled(name: str, n: int, device: str = "cpu", **solver):
    kwargs = {"width": 0.0625} if name == "vgg-paper" else {}
    lm = load_model(name, **kwargs)
    ff = compile(
        lm.model.double(),
        [x.double() for x in lm.example_inputs],
        max_block_size=n,
        init="goe",
        solver={"mode": "async", "t1": 10, **solver},
    ).to(device)
    x = torch.randn(3, *lm.example_inputs[0].shape[1:], device=device)
    inputs: dict[str, tuple] = {}
    hooks = [
        b.register_forward_pre_hook(lambda m, a, name=name: inputs.__setitem__(name, a))
        for name, b in ff.blocks.items()
    ]
    ff.eval()(x)
    for h in hooks:
        h.remove()
    blocks = {k: b for k, b in ff.blocks.items() if isinstance(b, DHNBlock)}
    return ff, blocks, inputs


def _full_half_steps(block: DHNBlock, prepared, states, nudge=None):
    """The even/odd sweep as it was: the whole block's ∂Φ/∂s for each half."""
    new = list(states)
    for parity in (0, 1):
        g = block.phi_grad(prepared, new)
        new = [
            block._update(j, g[j], nudge) if block.parity[j] == parity else new[j] for j in range(len(new))
        ]
    return new


def _nudge(block: DHNBlock, states):
    return [torch.randn_like(s) * 0.1 if j in block.output_idx else None for j, s in enumerate(states)]


CUDA = pytest.param(
    "cuda",
    marks=[pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")],
)


@pytest.mark.parametrize("device", ["cpu", CUDA])
@pytest.mark.parametrize(
    ("name", "n", "fast_path"), [("vgg-paper", 3, "auto"), ("mlp", 3, "auto"), ("mlp", 3, "off")]
)
def test_async_trajectory_is_unchanged_bit_for_bit(name, n, fast_path, device):
    """Bit for bit on CPU; on CUDA to 1e-12 (float64), where cuDNN may pick another algorithm per call."""
    _, blocks, inputs = _compiled(name, n, device, fast_path=fast_path)
    assert blocks and any(len(b.neuron_names) > 1 for b in blocks.values())
    for bname, block in blocks.items():
        with torch.no_grad():
            prepared = block.prepare(inputs[bname])
            old = new = block.initial_states(inputs[bname])
            cache = StepCache()
            for t in range(25):
                nudge = _nudge(block, old) if t >= 15 else None  # a nudged phase after the free one
                old = _full_half_steps(block, prepared, old, nudge)
                new = block.step_prepared(prepared, new, nudge, cache=cache)
                for a, b in zip(old, new):
                    if device == "cpu":
                        assert torch.equal(a, b), (bname, t)
                    else:
                        assert torch.allclose(a, b, rtol=0, atol=1e-12), (bname, t)


def _count_calls(block: DHNBlock, kinds: tuple[type, ...]) -> list[int]:
    box = [0]
    for m in block.core.modules():
        if isinstance(m, kinds):
            m.register_forward_hook(lambda *_: box.__setitem__(0, box[0] + 1))
    return box


def test_async_sweep_runs_each_conv_once_like_sync():
    _, blocks, inputs = _compiled("vgg-paper", 3)
    bname, block = next((k, b) for k, b in blocks.items() if len(b.neuron_names) == 3)
    convs = sum(isinstance(m, nn.Conv2d) for m in block.core.modules())
    assert convs >= 2
    calls = _count_calls(block, (nn.Conv2d,))
    steps = 12
    with torch.no_grad():
        prepared = block.prepare(inputs[bname])
        states = block.initial_states(inputs[bname])
        cache = StepCache()
        states = block.step_prepared(prepared, states, cache=cache)  # the first sweep fills the cache
        calls[0] = 0
        for _ in range(steps):
            states = block.step_prepared(prepared, states, cache=cache)
        async_calls = calls[0]
        calls[0] = 0
        for _ in range(steps):
            _full_half_steps(block, prepared, states)
        full_calls = calls[0]
    assert async_calls == steps * convs
    assert full_calls == 2 * steps * convs


def test_cache_is_not_served_for_a_changed_state():
    _, blocks, inputs = _compiled("vgg-paper", 3)
    bname, block = next((k, b) for k, b in blocks.items() if len(b.neuron_names) == 3)
    with torch.no_grad():
        prepared = block.prepare(inputs[bname])
        states = block.initial_states(inputs[bname])
        cache = StepCache()
        for _ in range(3):
            states = block.step_prepared(prepared, states, cache=cache)
        changed = [s.clone() for s in states]  # equal values, new tensors: recomputed, same result
        changed[1] = changed[1] + 0.5  # and one state really different
        got = block.step_prepared(prepared, changed, cache=cache)
        want = _full_half_steps(block, prepared, changed)
        assert all(torch.equal(a, b) for a, b in zip(got, want))
        other_inputs = [p.clone() + 0.1 for p in prepared]  # other inputs: the cache starts over
        got = block.step_prepared(other_inputs, changed, cache=cache)
        want = _full_half_steps(block, other_inputs, changed)
        assert all(torch.equal(a, b) for a, b in zip(got, want))


def test_auto_layout_is_channels_last_for_blocks_that_pool_a_state():
    ff, blocks, inputs = _compiled("vgg-paper", 3)
    pooled = [b for b in blocks.values() if b.channels_last]
    assert pooled and any(not b.channels_last for b in blocks.values())
    for block in pooled:
        assert all(
            p.is_contiguous(memory_format=torch.channels_last) for p in block.parameters() if p.dim() == 4
        )
    bname, block = next((k, b) for k, b in blocks.items() if b.channels_last)
    states = block.initial_states(inputs[bname])
    assert all(s.is_contiguous(memory_format=torch.channels_last) for s in states if s.dim() == 4)
    with torch.no_grad():
        out = block.relax(inputs[bname], states, 5, "free")
    assert all(s.is_contiguous(memory_format=torch.channels_last) for s in out if s.dim() == 4)


@pytest.mark.parametrize("device", ["cpu", CUDA])
def test_layouts_give_the_same_relaxation_and_gradients(device):
    """Channels-last is a memory layout, not a different model: same states and EP gradients (float64)."""
    results = {}
    for layout in ("channels_last", "contiguous"):
        torch.manual_seed(0)
        ff, blocks, _ = _compiled("vgg-paper", 3, device, layout=layout)
        params = {k: p for k, p in ff.named_parameters()}
        ff.train()
        x = torch.randn(4, 3, 32, 32, device=device)
        y = torch.randint(0, 10, (4,), device=device)
        loss = nn.functional.cross_entropy(ff(x), y)
        loss.backward()
        assert all(p is params[k] for k, p in ff.named_parameters())  # the layout kept the objects
        results[layout] = (
            loss.detach(),
            {k: p.grad.clone() for k, p in params.items() if p.grad is not None},
        )
    (l1, g1), (l2, g2) = results.values()
    assert torch.allclose(l1, l2, rtol=0, atol=1e-12)
    assert g1.keys() == g2.keys()
    for k in g1:
        assert torch.allclose(g1[k], g2[k], rtol=1e-9, atol=1e-12), k


def test_a_block_relaxes_in_its_own_layout_whatever_its_inputs_arrive_in():
    """A channels-last block upstream makes the digital ops after it channels-last; the next block, NCHW by
    choice, must not relax in the layout it was handed (its convs would convert on every call)."""
    _, blocks, inputs = _compiled("vgg-paper", 3)
    for bname, block in blocks.items():
        fmt = torch.channels_last if block.channels_last else torch.contiguous_format
        other = torch.contiguous_format if block.channels_last else torch.channels_last
        handed = [x.contiguous(memory_format=other) if x.dim() == 4 else x for x in inputs[bname]]
        with torch.no_grad():
            prepared = block.prepare(handed)
            out = block.relax(handed, block.initial_states(handed), 3, "free")
        for t in [*prepared, *out]:
            if t.dim() == 4 and min(t.shape[1], t.shape[2] * t.shape[3]) > 1:
                assert t.is_contiguous(memory_format=fmt), (bname, t.shape, t.stride())
