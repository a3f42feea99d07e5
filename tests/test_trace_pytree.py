"""Models are compiled and called as they are written: keyword inputs, optional arguments folded as
constants, structured outputs (tuples, dicts, dataclasses, transformers' ModelOutput) and assertions.

Regression tests for issue 11 (items 1, 4, 5 and the compiled-forward half of 3).
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from hybridc.api import compile, partition, trace
from hybridc.errors import TraceError
from hybridc.export.exporter import export_ffebm
from hybridc.export.manifest import Manifest
from hybridc.export.verify import verify_export

transformers = pytest.importorskip("transformers")
ModelOutput = transformers.utils.ModelOutput


# --------------------------------------------------------------------------------------------------
# assertions never become blocks
# --------------------------------------------------------------------------------------------------


class AssertedMLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        torch._assert(x.shape[1] == 8, "expected 8 features")
        return self.fc2(self.act(self.fc1(x)))


class PatchEmbed(nn.Module):
    """timm's PatchEmbed: `_assert` on the image size, then a strided conv and flatten."""

    def __init__(self, img_size: int = 8, patch: int = 4, dim: int = 12) -> None:
        super().__init__()
        self.img_size = (img_size, img_size)
        self.proj = nn.Conv2d(3, dim, patch, patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, _, h, w = x.shape
        torch._assert(h == self.img_size[0], f"Input height ({h}) doesn't match model ({self.img_size[0]}).")
        torch._assert(w == self.img_size[1], f"Input width ({w}) doesn't match model ({self.img_size[1]}).")
        return self.proj(x).flatten(2).transpose(1, 2)


def _blocks_have_outputs(ff) -> None:  # noqa: ANN001
    for name in ff.blocks:
        assert ff.io(name)[1], f"block {name} has no outputs"


def test_assertion_is_dropped_and_the_model_exports_and_verifies(tmp_path) -> None:  # noqa: ANN001
    model, x = AssertedMLP(), torch.randn(2, 8)
    traced = trace(model, x)
    assert not any("assert" in str(n.target) for n in traced.gm.graph.nodes)
    plan = partition(model, x)
    assert [b.kind for b in plan.blocks] == ["analog"]
    assert any(d.action == "removed" and "torch._assert" in d.reason for d in plan.decisions)
    ff = compile(model, x)
    _blocks_have_outputs(ff)
    result = export_ffebm(ff, tmp_path / "exp")
    assert result.report is not None and result.report.ok
    assert verify_export(tmp_path / "exp").ok


def test_patch_embed_assertions_make_no_block_with_either_tracer() -> None:
    model = nn.Sequential(PatchEmbed(), nn.Flatten(), nn.Linear(4 * 12, 5))
    x = torch.randn(2, 3, 8, 8)
    ff = compile(model, x, max_block_size=1, activation="keep")
    _blocks_have_outputs(ff)
    with torch.no_grad():
        assert torch.allclose(ff(x), model(x), atol=1e-5)


class Unfxable(nn.Module):
    """Control flow on a shape: fx fails, torch.export captures it (with its own runtime asserts)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(8, 6), nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        torch._assert(x.shape[1] == 8, "expected 8 features")
        h = self.fc1(x)
        if x.shape[0] > 1:
            h = torch.relu(h)
        return self.fc2(h)


def test_export_path_assertions_make_no_block() -> None:
    model, x = Unfxable(), torch.randn(2, 8)
    traced = trace(model, x)
    assert traced.method == "export"
    for n in traced.gm.graph.nodes:
        assert "assert" not in str(n.target) and "constrain_range" not in str(n.target)
    _blocks_have_outputs(compile(model, x, max_block_size=1))


# --------------------------------------------------------------------------------------------------
# optional arguments folded as constants (timm ViT style)
# --------------------------------------------------------------------------------------------------


class SdpaAttention(nn.Module):
    """timm's Attention: qkv projection, F.scaled_dot_product_attention with optional mask / causal flag."""

    def __init__(self, dim: int = 8, heads: int = 2) -> None:
        super().__init__()
        self.heads = heads
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(
        self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False
    ) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal)
        return self.proj(x.transpose(1, 2).reshape(b, n, c))


class TimmBlock(nn.Module):
    def __init__(self, dim: int = 8) -> None:
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim), SdpaAttention(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.fc1, self.act, self.fc2 = nn.Linear(dim, 16), nn.GELU(), nn.Linear(16, dim)

    def forward(
        self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False
    ) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), attn_mask=attn_mask, is_causal=is_causal)
        return x + self.fc2(self.act(self.fc1(self.norm2(x))))


def test_optional_arguments_are_constants_not_inputs(tmp_path) -> None:  # noqa: ANN001
    torch.manual_seed(0)
    model, x = TimmBlock().double(), torch.randn(2, 5, 8, dtype=torch.float64)
    traced = trace(model, x)
    assert [n.name for n in traced.gm.graph.nodes if n.op == "placeholder"] == ["x"]
    ff = compile(model, x, max_block_size=1, activation="keep")
    with torch.no_grad():
        want = model(x)
        for got in (ff(x), ff(x, None), ff(x, attn_mask=None, is_causal=False)):
            assert torch.allclose(got, want, atol=1e-10)
    with pytest.raises(TypeError, match="is_causal=False folded into the graph"):
        ff(x, is_causal=True)
    with pytest.raises(TypeError, match="attn_mask"):
        ff(x, attn_mask=torch.zeros(5, 5, dtype=torch.bool))
    ff_causal = compile(model, (x, None, True), max_block_size=1, activation="keep")
    with torch.no_grad():
        assert torch.allclose(ff_causal(x, is_causal=True), model(x, is_causal=True), atol=1e-10)
    result = export_ffebm(ff.float(), tmp_path / "exp")
    assert result.report is not None and result.report.ok
    assert Manifest.load(tmp_path / "exp").graph_inputs == ["x"]


# --------------------------------------------------------------------------------------------------
# keyword tensors in, ModelOutput / dataclass / dict out (HF style)
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class SequenceClassifierOutput(ModelOutput):
    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


class TinyConfig:
    vocab_size, hidden_size, intermediate_size, num_labels = 20, 8, 16, 3
    use_return_dict = True


class TinyHFClassifier(nn.Module):
    """Config-driven, `attention_mask=None, return_dict=None` keyword API, ModelOutput out."""

    def __init__(self, config: TinyConfig | None = None) -> None:
        super().__init__()
        self.config = config or TinyConfig()
        c = self.config
        self.embeddings = nn.Embedding(c.vocab_size, c.hidden_size)
        self.dense = nn.Linear(c.hidden_size, c.intermediate_size)
        self.output = nn.Linear(c.intermediate_size, c.hidden_size)
        self.classifier = nn.Linear(c.hidden_size, c.num_labels)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        output_hidden_states: bool = False,
        return_dict: bool | None = None,
    ) -> SequenceClassifierOutput | tuple:
        return_dict = return_dict if return_dict is not None else self.config.use_return_dict
        h = self.embeddings(input_ids)
        h = h + self.output(torch.relu(self.dense(h)))
        if attention_mask is not None:
            mask = attention_mask[..., None].to(h.dtype)
            pooled = (h * mask).sum(1) / mask.sum(1).clamp_min(1.0)
        else:
            pooled = h.mean(1)
        logits = self.classifier(pooled)
        hidden = (h,) if output_hidden_states else None
        if not return_dict:
            return (logits, hidden)
        return SequenceClassifierOutput(logits=logits, hidden_states=hidden)


def _tokens(batch: int = 2, length: int = 6) -> dict[str, torch.Tensor]:
    ids = torch.randint(0, TinyConfig.vocab_size, (batch, length))
    mask = torch.ones(batch, length, dtype=torch.long)
    mask[0, -2:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def test_keyword_inputs_and_model_output_come_back_as_the_original(tmp_path) -> None:  # noqa: ANN001
    torch.manual_seed(0)
    model = TinyHFClassifier().double()
    inputs = _tokens()
    traced = trace(model, inputs)
    assert [n.name for n in traced.gm.graph.nodes if n.op == "placeholder"] == ["input_ids", "attention_mask"]
    ff = compile(model, inputs, max_block_size=1, activation="keep")
    with torch.no_grad():
        want, got = model(**inputs), ff(**inputs)
        positional = ff(inputs["input_ids"], inputs["attention_mask"])
    assert type(got) is SequenceClassifierOutput
    assert list(got.keys()) == ["logits"] and got.hidden_states is None and got.loss is None
    assert torch.allclose(got.logits, want.logits, atol=1e-10)
    assert torch.allclose(got[0], positional.logits, atol=1e-10)
    with pytest.raises(TypeError, match="return_dict"):
        ff(**inputs, return_dict=False)
    result = export_ffebm(ff.float(), tmp_path / "exp")
    assert result.report is not None and result.report.ok
    manifest = Manifest.load(tmp_path / "exp")
    assert manifest.graph_inputs == ["input_ids", "attention_mask"]
    assert set(manifest.output_structure) == {"loss", "logits", "hidden_states", "attentions"}
    assert isinstance(manifest.output_structure["logits"], str)


def test_tuple_output_with_none_and_hidden_states() -> None:
    torch.manual_seed(0)
    model = TinyHFClassifier().double()
    inputs = _tokens() | {"output_hidden_states": True, "return_dict": False}
    ff = compile(model, inputs, max_block_size=1, activation="keep")
    call = {k: inputs[k] for k in ("input_ids", "attention_mask")}
    with torch.no_grad():
        want, got = model(**inputs), ff(**call, output_hidden_states=True, return_dict=False)
    assert isinstance(got, tuple) and isinstance(got[1], tuple) and len(got[1]) == 1
    assert torch.allclose(got[0], want[0], atol=1e-10) and torch.allclose(got[1][0], want[1][0], atol=1e-10)


@dataclasses.dataclass
class PlainOutput:
    logits: torch.Tensor
    features: torch.Tensor
    extra: torch.Tensor | None = None
    scale: float = 1.0


class MultiOutput(nn.Module):
    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.fc1, self.fc2 = nn.Linear(4, 6), nn.Linear(6, 2)

    def forward(self, x: torch.Tensor):  # noqa: ANN201
        f = torch.tanh(self.fc1(x))
        y = self.fc2(f)
        if self.kind == "dict":
            return {"logits": y, "features": f, "none": None}
        if self.kind == "dataclass":
            return PlainOutput(logits=y, features=f, scale=math.pi)
        return y, None, [f, y]


@pytest.mark.parametrize("kind", ["dict", "dataclass", "tuple"])
def test_output_structures_are_rebuilt(kind: str) -> None:
    torch.manual_seed(0)
    model, x = MultiOutput(kind).double(), torch.randn(3, 4, dtype=torch.float64)
    ff = compile(model, x, max_block_size=1, activation="keep")
    with torch.no_grad():
        want, got = model(x), ff(x)
    assert type(got) is type(want)
    if kind == "dict":
        assert list(got) == ["logits", "features", "none"] and got["none"] is None
        assert torch.allclose(got["logits"], want["logits"], atol=1e-10)
    elif kind == "dataclass":
        assert got.extra is None and got.scale == math.pi
        assert torch.allclose(got.features, want.features, atol=1e-10)
    else:
        assert got[1] is None and isinstance(got[2], list)
        assert torch.allclose(got[2][1], want[0], atol=1e-10)


# --------------------------------------------------------------------------------------------------
# one clear error line for outputs that hold a cache
# --------------------------------------------------------------------------------------------------


class FakeCache:
    def __init__(self, k: torch.Tensor) -> None:
        self.k = k


class CachingModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor, use_cache: bool = True) -> dict:
        y = self.fc(x)
        return {"last_hidden_state": y, "past_key_values": FakeCache(y) if use_cache else None}


def test_cache_in_output_names_the_field_and_use_cache() -> None:
    x = torch.randn(2, 4)
    with pytest.raises(TraceError) as info:
        trace(CachingModel(), x)
    msg = str(info.value)
    assert "past_key_values" in msg and "use_cache=False" in msg and "test_trace_pytree.py:" in msg
    assert "\n" not in msg
    ff = compile(CachingModel(), {"x": x, "use_cache": False})
    assert ff(x, use_cache=False)["past_key_values"] is None


# --------------------------------------------------------------------------------------------------
# token models run at any sequence length
# --------------------------------------------------------------------------------------------------


class ShapeCheckedTokenModel(TinyHFClassifier):
    """Python control flow on the sequence length (as HF models check their inputs): fx cannot trace it,
    torch.export keeps the length symbolic."""

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs):  # noqa: ANN201
        if input_ids.shape[1] > 64:
            raise ValueError("sequence too long")
        return super().forward(input_ids, attention_mask=attention_mask, **kwargs)


@pytest.mark.parametrize("cls", [TinyHFClassifier, ShapeCheckedTokenModel])
def test_compiled_token_model_runs_at_other_sequence_lengths(cls: type[nn.Module]) -> None:
    torch.manual_seed(0)
    model = cls().double()
    ff = compile(model, _tokens(2, 6), max_block_size=1, activation="keep")
    if cls is ShapeCheckedTokenModel:
        assert trace(model, _tokens(2, 6)).method == "export"
    for batch, length in ((2, 6), (3, 4), (1, 11)):
        inputs = _tokens(batch, length)
        with torch.no_grad():
            got, want = ff(**inputs), model(**inputs)
        assert got.logits.shape == (batch, 3)
        assert torch.allclose(got.logits, want.logits, atol=1e-10), (batch, length)


# --------------------------------------------------------------------------------------------------
# real transformers models (random init, no network)
# --------------------------------------------------------------------------------------------------


def _hf_text(name: str):  # noqa: ANN202
    t = transformers
    small = {"vocab_size": 60}
    if name == "bert":
        cfg = t.BertConfig(
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=48,
            max_position_embeddings=32,
            hidden_act="relu",
            **small,
        )
        return t.BertForSequenceClassification(cfg)
    if name == "gpt2":
        return t.GPT2LMHeadModel(
            t.GPT2Config(n_layer=1, n_embd=32, n_head=2, n_positions=32, activation_function="relu", **small)
        )
    raise KeyError(name)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["bert", "gpt2"])
def test_hf_text_models_compile_run_at_two_lengths_and_export(name: str, tmp_path) -> None:  # noqa: ANN001
    torch.manual_seed(0)
    model = _hf_text(name).eval()
    ids = torch.randint(0, 60, (2, 7))
    example = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if name == "gpt2":
        example["use_cache"] = False
    ff = compile(model, example, max_block_size=1, activation="keep", non_monotone="substitute")
    for length in (7, 4):
        call = {k: (v[:, :length] if isinstance(v, torch.Tensor) else v) for k, v in example.items()}
        with torch.no_grad():
            got, want = ff(**call), model(**call)
        assert type(got) is type(want) and got.logits.shape == want.logits.shape
        assert torch.allclose(got.logits, want.logits, atol=1e-4)  # keep + block size 1: the same function
    result = export_ffebm(ff, tmp_path / "exp")
    assert result.report is not None and result.report.ok


@pytest.mark.slow
def test_gpt2_with_its_cache_is_one_error_line_naming_use_cache() -> None:
    model = _hf_text("gpt2").eval()
    with pytest.raises(TraceError) as info:
        trace(model, {"input_ids": torch.randint(0, 60, (2, 5))})
    msg = str(info.value)
    assert "\n" not in msg and "use_cache=False" in msg and "modeling_gpt2.py:" in msg


class ValueBranch(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc(x)
        if h.sum() > 0:
            return h
        return -h


def test_untraceable_model_is_one_error_line_naming_its_line_and_what_to_do() -> None:
    with pytest.raises(TraceError) as info:
        trace(ValueBranch(), torch.randn(2, 4))
    msg = str(info.value)
    assert "\n" not in msg
    assert "test_trace_pytree.py:" in msg and "if h.sum() > 0" in msg and "torch.where" in msg
