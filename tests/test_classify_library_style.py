"""Classification of constructs as timm and Hugging Face write them: modules are classified by what they
compute (not by what they inherit), activations written out of element-wise ops are activations, plans do
not depend on PYTHONHASHSEED, and the cycle split always succeeds.

The models below reproduce timm / transformers code (timm does not import on this machine's torch)."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import hybridc.api as hc
from hybridc.passes.classify import classify
from hybridc.passes.tracer import stock_class

from .fixtures.levit_style import TinyLevit

# ---- timm-style layers --------------------------------------------------------------------------------


class BNAct(nn.BatchNorm1d):
    """The minimal case of issue 11: a BatchNorm subclass that also applies the activation."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(super().forward(x))


class BatchNormAct2d(nn.BatchNorm2d):
    """timm.layers.norm_act.BatchNormAct2d: batch norm, then drop, then the activation, in one module."""

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float = 0.1,
        apply_act: bool = True,
        act_layer: type[nn.Module] = nn.ReLU,
        inplace: bool = True,
    ) -> None:
        super().__init__(num_features, eps=eps, momentum=momentum)
        self.drop = nn.Identity()
        self.act = act_layer(inplace=inplace) if apply_act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.momentum is None:
            exponential_average_factor = 0.0
        else:
            exponential_average_factor = self.momentum
        if self.training:
            bn_training = True
        else:
            bn_training = (self.running_mean is None) and (self.running_var is None)
        x = F.batch_norm(
            x,
            self.running_mean if not self.training or self.track_running_stats else None,
            self.running_var if not self.training or self.track_running_stats else None,
            self.weight,
            self.bias,
            bn_training,
            exponential_average_factor,
            self.eps,
        )
        x = self.drop(x)
        x = self.act(x)
        return x


class ConvNormAct(nn.Module):
    """timm.layers.conv_bn_act.ConvNormAct."""

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        kernel_size: int = 1,
        stride: int = 1,
        groups: int = 1,
        apply_act: bool = True,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(
            in_chs, out_chs, kernel_size, stride, padding=kernel_size // 2, groups=groups, bias=False
        )
        self.bn = BatchNormAct2d(out_chs, apply_act=apply_act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))


class Bottleneck(nn.Module):
    """timm.models.regnet.Bottleneck (RegNetX): 1x1 -> grouped 3x3 -> 1x1 (no act), residual, act."""

    def __init__(self, chs: int, group_size: int = 4) -> None:
        super().__init__()
        self.conv1 = ConvNormAct(chs, chs, 1)
        self.conv2 = ConvNormAct(chs, chs, 3, groups=chs // group_size)
        self.conv3 = ConvNormAct(chs, chs, 1, apply_act=False)
        self.act3 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.conv3(self.conv2(self.conv1(x)))
        return self.act3(x + shortcut)


class TinyRegNet(nn.Module):
    def __init__(self, chs: int = 8, classes: int = 5) -> None:
        super().__init__()
        self.stem = ConvNormAct(3, chs, 3, stride=2)
        self.s1 = nn.Sequential(Bottleneck(chs), Bottleneck(chs))
        self.head = nn.Linear(chs, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.s1(self.stem(x)).mean((2, 3)))


class Linear(nn.Linear):
    """timm.layers.linear.Linear: casts weights under torchscript, otherwise F.linear."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:  # noqa: A002 - timm's signature
        if torch.jit.is_scripting():
            bias = self.bias.to(dtype=input.dtype) if self.bias is not None else None
            return F.linear(input, self.weight.to(dtype=input.dtype), bias=bias)
        return F.linear(input, self.weight, self.bias)


class LayerNorm2d(nn.LayerNorm):
    """timm.layers.norm.LayerNorm2d: LayerNorm over the channels of an NCHW tensor."""

    def __init__(self, num_channels: int, eps: float = 1e-6, affine: bool = True) -> None:
        super().__init__(num_channels, eps=eps, elementwise_affine=affine)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        x = x.permute(0, 3, 1, 2)
        return x


def get_same_padding(x: int, kernel_size: int, stride: int, dilation: int) -> int:
    return max((math.ceil(x / stride) - 1) * stride + (kernel_size - 1) * dilation + 1 - x, 0)


def pad_same(
    x: torch.Tensor, kernel_size: list[int], stride: list[int], dilation: list[int] = (1, 1), value: float = 0
) -> torch.Tensor:
    ih, iw = x.size()[-2:]
    pad_h = get_same_padding(ih, kernel_size[0], stride[0], dilation[0])
    pad_w = get_same_padding(iw, kernel_size[1], stride[1], dilation[1])
    return F.pad(x, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2), value=value)


class Conv2dSame(nn.Conv2d):
    """timm.layers.conv2d_same.Conv2dSame: TensorFlow 'SAME' padding, then an unpadded convolution."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, 0, 1, 1, True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = pad_same(x, self.weight.shape[-2:], self.stride, self.dilation)
        return F.conv2d(x, self.weight, self.bias, self.stride, (0, 0), self.dilation, self.groups)


class ConvNeXtish(nn.Module):
    """Conv2dSame stem, LayerNorm2d, timm Linear head: every layer a subclass with its own forward."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = Conv2dSame(3, 8, 3, stride=2)
        self.norm = LayerNorm2d(8)
        self.conv = Conv2dSame(8, 8, 3)
        self.act = nn.GELU()
        self.head = Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(self.norm(self.stem(x)))
        return self.head(self.act(x).mean((2, 3)))


# ---- Hugging Face-style layers ----------------------------------------------------------------------


class NewGELUActivation(nn.Module):
    """transformers.activations.NewGELUActivation (GPT-2's gelu_new)."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:  # noqa: A002
        return (
            0.5
            * input
            * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (input + 0.044715 * torch.pow(input, 3.0))))
        )


class GELUActivation(nn.Module):
    """transformers.activations.GELUActivation written out with erf (as older code does)."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:  # noqa: A002
        return input * 0.5 * (1.0 + torch.erf(input / math.sqrt(2.0)))


class QuickGELUActivation(nn.Module):
    def forward(self, input: torch.Tensor) -> torch.Tensor:  # noqa: A002
        return input * torch.sigmoid(1.702 * input)


class SiLUActivation(nn.Module):
    def forward(self, input: torch.Tensor) -> torch.Tensor:  # noqa: A002
        return input * torch.sigmoid(input)


class Conv1D(nn.Module):
    """transformers.pytorch_utils.Conv1D: a Linear with transposed weights, as GPT-2 writes it."""

    def __init__(self, nf: int, nx: int) -> None:
        super().__init__()
        self.nf = nf
        self.weight = nn.Parameter(torch.empty(nx, nf))
        self.bias = nn.Parameter(torch.zeros(nf))
        nn.init.normal_(self.weight, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size_out = x.size()[:-1] + (self.nf,)
        x = torch.addmm(self.bias, x.view(-1, x.size(-1)), self.weight)
        return x.view(size_out)


class GPT2MLP(nn.Module):
    def __init__(
        self, intermediate_size: int, embed_dim: int, act: type[nn.Module] = NewGELUActivation
    ) -> None:
        super().__init__()
        self.c_fc = Conv1D(intermediate_size, embed_dim)
        self.c_proj = Conv1D(embed_dim, intermediate_size)
        self.act = act()
        self.dropout = nn.Dropout(0.1)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        hidden_states = self.c_fc(hidden_states)
        hidden_states = self.act(hidden_states)
        hidden_states = self.c_proj(hidden_states)
        return self.dropout(hidden_states)


class GPT2BlockMLP(nn.Module):
    """The MLP half of a GPT-2 block: ln_2 -> MLP -> residual."""

    def __init__(self, dim: int = 8, act: type[nn.Module] = NewGELUActivation) -> None:
        super().__init__()
        self.ln_2 = nn.LayerNorm(dim)
        self.mlp = GPT2MLP(4 * dim, dim, act)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return hidden_states + self.mlp(self.ln_2(hidden_states))


class TiedLM(nn.Module):
    """An HF-style causal LM head: lm_head shares the token embedding's weight (tie_word_embeddings)."""

    def __init__(self, vocab: int = 20, dim: int = 8) -> None:
        super().__init__()
        self.wte = nn.Embedding(vocab, dim)
        self.fc = nn.Linear(dim, dim)
        self.act = nn.ReLU()
        self.lm_head = nn.Linear(dim, vocab, bias=False)
        self.lm_head.weight = self.wte.weight

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.lm_head(self.act(self.fc(self.wte(input_ids))))


# ---- helpers ---------------------------------------------------------------------------------------------


def _info_by_name(model: nn.Module, x: torch.Tensor) -> dict:
    gm = hc.trace(model, x).gm
    return {n.name: i for n, i in classify(gm).items()}


def _node_values(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """The value of every node of the traced graph on `x`, by node name."""
    values: dict[str, torch.Tensor] = {}

    class Rec(torch.fx.Interpreter):
        def run_node(self, n: torch.fx.Node):  # noqa: ANN202
            values[n.name] = out = super().run_node(n)
            return out

    with torch.no_grad():
        Rec(hc.trace(model, x).gm).run(x)
    return values


def _compile(model: nn.Module, x: torch.Tensor, **kw: object):  # noqa: ANN202
    """Compile with the feedback guard off: these tests check what classification builds, and the plain
    blocks it builds must reach equilibrium by themselves."""
    return hc.compile(model, x, feedback_gain=0, **kw)


def _relax(ff, x: torch.Tensor) -> dict[str, float]:
    with torch.no_grad():
        out = ff(x)
    assert torch.isfinite(out).all()
    return ff.equilibrium_residuals()


# ---- 1. classify what a module computes -------------------------------------------------------------------


def test_stock_class_goes_by_forward_not_inheritance() -> None:
    assert stock_class(nn.BatchNorm2d(3)) is nn.BatchNorm2d
    assert stock_class(nn.Linear(2, 2)) is nn.Linear

    class InitOnly(nn.Linear):  # changes initialisation only: still the stock computation
        def reset_parameters(self) -> None:
            nn.init.zeros_(self.weight)

    assert stock_class(InitOnly(2, 2)) is nn.Linear
    for m in (BNAct(3), BatchNormAct2d(3), Linear(2, 2), LayerNorm2d(3), Conv2dSame(3, 3, 3)):
        assert stock_class(m) is None, type(m).__name__


def test_bn_act_subclass_keeps_its_activation_and_converges() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), BNAct(16), nn.Linear(16, 4))
    x = torch.randn(4, 8)
    plan = hc.partition(model, x, max_block_size=2, norm="entry")
    (block,) = plan.analog_blocks
    assert len(block.weight_layers) == 2
    # the norm is removed, the ReLU is a neuron (was: the whole module removed, identity neurons only)
    assert [str(nr.activation) for nr in block.neurons] == ["hardsigmoid(slope=0.5)", "identity"]
    removed = [d for d in plan.decisions if d.action == "removed"]
    assert [d.reason.split(" ")[0] for d in removed] == ["batch_norm"]
    ff = _compile(model, x, plan=plan)
    assert max(_relax(ff, x).values()) < 1e-3


def test_batchnorm_act2d_regnet_blocks_have_nonlinear_neurons() -> None:
    torch.manual_seed(0)
    model = TinyRegNet()
    x = torch.randn(2, 3, 16, 16)
    info = _info_by_name(model, x)
    assert {i.kind for k, i in info.items() if k.startswith("batch_norm")} == {"norm"}
    assert all(i.kind == "free" for k, i in info.items() if "running_" in k)
    plan = hc.partition(model, x, max_block_size=3)
    acts = [str(nr.activation) for b in plan.analog_blocks for nr in b.neurons]
    assert "hardsigmoid(slope=0.5)" in acts
    # every multi-layer block has a non-linearity between its layers
    for b in plan.analog_blocks:
        if len(b.weight_layers) > 1:
            assert any(nr.activation.kind != "identity" for nr in b.neurons), b.name
    ff = _compile(model, x, plan=plan, solver={"t1": 60})
    assert max(_relax(ff, x).values()) < 1e-2


def test_subclasses_with_own_forward_are_traced_into_exactly() -> None:
    """Conv2dSame (F.pad + F.conv2d), LayerNorm2d (permute + F.layer_norm + permute), timm Linear: the
    functional ops are classified, the compiled model computes the same function (single-layer blocks,
    norms digital, own activations), and the transpose fast path accepts every analog block."""
    torch.manual_seed(0)
    model = ConvNeXtish().eval()
    x = torch.randn(2, 3, 9, 9)
    info = _info_by_name(model, x)
    kinds = {i.key: i.kind for i in info.values()}
    assert kinds["layer_norm"] == "norm" and kinds["pad"] == "linear"
    assert kinds["conv"] == "weight" and kinds["linear"] == "weight"
    plan = hc.partition(model, x, max_block_size=1, norm="split", layer_norm="split", activation="keep")
    assert [b.weight_layers for b in plan.analog_blocks] == [["stem"], ["conv"], ["head"]]
    ff = _compile(model, x, plan=plan)
    with torch.no_grad():
        assert torch.allclose(ff(x), model(x), atol=1e-5)
    assert all(b.fast_reason == "" for b in ff.analog_blocks.values()), [
        b.fast_reason for b in ff.analog_blocks.values()
    ]


class FunctionalNorms(nn.Module):
    """Norms written functionally over parameters/buffers, between Linear/Conv layers."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 4, 3, padding=1)
        self.gn_w = nn.Parameter(torch.ones(4))
        self.gn_b = nn.Parameter(torch.zeros(4))
        self.c2 = nn.Conv2d(4, 4, 3, padding=1)
        self.register_buffer("rm", torch.zeros(4))
        self.register_buffer("rv", torch.ones(4))
        self.w = nn.Parameter(torch.randn(6, 4) * 0.3)
        self.ln_w = nn.Parameter(torch.ones(6))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(F.group_norm(self.c1(x), 2, self.gn_w, self.gn_b))
        x = F.relu(F.batch_norm(self.c2(x), self.rm, self.rv, training=False))
        x = F.instance_norm(x).mean((2, 3))
        return F.layer_norm(F.linear(x, self.w), (6,), self.ln_w)


def test_functional_norms_follow_the_norm_policies() -> None:
    model = FunctionalNorms()
    x = torch.randn(2, 3, 6, 6)
    info = _info_by_name(model, x)
    assert {i.key for i in info.values() if i.kind == "norm"} == {
        "group_norm",
        "batch_norm",
        "instance_norm",
        "layer_norm",
    }
    assert sum(i.kind == "weight" for i in info.values()) == 3  # c1, c2 and F.linear with a parameter
    entry = hc.partition(model, x, max_block_size=4, norm="entry", layer_norm="split")
    assert [b.weight_layers for b in entry.analog_blocks] == [["c1", "c2", "w"]]
    removed = {d.node for d in entry.decisions if d.action == "removed"}
    assert removed == {"group_norm", "batch_norm", "instance_norm"}
    split = hc.partition(model, x, max_block_size=4, norm="split")
    assert [b.weight_layers for b in split.analog_blocks] == [["c1"], ["c2"], ["w"]]
    # synapse: the block's entry norm (after c1, before any neuron) stays in its input synapse, deeper ones go
    synapse = hc.partition(model, x, max_block_size=4, norm="synapse", layer_norm="split")
    assert {d.node for d in synapse.decisions if d.action == "removed"} == {"batch_norm", "instance_norm"}
    assert {d.node for d in synapse.decisions if d.action == "absorbed" and "input synapse" in d.reason} == {
        "group_norm"
    }


# ---- 2. determinism and the cycle split ---------------------------------------------------------------------

_FIXTURES = Path(__file__).parent / "fixtures"


def test_levit_cycles_are_split_and_projections_are_attention() -> None:
    torch.manual_seed(0)
    model = TinyLevit()
    x = torch.randn(2, 3, 16, 16)
    info = _info_by_name(model, x)
    # Linear + BatchNorm1d + reshape_as projections feed the attention core: they are attention
    qkv = [i for k, i in info.items() if k.endswith("attn_qkv_linear")]
    assert len(qkv) == 2 and all(i.attention for i in qkv)
    for n in (2, 4, 8):
        plan = hc.partition(model, x, max_block_size=n)
        assert all(1 <= len(b.weight_layers) <= n for b in plan.analog_blocks)
    splits = [d for d in hc.partition(model, x, max_block_size=8).decisions if d.action == "split"]
    assert splits  # the model has cycles to break


@pytest.mark.slow
def test_plans_do_not_depend_on_pythonhashseed() -> None:
    """Four processes with different hash seeds (about 25 s: each imports torch)."""
    code = (
        "import sys, torch, hybridc.api as hc; sys.path.insert(0, sys.argv[1]); "
        "from levit_style import TinyLevit; torch.manual_seed(0); m = TinyLevit(); "
        "x = torch.randn(2, 3, 16, 16); "
        "print(''.join(hc.partition(m, x, max_block_size=n, attention=a).to_json() "
        "for n in (4, 8) for a in ('digital', 'analog')))"
    )
    procs = []
    for seed in ("0", "1", "2", "12345"):
        env = dict(os.environ, PYTHONHASHSEED=seed, OMP_NUM_THREADS="1")
        procs.append(
            subprocess.Popen(
                [sys.executable, "-c", code, str(_FIXTURES)],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-2000:]
        outs.append(out)
    assert all(o == outs[0] for o in outs)
    assert '"split"' in outs[0]


# ---- 3. composite activations, addmm names, shape ops, ties, zero init ---------------------------------------


@pytest.mark.parametrize(
    ("act", "name"),
    [
        (NewGELUActivation, "gelu (tanh approximation)"),
        (GELUActivation, "computing gelu"),
        (QuickGELUActivation, "quick_gelu"),
        (SiLUActivation, "silu"),
    ],
)
def test_written_out_activations_are_one_neuron(act: type[nn.Module], name: str) -> None:
    torch.manual_seed(0)
    model = GPT2BlockMLP(act=act)
    x = torch.randn(2, 5, 8)
    plan = hc.partition(model, x, max_block_size=2)
    # one analog block of both Conv1D layers (was: two single-layer blocks around a digital product)
    assert [b.weight_layers for b in plan.analog_blocks] == [["mlp.c_fc", "mlp.c_proj"]]
    (block,) = plan.analog_blocks
    hidden = block.neurons[0]
    assert hidden.source is not None and hidden.activation.kind == "hardsigmoid"
    assert any(name in d.reason and d.action == "substituted" for d in plan.decisions)
    # the neuron's pre-activation is the composite's source: c_fc's output
    ff = _compile(model, x, plan=plan)
    blk = ff.analog_blocks[block.name]
    values = _node_values(model, x)
    states = [torch.zeros(2, *nr.shape[1:]) for nr in block.neurons]
    with torch.no_grad():
        pre = blk.synapses(*(values[r.node] for r in block.inputs), *states)[0]
        assert torch.allclose(pre, model.mlp.c_fc(model.ln_2(x)), atol=1e-6)
    assert max(_relax(ff, x).values()) < 1e-3
    # non-monotone: substituted (keep) or refused
    keep = hc.partition(model, x, max_block_size=2, activation="keep")
    assert keep.analog_blocks[0].neurons[0].activation.kind == "relu"
    refused = hc.partition(model, x, max_block_size=2, activation="keep", non_monotone="refuse")
    assert [b.weight_layers for b in refused.analog_blocks] == [["mlp.c_fc"], ["mlp.c_proj"]]
    assert any(d.action == "kept_digital" and "not monotone" in d.reason for d in refused.decisions)


def test_written_out_gelu_keeps_its_function_in_digital_blocks() -> None:
    torch.manual_seed(0)
    model = GPT2BlockMLP().eval()
    x = torch.randn(2, 5, 8)
    ff = _compile(model, x, max_block_size=1, layer_norm="split")
    with torch.no_grad():
        assert torch.allclose(ff(x), model(x), atol=1e-6)


def test_gated_products_stay_digital() -> None:
    """A product of two different values (SwiGLU, squeeze-excite gates) is not an activation."""

    class SwiGLU(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.gate, self.up, self.down = nn.Linear(8, 16), nn.Linear(8, 16), nn.Linear(16, 8)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.down(F.silu(self.gate(x)) * self.up(x))

    info = _info_by_name(SwiGLU(), torch.randn(2, 8))
    assert info["mul"].kind == "digital"


def test_addmm_layers_are_named_by_their_weight() -> None:
    torch.manual_seed(0)
    model = GPT2BlockMLP()
    plan = hc.partition(model, torch.randn(2, 5, 8), max_block_size=1)
    assert [b.weight_layers for b in plan.analog_blocks] == [["mlp.c_fc"], ["mlp.c_proj"]]
    # Conv1D folds batch and tokens around addmm: the blocks take in and hand on (B, T, n) values
    for b in plan.analog_blocks:
        assert [r.shape[:2] for r in b.inputs + b.outputs] == [[2, 5], [2, 5]], b.name


def test_template_reshapes_are_shape_ops() -> None:
    class M(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.a(x)
            h = torch.relu(h.flatten(0, 1)).reshape_as(h).view_as(h).type_as(h)
            return self.b(h.expand_as(h))

    x = torch.randn(2, 3, 4)
    info = _info_by_name(M(), x)
    for k in ("reshape_as", "view_as", "type_as", "expand_as"):
        assert info[k].kind == "linear", k
    plan = hc.partition(M(), x, max_block_size=2)
    assert [b.weight_layers for b in plan.analog_blocks] == [["a", "b"]]
    ff = _compile(M(), x, plan=plan)
    assert next(iter(ff.analog_blocks.values())).fast_reason == ""


def test_tied_lm_head_stays_digital_with_a_reason() -> None:
    model = TiedLM()
    ids = torch.randint(0, 20, (2, 5))
    plan = hc.partition(model, ids, max_block_size=2)
    assert [b.weight_layers for b in plan.analog_blocks] == [["fc"]]
    (d,) = [d for d in plan.decisions if d.node == "lm_head"]
    assert d.action == "kept_digital" and "tied to wte" in d.reason
    ff = _compile(model, ids, plan=plan)
    with torch.no_grad():
        assert ff(ids).shape == (2, 5, 20)


def test_zero_init_residual_bn_and_head_partition_sensibly() -> None:
    class Block(nn.Module):
        """timm ResNet BasicBlock with zero_init_last: the last BN's weight is zero."""

        def __init__(self, c: int = 4) -> None:
            super().__init__()
            self.conv1, self.bn1 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
            self.conv2, self.bn2 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
            nn.init.zeros_(self.bn2.weight)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.relu(x + self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))))

    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), Block(), nn.Flatten(), nn.Linear(4 * 36, 3)
    )
    nn.init.zeros_(model[4].weight)  # zero-init head
    x = torch.randn(2, 3, 6, 6)
    plan = hc.partition(model, x, max_block_size=4)
    assert [len(b.weight_layers) for b in plan.analog_blocks] == [4]
    reasons = {d.node: d.reason for d in plan.decisions if d.action == "removed"}
    assert "zero-init" in reasons["_2_bn2"] and "zero-init" not in reasons["_2_bn1"]
    ff = _compile(model, x, plan=plan)
    assert max(_relax(ff, x).values()) < 1e-3


class ExportedConvNet(nn.Module):
    """Control flow on a shape (fx cannot trace it, torch.export can) and an in-place write into a view
    (functionalized into slice/slice_scatter/copy, and batch norm decomposed into a (values, ...) tuple),
    then zero padding, a channel split and a crop: all linear, so the three convs form one chain."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.bn = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.pad, self.c2 = nn.ZeroPad2d(1), nn.Conv2d(4, 4, 3)
        self.c3 = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] > 100:
            x = x[..., :100]
        h = self.bn(self.c1(x))
        h[:, :2] *= 0.5
        a, b = self.c2(self.pad(F.relu(h))).split(2, dim=1)
        return self.c3(torch.cat([F.relu(a), F.relu(b)], 1)[:, :, 1:])


def test_exported_graph_ops_are_classified_like_their_modules() -> None:
    torch.manual_seed(0)
    model = ExportedConvNet().eval()
    x = torch.randn(2, 3, 6, 6)
    plan = hc.partition(model, x, max_block_size=3)
    assert plan.model.trace == "export"
    assert [b.weight_layers for b in plan.analog_blocks] == [["c1", "c2", "c3"]]
    removed = [d for d in plan.decisions if d.action == "removed"]
    assert len(removed) == 1 and removed[0].reason.startswith("batch_norm")
    assert not [d for d in plan.decisions if d.action in ("split", "kept_digital")]
    ff = _compile(model, x, plan=plan)
    assert max(_relax(ff, x).values()) < 1e-3
    assert [b.fast_reason for b in ff.analog_blocks.values()] == [""]
    exact = _compile(model, x, max_block_size=1, norm="split", activation="keep")
    with torch.no_grad():
        assert torch.allclose(exact(x), model(x), atol=1e-6)


def test_zero_pad_module_and_indexing_are_linear_for_the_fast_path() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.ZeroPad2d((1, 2, 0, 1)), nn.Conv2d(4, 2, 3))
    x = torch.randn(2, 3, 7, 7)
    plan = hc.partition(model, x, max_block_size=2)
    assert [b.weight_layers for b in plan.analog_blocks] == [["0", "3"]]
    ff = _compile(model, x, plan=plan)
    assert next(iter(ff.analog_blocks.values())).fast_reason == ""

    class Head(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = torch.relu(self.a(x))
            return self.b(h[:, 0]) + self.b(h[0:1, 1])  # a token (linear) and a sample pick (not)

    info = _info_by_name(Head(), torch.randn(2, 5, 4))
    assert info["getitem"].kind == "linear" and info["getitem_1"].kind == "digital"


class DenseLayer(nn.Module):
    """timm.models.densenet.DenseLayer: pre-activation BatchNormAct2d before each conv, on the concat of
    every earlier feature map."""

    def __init__(self, in_chs: int, growth_rate: int = 4, bn_size: int = 2) -> None:
        super().__init__()
        self.norm1 = BatchNormAct2d(in_chs)
        self.conv1 = nn.Conv2d(in_chs, bn_size * growth_rate, kernel_size=1, bias=False)
        self.norm2 = BatchNormAct2d(bn_size * growth_rate)
        self.conv2 = nn.Conv2d(bn_size * growth_rate, growth_rate, kernel_size=3, padding=1, bias=False)

    def bottleneck_fn(self, xs: list[torch.Tensor]) -> torch.Tensor:
        return self.conv1(self.norm1(torch.cat(xs, 1)))

    def forward(self, x: list[torch.Tensor]) -> torch.Tensor:
        prev_features = [x] if isinstance(x, torch.Tensor) else x
        return self.conv2(self.norm2(self.bottleneck_fn(prev_features)))


class TinyDenseNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = ConvNormAct(3, 8, 3, stride=2)
        self.layers = nn.ModuleList([DenseLayer(8 + 4 * i) for i in range(2)])
        self.norm = BatchNormAct2d(16)
        self.head = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [self.stem(x)]
        for layer in self.layers:
            features.append(layer(features))
        return self.head(self.norm(torch.cat(features, 1)).mean((2, 3)))


def test_densenet_pre_activation_blocks_keep_their_activations() -> None:
    torch.manual_seed(0)
    model = TinyDenseNet()
    x = torch.randn(2, 3, 8, 8)
    plan = hc.partition(model, x, max_block_size=3)
    multi = [b for b in plan.analog_blocks if len(b.weight_layers) > 1]
    assert multi and all(any(nr.activation.kind != "identity" for nr in b.neurons) for b in multi)
    ff = _compile(model, x, plan=plan)
    assert max(_relax(ff, x).values()) < 1e-2


def test_written_out_hard_swish_with_its_scaling_is_one_activation() -> None:
    """timm's `hard_swish` fallback `x * F.relu6(x + 3.) / 6.` (MobileNetV3): the division belongs to it."""

    class HardSwishMlp(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1, self.fc2 = nn.Linear(6, 12), nn.Linear(12, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.fc1(x)
            return self.fc2(h * F.relu6(h + 3.0) / 6.0)

    plan = hc.partition(HardSwishMlp(), torch.randn(2, 6), max_block_size=2, activation="keep")
    assert [b.weight_layers for b in plan.analog_blocks] == [["fc1", "fc2"]]
    assert any("computing hardswish" in d.reason for d in plan.decisions)
    hidden = plan.analog_blocks[0].neurons[0]
    assert (hidden.node, hidden.source, hidden.activation.kind) == ("truediv", "fc1", "relu")


class PiecesSynapses(nn.Module):
    """A synapse graph over the ops the fast path learned for library models: split (one item unused),
    chunk, unbind, constant padding, ZeroPad2d and the `*_as` templates read from states."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Linear(5, 6), nn.Linear(3, 5), nn.Linear(6, 3)
        self.conv, self.pad = nn.Conv2d(2, 2, 3), nn.ZeroPad2d((1, 1, 2, 0))

    def forward(self, x: torch.Tensor, s1: torch.Tensor, s2: torch.Tensor, s3: torch.Tensor):  # noqa: ANN201
        pieces = s2.split([2, 1, 2], dim=1)
        u1 = self.a(x) + self.a(torch.cat([pieces[2], pieces[0], pieces[2]], 1)[:, :5])
        lo, hi = s1.chunk(2, dim=-1)
        u2 = self.b(F.pad(hi, (0, 0)) + lo) + self.b(s1.unbind(1)[1].unsqueeze(1).expand_as(hi))
        img = F.pad(s3, (1, 1, 1, 1)) + self.pad(s3)[..., :6, :6].reshape_as(F.pad(s3, (1, 1, 1, 1)))
        u3 = self.conv(img).view_as(s3).type_as(s3)
        return u1, u2.view(-1, 5), u3


def test_fast_path_transposes_pieces_pads_and_templates() -> None:
    from .test_adjoint import check

    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        torch.manual_seed(0)
        x, s1, s2, s3 = torch.randn(3, 5), torch.randn(3, 6), torch.randn(3, 5), torch.randn(3, 2, 4, 4)
        check(PiecesSynapses(), [x], [s1, s2, s3])
    finally:
        torch.set_default_dtype(old)
