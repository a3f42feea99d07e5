"""Export (Issue 5): digital blocks to ONNX, analog weights + energy specs, the manifest, the whole model
in onnxruntime, `hybridc verify`, atomic output, and clear errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import torch.nn as nn
from safetensors.numpy import load_file

from hybridc.api import compile as hc_compile
from hybridc.errors import UnsupportedOpError
from hybridc.export import ExportError, Manifest, export_ffebm, load_run, verify_export
from hybridc.export.manifest import AnalogBlockInfo, DigitalBlockInfo
from hybridc.export.onnx_blocks import onnx_session
from hybridc.export.pooling_decompositions import DECOMPOSITIONS
from hybridc.load import load_model
from hybridc.runtime.ffebm import FFEBM

aten = torch.ops.aten

#: zoo models at test size, with the block size that exercises them
#: (one encoder layer / ViT block: the same block kinds as the defaults, at half the export time)
ZOO = {
    "mlp": ({"sizes": (784, 32, 32, 10)}, 2),
    "vgg-paper": ({"width": 0.0625}, 2),
    "resnet18": ({"base": 4}, 4),  # block size 4: digital blocks hold batchnorms and residual adds
    "transformer": ({"d_model": 16, "nhead": 2, "dim_feedforward": 32, "num_layers": 1}, 2),
    "vit": ({"dim": 16, "heads": 2, "depth": 1}, 2),
}
#: also exported with --full: relaxations unrolled, or as ONNX Loops (resnet18's: the slow test below)
FULL = {"mlp": "loop", "transformer": "unroll"}
T1 = 6  # relaxation steps: few, so the unrolled models stay small; the checks do not depend on the count


def _compile(name: str, **solver: object) -> FFEBM:
    kwargs, n = ZOO[name]
    torch.manual_seed(0)
    lm = load_model(name, **kwargs)
    return hc_compile(lm.model, lm.example_inputs, max_block_size=n, solver={"t1": T1, **solver})


def _tiny(**solver: object) -> FFEBM:
    """Two blocks: the cheapest export, for tests about files rather than models."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 3))
    return hc_compile(net, (torch.randn(2, 3, 4),), max_block_size=2, solver={"t1": T1, **solver})


@pytest.fixture(scope="module")
def exports(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Every zoo model compiled and exported once (the tests below inspect these directories)."""
    root = tmp_path_factory.mktemp("exports")
    out = {}
    for name in ZOO:
        ff = _compile(name)
        res = export_ffebm(ff, root / name, full=name in FULL, relaxation=FULL.get(name, "unroll"))
        out[name] = (ff, res)
    return out


def _onnx_ops(path: Path) -> set[str]:
    model = onnx.load(str(path))
    ops = {n.op_type for n in model.graph.node}
    for f in model.functions:
        ops |= {n.op_type for n in f.node}
    return ops


# ---- decompositions of the pooling transposes (no ONNX conversion exists for the ATen ops) -------------


@pytest.mark.parametrize(
    "k,s,p,ceil,cip,div",
    [
        (2, 2, 0, False, True, None),
        (2, 2, 0, True, True, None),
        (3, 2, 1, False, True, None),
        (3, 2, 1, True, True, None),
        (3, 2, 1, True, False, None),
        (3, 1, 1, False, False, None),
        (2, 3, 1, True, False, None),
        (3, 3, 1, True, True, None),
        (3, 2, 1, True, True, 5),
        (2, 1, 0, False, False, 3),
    ],
)
def test_avg_pool_backward_decomposition_exact(
    k: int, s: int, p: int, ceil: bool, cip: bool, div: int | None
) -> None:
    x = torch.randn(2, 3, 9, 8, dtype=torch.float64)
    g = torch.randn_like(torch.nn.functional.avg_pool2d(x, k, s, p, ceil, cip, div))
    args = (g, x, [k, k], [s, s], [p, p], ceil, cip, div)
    ref = aten.avg_pool2d_backward(*args)
    torch.testing.assert_close(DECOMPOSITIONS[aten.avg_pool2d_backward.default](*args), ref)


@pytest.mark.parametrize(
    "size,out",
    [((7, 9), (1, 1)), ((7, 9), (3, 4)), ((8, 8), (2, 2)), ((5, 6), (5, 3)), ((5, 6, 7), (2, 3, 1))],
)
def test_adaptive_pool_backward_decomposition_exact(size: tuple, out: tuple) -> None:
    x = torch.randn(2, 3, *size, dtype=torch.float64)
    g = torch.randn(2, 3, *out, dtype=torch.float64)
    op = aten._adaptive_avg_pool2d_backward if len(size) == 2 else aten._adaptive_avg_pool3d_backward
    torch.testing.assert_close(DECOMPOSITIONS[op.default](g, x), op(g, x))


def test_avg_pool3d_backward_decomposition_exact() -> None:
    x = torch.randn(1, 2, 5, 6, 7, dtype=torch.float64)
    for k, s, p, ceil, cip in [(2, 2, 0, True, True), (3, 2, 1, False, False), (3, 1, 1, True, True)]:
        g = torch.randn_like(torch.nn.functional.avg_pool3d(x, k, s, p, ceil, cip))
        args = (g, x, [k] * 3, [s] * 3, [p] * 3, ceil, cip, None)
        torch.testing.assert_close(
            DECOMPOSITIONS[aten.avg_pool3d_backward.default](*args), aten.avg_pool3d_backward(*args)
        )


# ---- every zoo model exports and verifies --------------------------------------------------------------


@pytest.mark.parametrize("name", list(ZOO))
def test_zoo_model_exports_and_verifies(exports: dict, name: str) -> None:
    ff, res = exports[name]
    d, m = res.directory, res.manifest
    assert res.report is not None and res.report.ok, [r for r in res.report.rows if not r.ok]
    report = verify_export(d)  # again, from the published directory
    assert report.ok
    kinds = [r.kind for r in report.rows]
    assert kinds.count("digital") == sum(b.kind == "digital" for b in m.blocks)
    assert kinds.count("analog") == len(ff.analog_blocks) > 0
    assert "chained" in kinds and (("full" in kinds) == (name in FULL))
    assert [b.name for b in m.blocks] == list(ff.blocks)  # execution order
    for b in m.blocks:
        if isinstance(b, DigitalBlockInfo):
            model = onnx.load(str(d / b.onnx))
            onnx.checker.check_model(model)
            assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17
            assert [i.name for i in model.graph.input] == b.inputs
            assert [o.name for o in model.graph.output] == b.outputs
            assert not model.graph.input[0].type.tensor_type.shape.dim[0].HasField("dim_value")  # dynamic
        else:
            weights = load_file(str(d / b.weights))
            used = {w for syn in b.synapses for op in syn.path for w in op.weights.values()}
            assert used and used <= set(weights), used - set(weights)
            assert {s.target for s in b.synapses} <= {n.name for n in b.neurons}
            assert set(b.outputs) == {n.name for n in b.neurons if n.output}
            assert b.solver.steps == T1


def test_resnet_digital_blocks_batchnorm_eval_and_residual_adds(exports: dict) -> None:
    ff, res = exports["resnet18"]
    d, m = res.directory, res.manifest
    digital = [b for b in m.blocks if isinstance(b, DigitalBlockInfo)]
    ops = set().union(*(_onnx_ops(d / b.onnx) for b in digital))
    assert {"Add", "BatchNormalization", "Relu"} <= ops  # residual adds, batchnorm
    # batchnorm in eval mode: a digital block's output for one sample does not depend on the rest of the batch
    b = next(b for b in digital if "Add" in _onnx_ops(d / b.onnx))
    sess = onnx_session(d / b.onnx)
    samples = np.load(d / m.samples.file)
    full = sess.run(None, {i: samples[i] for i in b.inputs})
    one = sess.run(None, {i: samples[i][:1] for i in b.inputs})
    for a, c in zip(full, one):
        np.testing.assert_allclose(a[:1], c, atol=1e-6)
    # the analog block with the absorbed global average pool exports its transpose (decomposed)
    assert any(
        op.op == "AdaptiveAvgPool2d"
        for b in m.blocks
        if isinstance(b, AnalogBlockInfo)
        for s in b.synapses
        for op in s.path
    )
    # residual adds inside analog blocks: two synapses into one neuron
    analog = [b for b in m.blocks if isinstance(b, AnalogBlockInfo)]
    assert any(
        len({s.source for s in b.synapses if s.target == n.name}) > 1 for b in analog for n in b.neurons
    )


def test_transformer_attention_and_layernorm_blocks(exports: dict) -> None:
    ff, res = exports["transformer"]
    d, m = res.directory, res.manifest
    ops = set().union(*(_onnx_ops(d / b.onnx) for b in m.blocks if isinstance(b, DigitalBlockInfo)))
    assert "Softmax" in ops and "MatMul" in ops
    assert "LayerNormalization" in ops
    assert m.full is not None and set(m.full.steps) == set(ff.analog_blocks) and m.full.relaxation == "unroll"
    assert "Loop" not in _onnx_ops(d / m.full.onnx)


@pytest.mark.parametrize("name", sorted(FULL))
def test_full_model_matches_torch_on_new_batch_sizes(exports: dict, name: str) -> None:
    """model.onnx alone reproduces the compiled model's predictions, at batch sizes never seen in export."""
    ff, res = exports[name]
    m = res.manifest
    assert m.full.relaxation == FULL[name] and ("Loop" in _onnx_ops(res.directory / m.full.onnx)) == (
        FULL[name] == "loop"
    )
    sess = onnx_session(res.directory / m.full.onnx)
    shape = m.tensors[m.graph_inputs[0]].shape[1:]
    for batch in (1, 5):
        x = torch.randn(batch, *shape)
        with torch.no_grad():
            ref = ff.eval()(x)
        got = sess.run(None, {m.graph_inputs[0]: x.numpy()})[0]
        np.testing.assert_allclose(got, ref.numpy(), atol=1e-4, rtol=0)
        assert got.shape == tuple(ref.shape)


# ---- the manifest --------------------------------------------------------------------------------------


def test_manifest_round_trips_and_links_blocks(exports: dict) -> None:
    _, res = exports["resnet18"]
    d = res.directory
    text = (d / "manifest.json").read_text()
    m = Manifest.load(d)
    assert m == res.manifest
    assert Manifest.from_json(m.to_json()) == m
    assert json.loads(m.to_json()) == json.loads(text)
    available = set(m.graph_inputs)
    for b in m.blocks:  # every block reads graph inputs or earlier blocks' outputs
        assert set(b.inputs) <= available, (b.name, set(b.inputs) - available)
        available |= set(b.outputs)
        for t in b.outputs:
            assert m.tensors[t].producer == b.name
    assert set(m.graph_outputs) <= available
    assert all(m.tensors[t].shape[0] == "batch" for t in m.tensors)
    on_disk = {p.relative_to(d).as_posix() for p in d.rglob("*") if p.is_file()} - {"manifest.json"}
    assert on_disk == {f.path for f in m.files}


def test_manifest_rejects_unknown_fields_and_versions(exports: dict, tmp_path: Path) -> None:
    _, res = exports["mlp"]
    data = json.loads(res.manifest.to_json())
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "manifest.json").write_text(json.dumps(data | {"version": 99}))
    with pytest.raises(ExportError, match="version 99"):
        Manifest.load(bad)
    (bad / "manifest.json").write_text(json.dumps(data | {"surprise": 1}))
    with pytest.raises(ExportError, match="surprise"):
        Manifest.load(bad)
    with pytest.raises(ExportError, match="not a hybridc export"):
        Manifest.load(tmp_path)


# ---- verify can fail ----------------------------------------------------------------------------------


def test_verify_detects_changed_files_and_wrong_numbers(exports: dict, tmp_path: Path) -> None:
    import shutil

    _, res = exports["mlp"]
    d = tmp_path / "copy"
    shutil.copytree(res.directory, d)
    m = Manifest.load(d)
    # consistent tampering (hash updated): wrong reference numbers must fail the numeric checks
    samples = dict(np.load(d / m.samples.file))
    out = m.graph_outputs[0]
    samples[out] = samples[out] + 1e-2
    np.savez(d / m.samples.file, **samples)
    from hybridc.files import sha256_file

    f = m.file(m.samples.file)
    f.sha256, f.bytes = sha256_file(d / m.samples.file), (d / m.samples.file).stat().st_size
    m.save(d / "manifest.json")
    report = verify_export(d)
    assert not report.ok
    failed = {(r.name, r.kind) for r in report.failures}
    assert ("end-to-end", "chained") in failed and ("end-to-end", "full") in failed
    assert any(k == "analog" for _, k in failed)
    assert all(r.ok for r in report.rows if r.kind == "digital")
    # a file changed behind the manifest's back is an error, not a number
    blk = next(b for b in m.blocks if isinstance(b, AnalogBlockInfo))
    with open(d / blk.weights, "r+b") as fh:
        fh.seek(-4, 2)
        fh.write(b"\x00\x00\x80\x7f")
    with pytest.raises(ExportError, match="changed since export"):
        verify_export(d)
    # weights that are not the step file's (hash updated) are an error too
    from safetensors.numpy import save_file

    shutil.rmtree(d)
    shutil.copytree(res.directory, d)
    m = Manifest.load(d)
    weights = load_file(str(d / blk.weights))
    key = next(iter(weights))
    weights[key] = weights[key] + 1.0
    save_file(weights, str(d / blk.weights))
    f = m.file(blk.weights)
    f.sha256, f.bytes = sha256_file(d / blk.weights), (d / blk.weights).stat().st_size
    m.save(d / "manifest.json")
    # the step file reads its weights from the safetensors file: rewritten, the references no longer fit it
    # (or, were the layout unchanged, the step file would compute with the changed weights: numbers fail)
    try:
        report = verify_export(d)
    except ExportError as exc:
        assert f"tensor {key} differs" in str(exc) or "analog1.step.onnx" in str(exc)
    else:
        assert not report.ok and any(r.kind == "analog" for r in report.failures)


# ---- errors and atomic output ------------------------------------------------------------------------


@torch.library.custom_op("hybridc_test::wiggle", mutates_args=())
def _wiggle(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(x) + 0.1


@_wiggle.register_fake
def _(x: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(x)


class _CustomOpNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(8, 16)
        self.b = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.ops.hybridc_test.wiggle(self.a(x)))


def _tree(d: Path) -> dict[str, bytes]:
    return {p.relative_to(d).as_posix(): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def test_unsupported_op_names_op_and_block_and_keeps_previous_export(exports: dict, tmp_path: Path) -> None:
    import shutil

    _, res = exports["mlp"]
    out = tmp_path / "out"
    shutil.copytree(res.directory, out)
    before = _tree(out)
    ff = hc_compile(_CustomOpNet(), (torch.randn(2, 8),), max_block_size=1, solver={"t1": 3})
    digital = next(n for n, b in ff.blocks.items() if n not in ff.analog_blocks)
    with pytest.raises(UnsupportedOpError) as info:
        export_ffebm(ff, out)
    msg = str(info.value)
    assert "hybridc_test.wiggle" in msg and f"digital block {digital}" in msg
    assert _tree(out) == before  # the previous export is intact ...
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # ... and no staging directory is left
    assert verify_export(out).ok


def test_device_effects_and_other_block_kinds_are_refused_clearly(tmp_path: Path) -> None:
    from hybridc.analog.nonideal import apply_device_effects
    from hybridc.plan import AnalogSpec

    ff = _tiny()
    name, blk = next(iter(ff.analog_blocks.items()))
    apply_device_effects(blk, AnalogSpec(read_noise=0.01, weight_levels=16))
    with pytest.raises(UnsupportedOpError, match=f"analog block {name} simulates device effects.*read_noise"):
        export_ffebm(ff, tmp_path / "out")
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 3))
    drn = hc_compile(net, (torch.randn(2, 3, 4),), max_block_size=2, eb_kind="drn")
    with pytest.raises(UnsupportedOpError, match="is a drn block"):
        export_ffebm(drn, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_replace_previous_export_and_refuse_foreign_directory(tmp_path: Path) -> None:
    out = tmp_path / "out"
    ff = _tiny()
    first = export_ffebm(ff, out, check=False)
    second = export_ffebm(ff, out, steps=3, check=False)  # replaces it whole
    assert Manifest.load(out).created == second.manifest.created
    assert all(b.solver.steps == 3 for b in second.manifest.blocks if isinstance(b, AnalogBlockInfo))
    assert first.manifest.blocks != second.manifest.blocks
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("precious")
    with pytest.raises(ExportError, match="not a hybridc export directory"):
        export_ffebm(ff, foreign, check=False)
    assert (foreign / "notes.txt").read_text() == "precious"


def test_export_restores_the_model_and_handles_float64_async_tolerance(tmp_path: Path) -> None:
    ff = _tiny(mode="async", tol=1e-7, max_steps=400).double().train()
    before = {k: v.clone() for k, v in ff.state_dict().items()}
    solvers = {k: b.solver for k, b in ff.analog_blocks.items()}
    res = export_ffebm(ff, tmp_path / "out", steps=60)
    assert res.report.ok
    m = res.manifest
    assert ff.training and all(b.solver is solvers[k] for k, b in ff.analog_blocks.items())
    after = ff.state_dict()
    assert all(after[k].dtype == torch.float64 and torch.equal(after[k], v) for k, v in before.items())
    analog = [b for b in m.blocks if isinstance(b, AnalogBlockInfo)]
    assert all(
        b.solver.mode == "async" and b.solver.steps == 60 and "tolerance" in b.solver.note for b in analog
    )
    assert any("tolerance" in w for w in m.warnings)
    assert m.checks["fixed_steps_vs_compiled_solver_max_abs"] < 1e-4  # 60 steps reach the tolerance solution


# ---- training runs ------------------------------------------------------------------------------------


_NET = """
import torch.nn as nn
INPUT_SHAPE = (1, 6, 6)
def model(width=4):
    return nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                         nn.Conv2d(width, width, 3, padding=1), nn.ReLU(), nn.Flatten(),
                         nn.Linear(width * 36, 10))
"""


def test_run_dir_exports_trained_weights_batchnorm_statistics_and_input_transform(tmp_path: Path) -> None:
    """A run directory in the trainer's layout (checkpoint.pt with its config, plan.json) of a model file on
    digits resized 8x8 -> 6x6: the export holds the trained state, records the input transform, and its
    full ONNX model takes raw 8x8 images (resize + normalisation inside)."""
    from hybridc.data.preprocess import input_transform

    src = tmp_path / "net.py"
    src.write_text(_NET)
    torch.manual_seed(0)
    lm = load_model(str(src))
    ff = hc_compile(lm.model, lm.example_inputs, max_block_size=2, norm="split", solver={"t1": 8})
    with torch.no_grad():  # "training": new weights and batchnorm statistics
        for name, t in ff.state_dict().items():
            if t.is_floating_point():
                t.add_(0.3 * torch.randn_like(t)) if "running_var" not in name else t.mul_(3.0)
    run = tmp_path / "run"
    run.mkdir()
    ff.plan.save(run / "plan.json")
    config = {"model": str(src), "input_size": 6, "t1": 8, "solver_mode": "sync"}
    torch.save({"config": config, "model": ff.state_dict()}, run / "checkpoint.pt")
    loaded = load_run(run)
    assert loaded.transform == input_transform("digits", (6, 6))
    res = export_ffebm(loaded.ff, tmp_path / "out", full=True, source=loaded.source)
    assert res.report.ok and res.manifest.source.kind == "run"
    pre = res.manifest.preprocess
    assert (
        pre is not None
        and pre.applied_by_full_model
        and pre.raw_shape == [1, 8, 8]
        and pre.resize_to == [6, 6]
    )
    assert pre.mean == [pytest.approx(0.3053)] and res.manifest.full.inputs == [pre.raw_input]
    sess = onnx_session(res.directory / res.manifest.full.onnx)
    raw = torch.rand(4, 1, 8, 8)
    x = (torch.nn.functional.interpolate(raw, size=(6, 6), mode="bilinear") - 0.3053) / 0.3760
    with torch.no_grad():
        want = ff.eval()(x).numpy()
        fresh = (
            hc_compile(load_model(str(src)).model, lm.example_inputs, plan=ff.plan, solver={"t1": 8})
            .eval()(x)
            .numpy()
        )
    got = sess.run(None, {pre.raw_input: raw.numpy()})[0]
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
    assert np.abs(got - fresh).max() > 1e-2  # the trained state, not a fresh model
    assert any(
        "BatchNormalization" in _onnx_ops(res.directory / b.onnx)
        for b in res.manifest.blocks
        if isinstance(b, DigitalBlockInfo)
    )
    (run / "checkpoint.pt").unlink()
    with pytest.raises(ExportError, match="no checkpoint"):
        load_run(run)


def test_run_dir_from_hybridc_train(tmp_path: Path) -> None:
    """A real `hybridc train` run directory (default MLP on the bundled digits, a few batches)."""
    train_mod = pytest.importorskip("hybridc.train.loop")
    from hybridc.train.experiment import resolve_config

    cfg = resolve_config(
        None,
        {
            "epochs": 1,
            "train_subset": 64,
            "test_subset": 32,
            "t1": 4,
            "t2": 2,
            "max_block_size": 3,
            "progress": False,
        },
    )
    train_mod.train(cfg, out=tmp_path / "run")
    loaded = load_run(tmp_path / "run")
    res = export_ffebm(loaded.ff, tmp_path / "out", source=loaded.source)
    assert res.report.ok
    ck = torch.load(loaded.source.checkpoint, weights_only=True)["model"]
    blk = next(b for b in res.manifest.blocks if isinstance(b, AnalogBlockInfo))
    for k, v in load_file(str(res.directory / blk.weights)).items():
        np.testing.assert_array_equal(v, ck[f"blocks.{blk.name}.synapses.{k}"].numpy())
    assert res.manifest.preprocess is not None and res.manifest.preprocess.mean == [pytest.approx(0.3053)]
    # the weights are stored once: the step file reads them from the safetensors file (external data)
    step = onnx.load(str(res.directory / blk.step_onnx), load_external_data=False)
    external = [i for i in step.graph.initializer if i.data_location == onnx.TensorProto.EXTERNAL]
    assert external and {e.value for i in external for e in i.external_data if e.key == "location"} == {
        Path(blk.weights).name
    }
    weights_bytes = (res.directory / blk.weights).stat().st_size
    assert (res.directory / blk.step_onnx).stat().st_size < weights_bytes / 4


# ---- the command line --------------------------------------------------------------------------------


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "hybridc", *args], capture_output=True, text=True, timeout=600
    )


def test_cli_export_verify(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from hybridc.cli import app, main

    out = tmp_path / "out"
    r = _cli(
        "export",
        "mlp",
        "--model-kwargs",
        '{"sizes": [784, 16, 10]}',
        "-n",
        "2",
        "--t1",
        "5",
        "--full",
        "-o",
        str(out),
    )  # as users run it
    assert r.returncode == 0, r.stdout + r.stderr
    assert "end-to-end" in r.stdout and "model.onnx" in r.stdout and "wrote" in r.stdout
    runner = CliRunner()
    res = runner.invoke(app, ["verify", str(out)])
    assert res.exit_code == 0 and "ok:" in res.stdout and "analog" in res.stdout
    res = runner.invoke(app, ["verify", str(out), "--format", "json"])
    data = json.loads(res.stdout)
    assert data["ok"] and {row["kind"] for row in data["rows"]} == {"digital", "analog", "chained", "full"}
    res = runner.invoke(app, ["verify", str(out), "--tol", "1e-12"])  # no relaxation is that exact
    assert res.exit_code == 1 and "FAILED" in res.stdout
    for argv, message in (
        (["verify", str(tmp_path)], "not a hybridc export directory"),
        (["export", str(out), "-o", str(tmp_path / "x")], "is an export directory"),
        (["export", str(tmp_path), "-o", str(tmp_path / "x")], "neither a model file nor a run"),
        (
            ["export", "mlp", "--plan", str(tmp_path / "none.json"), "-o", str(tmp_path / "x")],
            "does not exist",
        ),
    ):
        monkeypatch.setattr(sys, "argv", ["hybridc", *argv])
        with pytest.raises(SystemExit) as info:
            main()
        assert info.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
@pytest.mark.parametrize(
    "name,n,relaxation",
    [("vgg-paper-12", 2, "unroll"), ("resnet18", 2, "unroll"), ("resnet18", 4, "loop"), ("vit", 2, "loop")],
)
def test_more_zoo_exports_full(tmp_path: Path, name: str, n: int, relaxation: str) -> None:
    torch.manual_seed(0)
    kwargs = {"vgg-paper-12": {"width": 0.0625}, "resnet18": {"base": 4}, "vit": {"dim": 16, "heads": 2}}[
        name
    ]
    lm = load_model(name, **kwargs)
    ff = hc_compile(lm.model, lm.example_inputs, max_block_size=n)
    res = export_ffebm(ff, tmp_path / "out", full=True, relaxation=relaxation)
    assert res.report.ok
    assert res.report.rows[-1].kind == "full"


@pytest.mark.parametrize(
    "name", ["functional_mlp", "preact_resnet", "mlp_mixer", "scratch_encoder", "shape_control_flow"]
)
def test_unseen_models_export_and_verify(tmp_path: Path, name: str) -> None:
    """Models written in other PyTorch styles (raw parameters, pre-activation residuals, token mixing,
    nn.MultiheadAttention encoders, shape control flow captured by torch.export) export and verify."""
    from hybridc.export import export_model, verify_export

    from .fixtures.unseen_models import UNSEEN

    cls, shape = UNSEEN[name]
    torch.manual_seed(0)
    model = cls().eval()
    export_model(model, torch.randn(2, *shape), tmp_path / name, max_block_size=2, full=True)
    report = verify_export(tmp_path / name)
    assert report.rows and report.ok, report.failures
