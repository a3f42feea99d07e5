"""Tests of the model zoo (hybridc.models): every model builds, runs, and loads standalone."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
import torch.fx
import torch.nn as nn

from hybridc.errors import ModelLoadError
from hybridc.models import ZOO, ZOO_INPUT_SHAPES, build_zoo_model, zoo_names, zoo_path

# Small versions so the whole file runs in a few seconds on CPU.
SMALL: dict[str, dict] = {
    "mlp": {"sizes": (784, 32, 16, 10)},
    "vgg-paper": {"width": 1 / 16},
    "vgg-paper-12": {"width": 1 / 16},
    "vgg-bn": {"width": 1 / 16},
    "resnet18": {"base": 4},
    "transformer": {"d_model": 16, "nhead": 2, "dim_feedforward": 32},
    "vit": {"dim": 16, "heads": 2},
}

MODEL_FILES = ["mlp.py", "vgg.py", "resnet.py", "transformer.py", "vit.py"]


def _load_standalone(path: Path):
    spec = importlib.util.spec_from_file_location(f"_zoo_standalone_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _weight_layers(m: nn.Module) -> int:
    return sum(isinstance(x, (nn.Conv2d, nn.Linear)) for x in m.modules())


def test_registry_consistent() -> None:
    names = zoo_names()
    assert names == ["mlp", "vgg-paper", "vgg-paper-12", "vgg-bn", "resnet18", "transformer", "vit"]
    assert set(ZOO) == set(ZOO_INPUT_SHAPES) == set(names) == set(SMALL)
    for name in names:
        p = zoo_path(name)
        assert p.is_file() and p.parent.name == "models", p


@pytest.mark.parametrize("name", list(SMALL))
def test_forward_shape(name: str) -> None:
    torch.manual_seed(0)
    m = build_zoo_model(name, **SMALL[name]).eval()
    x = torch.randn(2, *ZOO_INPUT_SHAPES[name])
    with torch.no_grad():
        y = m(x)
    assert y.shape == (2, 10)
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("name", ["vgg-paper", "resnet18", "vit", "mlp"])
def test_num_classes_and_train_mode(name: str) -> None:
    kw = dict(SMALL[name])
    if name == "mlp":
        kw["sizes"] = (784, 8, 7)
    else:
        kw["num_classes"] = 7
    m = build_zoo_model(name, **kw).train()
    y = m(torch.randn(2, *ZOO_INPUT_SHAPES[name]))
    assert y.shape == (2, 7)
    y.sum().backward()


def test_unknown_name_lists_valid_names() -> None:
    with pytest.raises(ModelLoadError) as e:
        build_zoo_model("resnet50")
    for name in zoo_names():
        assert name in str(e.value)
    with pytest.raises(ModelLoadError):
        zoo_path("nope")
    with pytest.raises(ModelLoadError):
        build_zoo_model("mlp", no_such_argument=1)


@pytest.mark.parametrize("filename", MODEL_FILES)
def test_standalone_load_by_path(filename: str) -> None:
    path = Path(zoo_path("mlp")).parent / filename
    mod = _load_standalone(path)
    shape = tuple(mod.INPUT_SHAPE)
    m = mod.model().eval()
    with torch.no_grad():
        y = m(torch.randn(2, *shape))
    assert y.shape == (2, 10)
    if filename == "vgg.py":
        assert _weight_layers(mod.model12(width=0.125)) == 13  # 12 + the digital readout


def test_vit_symbolic_trace_matches() -> None:
    torch.manual_seed(0)
    m = build_zoo_model("vit").eval()
    gm = torch.fx.symbolic_trace(m)
    x = torch.randn(2, *ZOO_INPUT_SHAPES["vit"])
    with torch.no_grad():
        torch.testing.assert_close(gm(x), m(x))
        # A different batch size goes through the traced graph too (no baked-in batch size).
        x5 = torch.randn(5, *ZOO_INPUT_SHAPES["vit"])
        torch.testing.assert_close(gm(x5), m(x5))


def test_vit_cifar_config() -> None:
    m = build_zoo_model("vit", image_size=32, patch_size=4, in_channels=3, dim=16, heads=2).eval()
    gm = torch.fx.symbolic_trace(m)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        y = m(x)
        torch.testing.assert_close(gm(x), y)
    assert y.shape == (2, 10)
    assert m.pos.shape == (1, 65, 16)


@pytest.mark.parametrize("name", ["mlp", "vgg-paper", "vgg-paper-12", "resnet18"])
def test_cnn_and_mlp_symbolic_trace(name: str) -> None:
    m = build_zoo_model(name, **SMALL[name]).eval()
    gm = torch.fx.symbolic_trace(m)
    x = torch.randn(2, *ZOO_INPUT_SHAPES[name])
    with torch.no_grad():
        torch.testing.assert_close(gm(x), m(x))


def test_transformer_uses_stock_encoder() -> None:
    m = build_zoo_model("transformer")
    assert isinstance(m.encoder, nn.TransformerEncoder)
    layer = m.encoder.layers[0]
    assert isinstance(layer, nn.TransformerEncoderLayer)
    assert layer.self_attn.batch_first
    assert len(m.encoder.layers) == 2
    assert m.pos.shape == (1, 28, 64)


class _DeepTracer(torch.fx.Tracer):
    """Traces through torch.nn containers (like hybridc's tracer); only basic layers are leaves."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return isinstance(m, (nn.Linear, nn.Conv2d, nn.LayerNorm, nn.Dropout, nn.MultiheadAttention))


def test_transformer_not_deep_fx_traceable_but_exportable() -> None:
    m = build_zoo_model("transformer", **SMALL["transformer"]).eval()
    with pytest.raises(torch.fx.proxy.TraceError):
        _DeepTracer().trace(m)
    x = torch.randn(2, *ZOO_INPUT_SHAPES["transformer"])
    ep = torch.export.export(m, (x,), strict=False)
    with torch.no_grad():
        torch.testing.assert_close(ep.module()(x), m(x))


def test_vit_deep_fx_traceable() -> None:
    m = build_zoo_model("vit", **SMALL["vit"]).eval()
    graph = _DeepTracer().trace(m)
    gm = torch.fx.GraphModule(m, graph)
    x = torch.randn(3, *ZOO_INPUT_SHAPES["vit"])
    with torch.no_grad():
        torch.testing.assert_close(gm(x), m(x))


def test_resnet18_structure() -> None:
    m = build_zoo_model("resnet18")
    # stem 1 + 8 blocks x 2 convs + 3 shortcut 1x1 convs + 1 fc
    assert _weight_layers(m) == 21
    shortcuts = [x for x in m.modules() if isinstance(x, nn.Conv2d) and x.kernel_size == (1, 1)]
    assert len(shortcuts) == 3
    assert not any(isinstance(x, nn.MaxPool2d) for x in m.modules())
    assert all(not x.inplace for x in m.modules() if isinstance(x, nn.ReLU))
    assert m.fc.in_features == 512
    assert sum(p.numel() for p in m.parameters()) == 11_173_962  # the standard CIFAR ResNet-18


def test_vgg_paper_structure() -> None:
    """The paper's networks (reference splitting_small_1block / splitting_large_3block configs): weight
    layers, channels, pools, the single entry BatchNorm, hard-sigmoid neurons, hidden Linear and readout."""
    m6 = build_zoo_model("vgg-paper")
    m12 = build_zoo_model("vgg-paper-12")
    assert _weight_layers(m6) == 7 and _weight_layers(m12) == 13  # 6 / 12 + the readout
    convs6 = [x.out_channels for x in m6.modules() if isinstance(x, nn.Conv2d)]
    convs12 = [x.out_channels for x in m12.modules() if isinstance(x, nn.Conv2d)]
    assert convs6 == [128, 256, 256, 512, 512]
    assert convs12 == [128] * 4 + [256] * 4 + [512] * 4
    assert sum(isinstance(x, nn.MaxPool2d) for x in m6.modules()) == 4
    assert sum(isinstance(x, nn.MaxPool2d) for x in m12.modules()) == 3
    assert sum(isinstance(x, nn.BatchNorm2d) for x in m6.modules()) == 1
    assert sum(isinstance(x, nn.BatchNorm2d) for x in m12.modules()) == 3
    assert not any(isinstance(x, nn.ReLU) for x in m6.modules())
    assert m6.classifier[1].in_features == 512 * 2 * 2 and m6.classifier[1].out_features == 256
    assert m6.readout.in_features == 256 and m12.readout.in_features == 512 * 4 * 4
    # the layer the readout reads is linear (clamp_last: false), every other one hard-sigmoid
    assert list(m6.classifier)[-1] is m6.classifier[1] and isinstance(list(m12.features)[-1], nn.Conv2d)
    assert sum(isinstance(x, nn.Hardtanh) for x in m6.modules()) == 5
    assert sum(isinstance(x, nn.Hardtanh) for x in m12.modules()) == 11
    # conv0 -> pool -> BatchNorm -> hard sigmoid, and the conv before a BatchNorm has no bias
    first = list(m6.features)[:4]
    assert [type(x) for x in first] == [nn.Conv2d, nn.MaxPool2d, nn.BatchNorm2d, nn.Hardtanh]
    assert first[0].bias is None and first[3].min_val == 0.0 and first[3].max_val == 1.0
    x = torch.randn(1, 3, 32, 32)
    small6 = build_zoo_model("vgg-paper", width=1 / 16).eval()
    small12 = build_zoo_model("vgg-paper-12", width=1 / 16).eval()
    with torch.no_grad():
        assert small6.features(x).shape == (1, 32, 2, 2)
        assert small12.features(x).shape == (1, 32, 4, 4)


def test_vgg_bn_structure() -> None:
    """The older BN-after-every-conv VGG, kept as zoo `vgg-bn`."""
    m = build_zoo_model("vgg-bn", width=1 / 16).eval()
    assert _weight_layers(m) == 6
    assert sum(isinstance(x, nn.MaxPool2d) for x in m.modules()) == 4
    mods = list(m.features)
    for i, mod in enumerate(mods):
        if isinstance(mod, nn.Conv2d):
            assert isinstance(mods[i + 1], nn.BatchNorm2d) and isinstance(mods[i + 2], nn.ReLU)
    with torch.no_grad():
        assert m.features(torch.randn(1, 3, 32, 32)).shape == (1, 32, 2, 2)


def test_mlp_activations() -> None:
    for act in ["relu", "tanh", "sigmoid", "gelu", "hardsigmoid"]:
        m = build_zoo_model("mlp", sizes=(784, 8, 10), activation=act)
        assert m(torch.randn(2, 1, 28, 28)).shape == (2, 10)
        linears = [x for x in m.modules() if isinstance(x, nn.Linear)]
        assert len(linears) == 2
    # No activation after the last Linear.
    assert isinstance(build_zoo_model("mlp").net[-1], nn.Linear)
    with pytest.raises(ModelLoadError):
        build_zoo_model("mlp", activation="swishy")
