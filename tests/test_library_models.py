"""Library models end to end: the timm:/hf: loader, timm- and Hugging-Face-style models (tests/fixtures/
library_style.py) and tiny real transformers models through partition, compile, equilibrium, EP vs ID and
export."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch.utils import _pytree as pytree

from hybridc.api import compile as hc_compile
from hybridc.api import partition, trace
from hybridc.errors import ModelLoadError
from hybridc.load import load_model
from hybridc.load_library import parse_library_spec, parse_value
from hybridc.passes.classify import classify
from tests.fixtures import library_style as L

transformers = pytest.importorskip("transformers")

TIGHT = {"tol": 1e-7, "max_steps": 3000, "check_every": 10}

BERT = (
    "hf:bert,vocab_size=64,hidden_size=16,num_hidden_layers=1,num_attention_heads=2,intermediate_size=32,"
    "max_position_embeddings=16"
)
GPT2 = (
    "hf:gpt2,vocab_size=64,n_embd=16,n_layer=1,n_head=2,n_positions=16,use_cache=False,bos_token_id=0,"
    "eos_token_id=0"
)
VIT = (
    "hf:vit,image_size=16,patch_size=8,hidden_size=16,num_hidden_layers=1,num_attention_heads=2,"
    "intermediate_size=32,num_labels=4"
)


# ------------------------------------------------------------------------------------------------ loader


def test_spec_values_and_lists() -> None:
    s = parse_library_spec(
        "hf:swin,depths=[1,2],num_heads=(1,2),hidden_act=gelu,qkv_bias=false,eps=1e-5,x=None"
    )
    assert s.library == "hf" and s.name == "swin"
    assert s.kwargs == {
        "depths": [1, 2],
        "num_heads": (1, 2),
        "hidden_act": "gelu",
        "qkv_bias": False,
        "eps": 1e-5,
        "x": None,
    }
    assert parse_value("64") == 64 and parse_value("True") is True and parse_value("0.5") == 0.5


def test_hf_text_model_gets_token_ids_within_vocab() -> None:
    lm = load_model(BERT)
    assert type(lm.model).__name__ == "BertForSequenceClassification"
    (ids,) = lm.example_inputs
    assert ids.dtype == torch.long and ids.shape == (2, 8) and 0 <= int(ids.min()) and int(ids.max()) < 64
    assert lm.model.config.hidden_size == 16 and lm.model.config.num_hidden_layers == 1
    assert load_model(BERT, "5").example_inputs[0].shape == (2, 5)  # --input-shape: the sequence length
    gpt = load_model(GPT2).model
    assert type(gpt).__name__ == "GPT2LMHeadModel" and gpt.config.use_cache is False


def test_hf_vision_model_gets_pixels_from_its_config() -> None:
    lm = load_model(VIT)
    assert type(lm.model).__name__ == "ViTForImageClassification"
    assert lm.example_inputs[0].shape == (2, 3, 16, 16) and lm.example_inputs[0].is_floating_point()
    lm = load_model(VIT.replace("image_size=16,", ""), "3,24,24")  # --input-shape sets image_size too
    assert lm.model.config.image_size == 24 and lm.example_inputs[0].shape == (2, 3, 24, 24)
    lm.model.eval()(*lm.example_inputs)


def test_hf_config_class_model_class_and_task() -> None:
    assert (
        type(load_model(BERT.replace("hf:bert", "hf:BertConfig")).model).__name__
        == "BertForSequenceClassification"
    )
    assert type(load_model(BERT + ",task=base").model).__name__ == "BertModel"
    t5 = load_model("hf:T5EncoderModel,vocab_size=64,d_model=16,d_ff=32,d_kv=8,num_layers=1,num_heads=2")
    assert type(t5.model).__name__ == "T5EncoderModel"


@pytest.mark.parametrize(
    "spec, words",
    [
        ("hf:no_such_model", "no model type"),
        ("hf:bert,hidden_sz=4", "no field 'hidden_sz'"),
        ("hf:bert,hidden_size", "not a key=value"),
        ("hf:vit,task=causal-lm", "has no causal-lm model"),
        ("hf:", "names no model"),
    ],
)
def test_hf_errors_are_one_line(spec: str, words: str) -> None:
    with pytest.raises(ModelLoadError, match=words) as info:
        load_model(spec)
    assert "\n" not in str(info.value)


def test_timm_error_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "timm", None)  # import timm -> ImportError, as where it is missing
    with pytest.raises(ModelLoadError, match="timm") as info:
        load_model("timm:resnet18,img_size=32")
    assert "\n" not in str(info.value) and "hf:" in str(info.value)


@pytest.mark.slow  # two interpreter starts importing transformers
def test_cli_accepts_hf_spec() -> None:
    r = subprocess.run(
        [sys.executable, "-m", "hybridc", "partition", BERT, "--format", "json"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    assert '"analog"' in r.stdout
    r = subprocess.run(
        [sys.executable, "-m", "hybridc", "partition", "hf:bert,hidden_sz=4"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 2 and "no field 'hidden_sz'" in r.stderr and "Traceback" not in r.stderr


# ----------------------------------------------------------------------------------------------- helpers


def _leaves(out: Any) -> list[Any]:
    if dataclasses.is_dataclass(out) and type(out) not in pytree.SUPPORTED_NODES:
        return [v for f in dataclasses.fields(out) for v in _leaves(getattr(out, f.name))]
    return pytree.tree_leaves(out)


def _structure(out: Any) -> tuple[str, list[tuple[int, ...]]]:
    return type(out).__name__, [tuple(t.shape) for t in _leaves(out) if isinstance(t, torch.Tensor)]


def _first(out: Any) -> torch.Tensor:
    return next(t for t in _leaves(out) if isinstance(t, torch.Tensor))


def _weights_outside_attention(model: torch.nn.Module, example: tuple[torch.Tensor, ...]) -> int:
    info = classify(trace(model, example).gm)
    return sum(1 for i in info.values() if i.kind == "weight" and not i.attention)


def _fixture(name: str) -> tuple[torch.nn.Module, tuple[torch.Tensor, ...]]:
    torch.manual_seed(0)
    return getattr(L, name)().eval(), L.EXAMPLES[name]()


def _loss(out: torch.Tensor, gen: torch.Generator) -> Any:
    if out.dim() == 2:
        labels = torch.randint(0, out.shape[1], (out.shape[0],), generator=gen)
        return lambda o: F.cross_entropy(o, labels)
    labels = torch.randint(0, out.shape[-1], out.shape[:-1], generator=gen)
    return lambda o: F.cross_entropy(o.reshape(-1, o.shape[-1]), labels.reshape(-1))


def _ep_vs_id(model: torch.nn.Module, example: tuple[torch.Tensor, ...]) -> list[tuple[str, float, float]]:
    """(tensor, cos, relative error) of EP against ID for every analog tensor whose ID gradient is not
    structurally zero (norm > 1e-12 of the largest), float64, free phase to 1e-13."""
    model = model.double()
    ex = tuple(t.double() if t.is_floating_point() else t for t in example)
    ff = hc_compile(
        model, ex, beta=1e-6, solver={"tol": 1e-13, "max_steps": 5000, "check_every": 10}
    ).double()
    ff.eval()
    loss_fn = _loss(_first(ff(*ex)).detach(), torch.Generator().manual_seed(0))
    analog = {f"blocks.{k}.{n}" for k, b in ff.analog_blocks.items() for n, _ in b.named_parameters()}

    def grads() -> dict[str, torch.Tensor]:
        ff.zero_grad(set_to_none=True)
        loss_fn(_first(ff(*ex))).backward()
        return {n: p.grad.clone() for n, p in ff.named_parameters() if n in analog and p.grad is not None}

    ep = grads()
    ff.set_gradient("id")
    idg = grads()
    top = max(g.norm() for g in idg.values())
    rows = []
    for n, g in idg.items():
        if g.norm() <= 1e-12 * top:
            continue
        e = ep[n]
        rows.append(
            (n, float(F.cosine_similarity(e.flatten(), g.flatten(), dim=0)), float((e - g).norm() / g.norm()))
        )
    return rows


# ------------------------------------------------------------------------------------ library-style models

FIXTURES = list(L.EXAMPLES)


@pytest.mark.parametrize("name", FIXTURES)
def test_fixture_partitions_every_weight_layer_outside_attention_analog(name: str) -> None:
    model, example = _fixture(name)
    plan = partition(model, example)
    analog = sum(len(b.weight_layers) for b in plan.analog_blocks)
    assert plan.analog_blocks and analog == _weights_outside_attention(model, example)


@pytest.mark.parametrize("name", FIXTURES)
def test_fixture_single_layer_blocks_compute_the_original(name: str) -> None:
    """Blocks of one layer with the model's own activations are exact: an activation a library module applies
    in its own forward (BatchNormAct2d, SE gates, hard-swish, tanh GELU) is neither dropped nor replaced."""
    model, example = _fixture(name)
    if name == "vit_style":  # its zero-initialised head outputs exactly 0: compare the features instead
        model = L.VisionTransformerStyle(zero_head=False).eval()
    ff = hc_compile(model, example, max_block_size=1, activation="keep").eval()
    with torch.no_grad():
        got, want = _first(ff(*example)), _first(model(*example))
    assert float(want.abs().max()) > 0
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", FIXTURES)
def test_fixture_compiles_and_keeps_the_output_structure(name: str) -> None:
    model, example = _fixture(name)
    with torch.no_grad():
        want = model(*example)
        ff = hc_compile(model, example).eval()
        got = ff(*example)
    assert _structure(got) == _structure(want)
    assert torch.isfinite(_first(got)).all()


@pytest.mark.parametrize("name", FIXTURES)
def test_fixture_free_phase_converges(name: str) -> None:
    model, example = _fixture(name)
    ff = hc_compile(model, example, solver=TIGHT).eval()
    with torch.no_grad():
        ff(*example)
    res = ff.equilibrium_residuals()
    assert res and max(res.values()) < 1e-6, res


@pytest.mark.parametrize(
    "name", ["timm_resnet", "mixer_style", pytest.param("efficientnet_style", marks=pytest.mark.slow)]
)
def test_fixture_ep_matches_id(name: str) -> None:
    model, example = _fixture(name)
    rows = _ep_vs_id(model, example)
    assert len(rows) >= 2
    worst_cos = min(c for _, c, _ in rows)
    worst_rel = max(r for _, _, r in rows)
    assert worst_cos > 0.9999, rows
    assert worst_rel < 1e-2, rows  # a constant scale error in EP fails here, not only cosine


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("timm_resnet", marks=pytest.mark.slow),
        "mixer_style",
        pytest.param("vit_style", marks=pytest.mark.slow),
    ],
)
def test_fixture_exports_and_verifies(name: str, tmp_path: Path) -> None:
    from hybridc.export.exporter import export_ffebm

    model, example = _fixture(name)
    ff = hc_compile(model, example).eval()
    result = export_ffebm(ff, tmp_path / "out", check=True)
    assert result.report is not None and result.report.ok, [
        (r.name, r.max_abs_error) for r in result.report.rows
    ]


def test_gradcheck_on_dataclass_output() -> None:
    from hybridc.gradcheck import gradcheck

    model, example = _fixture("bert_style")
    report = gradcheck(model, example, batch=2)
    analog = [p for p in report.params if p.analog]
    assert analog and min(p.cos_ep_id for p in analog) > 0.999


# ------------------------------------------------------------------------------- real transformers models


def _hf(spec: str) -> tuple[torch.nn.Module, tuple[torch.Tensor, ...]]:
    torch.manual_seed(0)
    lm = load_model(spec)
    return lm.model.eval(), lm.example_inputs


HF_SPECS = [
    pytest.param(BERT, id="bert"),
    pytest.param(GPT2, id="gpt2", marks=pytest.mark.slow),
    pytest.param(VIT, id="vit"),
]


@pytest.mark.parametrize("spec", HF_SPECS)
def test_transformers_model_partitions(spec: str) -> None:
    """Every weight layer outside attention is analog, except one tied to a digital tensor (GPT-2's lm_head
    shares the token embedding), which is kept digital with that reason recorded."""
    model, example = _hf(spec)
    plan = partition(model, example)
    tied = [d for d in plan.decisions if d.action == "kept_digital" and "tied" in d.reason]
    assert plan.analog_blocks
    assert sum(len(b.weight_layers) for b in plan.analog_blocks) + len(tied) == _weights_outside_attention(
        model, example
    )
    assert len(tied) == (1 if "gpt2" in spec else 0)


PENDING_GPT2 = pytest.mark.xfail(
    strict=False,
    reason="pending EQUILIBRIUM: compile-time contraction probe "
    "(batch of 4 starts) breaks GPT-2's export-traced Conv1D view",
)
HF_COMPILE_SPECS = [
    pytest.param(BERT, id="bert"),
    pytest.param(GPT2, id="gpt2", marks=[PENDING_GPT2, pytest.mark.slow]),
    pytest.param(VIT, id="vit"),
]


@pytest.mark.parametrize("spec", HF_COMPILE_SPECS)
def test_transformers_model_compiles_and_keeps_its_output(spec: str) -> None:
    model, example = _hf(spec)
    with torch.no_grad():
        want = model(*example)
        ff = hc_compile(model, example).eval()
        got = ff(*example)
    assert _structure(got) == _structure(want)
    res = ff.equilibrium_residuals()
    assert res and max(res.values()) < 1e-3, res


@pytest.mark.slow
@pytest.mark.parametrize("spec", [pytest.param(BERT, id="bert"), pytest.param(VIT, id="vit")])
def test_transformers_model_ep_matches_id(spec: str) -> None:
    model, example = _hf(spec)
    rows = _ep_vs_id(model, example)
    assert rows and min(c for _, c, _ in rows) > 0.9999 and max(r for _, _, r in rows) < 1e-2, rows


@pytest.mark.slow
def test_sweep_benchmark_quick(tmp_path: Path) -> None:
    """The sweep runs end to end on two rows and writes its JSON (the table itself is the benchmark's)."""
    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "sweep.json"
    r = subprocess.run(
        [
            sys.executable,
            str(root / "benchmarks" / "real_models.py"),
            "--quick",
            "--models",
            "timm-resnet-style,mlp-mixer",
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert out.exists(), r.stderr
    import json

    rows = json.loads(out.read_text())
    assert [r["name"] for r in rows] == ["timm-resnet-style", "mlp-mixer"]
    assert all(r["stages"]["partition"]["ok"] for r in rows)


T5 = "hf:T5EncoderModel,vocab_size=64,d_model=16,d_ff=32,d_kv=8,num_layers=1,num_heads=2"


def test_export_traced_graph_keeps_no_stride_dependent_view() -> None:
    """torch.export records `reshape` as `view` and drops a `.contiguous()` that is a no-op on the strides the
    example produced (HF T5: `sdpa(...).reshape(...).transpose(1, 2).contiguous().reshape(B, T, -1)`, where the
    CPU SDPA kernel under no_grad returns a layout whose transpose is contiguous). With a trainable attention
    bias, SDPA's grad-mode kernel returns another layout and that `view` raised; the traced graph uses
    `reshape` (the same values, any strides), so the compiled T5 trains and its gradients are finite."""
    model, example = _hf(T5)
    gm = trace(model, example).gm
    assert trace(model, example).method == "export"
    assert not [n for n in gm.graph.nodes if n.target is torch.ops.aten.view.default]
    ff = hc_compile(model, example)
    ff(*example).last_hidden_state.pow(2).mean().backward()
    grads = [p.grad for p in ff.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


class _CastToWeightDtype(torch.nn.Module):
    """HF DINOv2's patch embedding: `proj(x.to(proj.weight.dtype))`, behind a shape check fx cannot trace (so
    torch.export captures it, with the cast's dtype a constant)."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = torch.nn.Conv2d(3, 8, 4, stride=4)
        self.fc1, self.fc2 = torch.nn.Linear(32, 16), torch.nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != 8:
            raise ValueError("8x8 images only")
        h = self.proj(x.to(dtype=self.proj.weight.dtype)).flatten(1)
        return self.fc2(torch.relu(self.fc1(h)))


def test_cast_to_a_weights_dtype_follows_the_weight() -> None:
    """The traced cast becomes `type_as(weight)`: the compiled model converted to float64 (as gradcheck does)
    runs, and equals the original converted to float64."""
    torch.manual_seed(0)
    model, x = _CastToWeightDtype().eval(), torch.randn(2, 3, 8, 8)
    assert trace(model, (x,)).method == "export"
    ff = hc_compile(model, (x,), max_block_size=1).double().eval()
    with torch.no_grad():
        got = ff(x.double())
        want = model.double()(x.double())
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)
