"""The adjoint fast path (hybridc.energy.transpose) against autograd on hand-built synapse graphs.

Every synapse graph is ``forward(x_1..x_m, s_1..s_n) -> (u_1..u_n)``, affine in its arguments; the
reference is Phi = sum_j <s_j, u_j>, g = dPhi/ds and h = dPhi/dx by torch.autograd (float64).
"""

from __future__ import annotations

from unittest import mock

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.fx import GraphModule, symbolic_trace

from hybridc.energy.transpose import TransposeProgram, unsupported_reason
from hybridc.energy.transpose.program import StepCache
from hybridc.errors import UnsupportedOpError

TOL = 1e-10


@pytest.fixture(autouse=True)
def _float64():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    torch.manual_seed(0)
    yield
    torch.set_default_dtype(old)


def _reference(gm, inputs, states):
    xs = [x.detach().clone().requires_grad_(True) for x in inputs]
    ss = [s.detach().clone().requires_grad_(True) for s in states]
    u = gm(*xs, *ss)
    phi = sum((s * uj).sum() for s, uj in zip(ss, u))
    grads = torch.autograd.grad(phi, [*xs, *ss], allow_unused=True)
    h, ds = grads[: len(xs)], grads[len(xs) :]
    g = [d if d is not None else torch.zeros_like(s) for d, s in zip(ds, ss)]
    return list(u), g, list(h)


def _no_autograd(*args, **kwargs):
    raise AssertionError("the fast path must not call autograd")


def check(model, inputs, states):
    """Trace (unless already a GraphModule), run the fast path, compare with autograd."""
    gm = model if isinstance(model, GraphModule) else symbolic_trace(model)
    prog = TransposeProgram(gm, len(inputs))
    with torch.no_grad(), mock.patch.object(torch.autograd, "grad", _no_autograd):
        u, g, h = prog(inputs, states, need_input_feedback=True)
        u2, g2, h2 = prog(inputs, states)
    u_ref, g_ref, h_ref = _reference(gm, inputs, states)
    assert len(u) == len(u_ref) and len(g) == len(states) and len(h) == len(inputs)
    for a, b in zip(u, u_ref):
        assert a.shape == b.shape and (a - b).abs().max() <= TOL
    for a, a2, b in zip(g, g2, g_ref):
        assert a.shape == b.shape and (a - b).abs().max() <= TOL
        assert (a2 - b).abs().max() <= TOL
    for a, b in zip(h, h_ref):
        if b is None:
            assert a is None
        else:
            assert a is not None and a.shape == b.shape and (a - b).abs().max() <= TOL
    assert all(x is None for x in h2)
    for a in (*u, *g):
        assert not a.requires_grad
    check_subsets(prog, inputs, states, g2)
    return prog


def check_subsets(prog, inputs, states, g):
    """`phi_grad_of` gives exactly `phi_grad`'s ∂Φ/∂s_j for the states asked for (each alone, the even and
    the odd ones), None for the others, with and without a step cache (which a second call then serves)."""
    n = len(states)
    subsets = [[j] for j in range(n)] + [list(range(0, n, 2)), list(range(1, n, 2))]
    cache = StepCache()
    with torch.no_grad():
        for wanted in subsets:
            for c in (None, cache, cache):
                got = prog.phi_grad_of(inputs, states, wanted, c)
                for j in range(n):
                    if j in wanted:
                        assert torch.equal(got[j], g[j]), (wanted, j)
                    else:
                        assert got[j] is None


# ---- synapse graphs ------------------------------------------------------------------------------


class MLPChain(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(6, 5), nn.Linear(5, 4), nn.Linear(4, 3)

    def forward(self, x, s1, s2, s3):
        return self.fc1(x), self.fc2(s1), self.fc3(s2)


def test_mlp_chain():
    check(MLPChain(), [torch.randn(4, 6)], [torch.randn(4, 5), torch.randn(4, 4), torch.randn(4, 3)])


class ConvChain(nn.Module):
    """padding / stride / groups, and a residual identity skip: two synapses into s3."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 4, 3, padding=1)
        self.c2 = nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2)
        self.c3 = nn.Conv2d(6, 6, 3, padding=2, dilation=2, groups=3, bias=False)

    def forward(self, x, s1, s2, s3):
        return self.c1(x), self.c2(s1), self.c3(s2) + s2


def test_conv_chain_residual():
    check(
        ConvChain(),
        [torch.randn(2, 3, 9, 9)],
        [torch.randn(2, 4, 9, 9), torch.randn(2, 6, 5, 5), torch.randn(2, 6, 5, 5)],
    )


class ConvPoolConv(nn.Module):
    """conv -> max-pool (2/2 module, and overlapping 3/2 functional) -> conv."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(2, 3, 3, padding=1)
        self.pool = nn.MaxPool2d(2, 2)
        self.c2 = nn.Conv2d(3, 4, 3, padding=1)
        self.c3 = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x, s1, s2, s3):
        return self.c1(x), self.c2(self.pool(s1)), self.c3(F.max_pool2d(s1, 3, stride=2, padding=1))


def _conv_pool_data():
    return [torch.randn(2, 2, 8, 8)], [
        torch.randn(2, 3, 8, 8),
        torch.randn(2, 4, 4, 4),
        torch.randn(2, 4, 4, 4),
    ]


def test_conv_maxpool_conv():
    check(ConvPoolConv(), *_conv_pool_data())


def test_conv_maxpool_conv_channels_last():
    """The same graph with channels-last weights, inputs and states (how conv blocks that max-pool a state
    relax): the pool's transpose scatters in NHWC memory and gives the layout-independent values."""
    model = ConvPoolConv().to(memory_format=torch.channels_last)
    inputs, states = _conv_pool_data()
    cl = (
        [t.contiguous(memory_format=torch.channels_last) for t in inputs],
        [t.contiguous(memory_format=torch.channels_last) for t in states],
    )
    prog = check(model, *cl)
    with torch.no_grad():
        g = prog.phi_grad(*cl)
    assert all(t.is_contiguous(memory_format=torch.channels_last) for t in g)


def test_maxpool_overlapping_windows_accumulate():
    # a constant-per-window input makes the same arg-max win several overlapping windows
    class M(nn.Module):
        def forward(self, s1, s2):
            return s1 * 0.0, F.max_pool2d(s1, 3, 1)

    s1 = torch.zeros(1, 1, 4, 4)
    s1[0, 0, 1, 1] = 5.0
    check(M(), [], [s1, torch.randn(1, 1, 2, 2)])


class MaxPoolVariants(nn.Module):
    """return_indices=True (values taken by getitem), dilation + ceil_mode, adaptive max pooling."""

    def __init__(self):
        super().__init__()
        self.pool = nn.MaxPool2d(3, 2, padding=1, return_indices=True)
        self.adaptive = nn.AdaptiveMaxPool2d((2, 3))

    def forward(self, s1, s2):
        values, _ = self.pool(s1)
        dilated = F.max_pool2d(s1, 2, stride=2, dilation=2, ceil_mode=True)
        u2 = (
            values[:, :, :2, :3]
            + dilated[:, :, :2, :3]
            + self.adaptive(s1)
            + F.adaptive_max_pool2d(s1, (2, 3))
        )
        return s1 * 0.5, u2


def test_maxpool_variants():
    check(MaxPoolVariants(), [], [torch.randn(2, 3, 7, 6), torch.randn(2, 3, 2, 3)])


class Pools(nn.Module):
    def __init__(self):
        super().__init__()
        self.avg = nn.AvgPool2d(2)
        self.adaptive = nn.AdaptiveAvgPool2d((3, 2))
        self.fc = nn.Linear(4 * 3 * 3, 5)

    def forward(self, x, s1, s2, s3, s4):
        u2 = (
            self.avg(s1)
            + 0.5 * F.avg_pool2d(s1, 3, 3, 1, count_include_pad=False)
            - F.avg_pool2d(s1, 3, 2, 0, ceil_mode=True)
        )
        u3 = self.adaptive(s1)
        u4 = self.fc(torch.flatten(F.adaptive_avg_pool2d(s2, 3), 1)) + F.avg_pool2d(
            s3, 3, 1, 1, divisor_override=5
        ).mean(dim=(1, 2, 3)).unsqueeze(1)
        return x * 2.0, u2, u3, u4


def test_avg_and_adaptive_pools_flatten_linear():
    check(
        Pools(),
        [torch.randn(2, 4, 7, 5)],
        [torch.randn(2, 4, 7, 5), torch.randn(2, 4, 3, 2), torch.randn(2, 4, 3, 2), torch.randn(2, 5)],
    )


class OneD(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv1d(2, 3, 4, stride=3, padding=2)
        self.c2 = nn.Conv1d(3, 3, 3, padding=1)

    def forward(self, x, s1, s2):
        pooled = nn.functional.max_pool1d(s1, 3, 2, 1) + F.avg_pool1d(s1, 2, 2, ceil_mode=True)
        return self.c1(x), self.c2(pooled) + F.adaptive_avg_pool1d(s1, 3)


def test_one_dimensional_conv_and_pools():
    check(OneD(), [torch.randn(2, 2, 12)], [torch.randn(2, 3, 5), torch.randn(2, 3, 3)])


class TokenWise(nn.Module):
    """Linear on (B, T, D) states, transpose/permute, cat, mean over tokens."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Linear(3, 4)
        self.mix = nn.Linear(5, 5)  # mixes tokens (T = 5)
        self.cat = nn.Linear(8, 4)
        self.head = nn.Linear(4, 2)

    def forward(self, x, s1, s2, s3):
        u1 = self.emb(x)
        tok = self.mix(s1.transpose(1, 2)).permute(0, 2, 1)
        u2 = self.cat(torch.cat([s1, tok], dim=-1)) - s1 / 4
        u3 = self.head(s2.mean(dim=1)) + self.head(s1).mean(1)
        return u1, u2, u3


def test_tokenwise_linear_transpose_permute_cat_mean():
    check(
        TokenWise(), [torch.randn(2, 5, 3)], [torch.randn(2, 5, 4), torch.randn(2, 5, 4), torch.randn(2, 2)]
    )


class Functional(nn.Module):
    """Raw parameters: ``x @ w.t() + b``, scalar products, a cat of constants and states."""

    def __init__(self):
        super().__init__()
        self.w1 = nn.Parameter(torch.randn(4, 3))
        self.b1 = nn.Parameter(torch.randn(4))
        self.w2 = nn.Parameter(torch.randn(4, 2))
        self.scale = nn.Parameter(torch.randn(2))

    def forward(self, x, s1, s2):
        u1 = x @ self.w1.t() + self.b1
        u2 = 3.0 * (s1 @ self.w2) - s1[:, :2] * self.scale + torch.matmul(s1, self.w2).neg() / 2
        return u1, u2


def test_functional_raw_parameters_and_scalars():
    check(Functional(), [torch.randn(5, 3)], [torch.randn(5, 4), torch.randn(5, 2)])


class Misc(nn.Module):
    """Reshapes, views through size queries, expand, stack, movedim, advanced indexing, dropout."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(12, 6)
        self.drop = nn.Dropout(0.3)
        self.register_buffer("idx", torch.tensor([0, 2, 2, 1]))

    def forward(self, x, s1, s2, s3):
        flat = s1.view(s1.size(0), -1)
        u2 = self.fc(self.drop(flat)).reshape(s1.shape[0], 2, 3) + s2.sum(dim=-1, keepdim=True).expand(
            -1, 2, 3
        )
        u3 = torch.stack([s2[:, 0], s2[:, 1].movedim(1, 0).t()], dim=1)[:, :, self.idx]
        u1 = x.unsqueeze(1).squeeze(1)
        return u1, u2, u3


def test_reshape_expand_stack_index_dropout_eval():
    model = Misc().eval()
    check(model, [torch.randn(2, 3, 4)], [torch.randn(2, 3, 4), torch.randn(2, 2, 3), torch.randn(2, 2, 4)])


class Unusual(nn.Module):
    """'same' padding with an even kernel (asymmetric), transposed conv, unused input."""

    def __init__(self):
        super().__init__()
        self.same = nn.Conv2d(2, 2, 4, padding="same", bias=False)
        self.up = nn.ConvTranspose2d(2, 3, 3, stride=2, padding=1, output_padding=1)

    def forward(self, x, unused, s1, s2):
        return self.same(x), self.up(s1)


def test_same_padding_transposed_conv_unused_input():
    check(
        Unusual(),
        [torch.randn(2, 2, 6, 5), torch.randn(3)],
        [torch.randn(2, 2, 6, 5), torch.randn(2, 3, 12, 10)],
    )


# ---- torch.export graphs (ATen ops, a dead _guards_fn node) -------------------------------------


def _exported(model, inputs, states, decompose=False):
    ep = torch.export.export(model, (*inputs, *states), strict=False)
    if decompose:
        ep = ep.run_decompositions()
    return ep.module()


@pytest.mark.parametrize("decompose", [False, True])
def test_exported_conv_pool_graph(decompose):
    inputs, states = _conv_pool_data()
    gm = _exported(ConvPoolConv(), inputs, states, decompose)
    assert any(isinstance(n.target, torch._ops.OpOverload) for n in gm.graph.nodes)
    check(gm, inputs, states)


@pytest.mark.parametrize("decompose", [False, True])
def test_exported_functional_and_tokenwise(decompose):
    inputs, states = [torch.randn(5, 3)], [torch.randn(5, 4), torch.randn(5, 2)]
    check(_exported(Functional(), inputs, states, decompose), inputs, states)
    inputs, states = [torch.randn(2, 5, 3)], [torch.randn(2, 5, 4), torch.randn(2, 5, 4), torch.randn(2, 2)]
    check(_exported(TokenWise(), inputs, states, decompose), inputs, states)
    inputs = [torch.randn(2, 4, 7, 5)]
    states = [torch.randn(2, 4, 7, 5), torch.randn(2, 4, 3, 2), torch.randn(2, 4, 3, 2), torch.randn(2, 5)]
    check(_exported(Pools(), inputs, states, decompose), inputs, states)


# ---- unsupported graphs --------------------------------------------------------------------------


class Sine(nn.Module):
    def forward(self, x, s1):
        return (torch.sin(s1) + x,)


class PoolIndices(nn.Module):
    def forward(self, s1):
        return (F.max_pool2d(s1, 1, return_indices=True)[1].to(s1.dtype),)


class Product(nn.Module):
    def forward(self, x, s1, s2):
        return x + s1, s1 * s2


@pytest.mark.parametrize(
    "model, n_inputs, node_name, words",
    [
        (Sine(), 1, "sin", "torch.sin"),
        (Product(), 1, "mul", "not affine"),
        (PoolIndices(), 0, "getitem", "values (item 0)"),
    ],
)
def test_unsupported_ops_raise_naming_the_node(model, n_inputs, node_name, words):
    gm = symbolic_trace(model)
    with pytest.raises(UnsupportedOpError) as info:
        TransposeProgram(gm, n_inputs)
    assert f"'{node_name}'" in str(info.value) and words in str(info.value)
    assert unsupported_reason(gm, n_inputs) == str(info.value)


def test_supported_graph_has_no_reason():
    assert unsupported_reason(symbolic_trace(MLPChain()), 1) is None


def test_weight_dependent_on_state_is_rejected():
    class M(nn.Module):
        def forward(self, s1):
            return (F.linear(s1, s1),)

    with pytest.raises(UnsupportedOpError, match="weight"):
        TransposeProgram(symbolic_trace(M()), 0)


# ---- differentiability ---------------------------------------------------------------------------


@pytest.mark.parametrize("model_fn", [ConvPoolConv, Pools, Functional])
def test_fast_path_is_differentiable_like_double_backward(model_fn):
    model = model_fn()
    if model_fn is ConvPoolConv:
        inputs, states = _conv_pool_data()
    elif model_fn is Pools:
        inputs = [torch.randn(2, 4, 7, 5)]
        states = [
            torch.randn(2, 4, 7, 5),
            torch.randn(2, 4, 3, 2),
            torch.randn(2, 4, 3, 2),
            torch.randn(2, 5),
        ]
    else:
        inputs, states = [torch.randn(5, 3)], [torch.randn(5, 4), torch.randn(5, 2)]
    gm = symbolic_trace(model)
    params = list(gm.parameters())
    r = [torch.randn_like(s) for s in states]

    xs = [x.clone().requires_grad_(True) for x in inputs]
    ss = [s.clone().requires_grad_(True) for s in states]
    with torch.enable_grad():
        g = TransposeProgram(gm, len(inputs)).phi_grad(xs, ss)
        loss = sum((gk * rk).sum() for gk, rk in zip(g, r))
        fast = torch.autograd.grad(loss, [*params, *xs, *ss], allow_unused=True)

    xs2 = [x.clone().requires_grad_(True) for x in inputs]
    ss2 = [s.clone().requires_grad_(True) for s in states]
    u = gm(*xs2, *ss2)
    phi = sum((s * uj).sum() for s, uj in zip(ss2, u))
    g_ref = torch.autograd.grad(phi, ss2, create_graph=True)
    loss_ref = sum((gk * rk).sum() for gk, rk in zip(g_ref, r))
    ref = torch.autograd.grad(loss_ref, [*params, *xs2, *ss2], allow_unused=True)

    for a, b in zip(fast, ref):
        if a is None or b is None:
            assert (a is None or a.abs().max() == 0) and (b is None or b.abs().max() == 0)
        else:
            assert (a - b).abs().max() <= TOL
