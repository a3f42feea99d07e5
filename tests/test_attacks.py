"""Issue 15's attack, kept as regression tests: run directories owned by one writer, checkpoints and plans
that cannot change unnoticed, exports that never replace a good one with a bad one, manifests that cannot
lie, finite settings everywhere, and one `error:` line (or a warning) for every bad input.

The CLI table at the end runs in-process through typer's CliRunner (fast): each bad value must end in exit
status 2 and a message holding the expected fragment, never a traceback.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import traceback
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from hybridc.api import compile as hc_compile
from hybridc.export import ExportError, Manifest, export_ffebm, load_run, verify_export
from hybridc.export.manifest import AnalogBlockInfo
from hybridc.plan import PlanFileError, read_plan
from hybridc.train.checkpoint import CheckpointError, load_checkpoint
from hybridc.train.experiment import ConfigError, ExperimentConfig, validate_config
from hybridc.train.loop import train
from hybridc.train.metrics import strip_timings
from hybridc.train.run_lock import LOCK_NAME, RunDirError, RunLock

BASE = {
    "train_subset": 96,
    "test_subset": 32,
    "batch_size": 16,
    "epochs": 1,
    "t1": 4,
    "t2": 2,
    "model_kwargs": {"sizes": [64, 32, 32, 10]},
    "progress": False,
    "lr": 1e-2,
}


def cfg(**kw: object) -> ExperimentConfig:
    return ExperimentConfig(**(BASE | kw))


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def _tree(d: Path) -> dict[str, bytes]:
    return {p.relative_to(d).as_posix(): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


# ---- run directories: one writer, unique names, nobody else's files -------------------------------------


def test_default_run_dirs_started_together_are_distinct_and_resumable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import hybridc.train.run_dir as R

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(R, "default_run_name", lambda c: "same-second-name")  # as if started in one second
    a = train(cfg(seed=1))
    b = train(cfg(seed=2))
    assert a.run_dir != b.run_dir and a.run_dir.parent == b.run_dir.parent == Path("runs")
    for r in (a, b):
        assert not (r.run_dir / LOCK_NAME).exists()  # released at the end
        again = train(resume=r.run_dir)  # each is a complete run of its own
        assert strip_timings(again.records) == strip_timings(r.records)


def test_second_writer_is_refused_and_stale_lock_is_taken_over(tmp_path: Path) -> None:
    run = tmp_path / "run"
    with RunLock(run):  # another live process (here: this one) holds the directory
        with pytest.raises(RunDirError, match=f"in use by another hybridc process \\(pid {os.getpid()}"):
            train(cfg(), out=run)
        assert sorted(p.name for p in run.iterdir()) == [LOCK_NAME]  # nothing written by the refused run
    (run / LOCK_NAME).write_text(json.dumps({"pid": _dead_pid(), "host": os.uname().nodename}))
    (run / ".checkpoint.pt.k2j4_x9.tmp").write_bytes(b"half a checkpoint")  # killed while saving
    res = train(cfg(), out=run)  # a lock left by a killed process is stale
    assert len(res.records) == 1 and not (run / LOCK_NAME).exists()
    assert not (run / ".checkpoint.pt.k2j4_x9.tmp").exists()


def test_failed_setup_leaves_no_lock_and_no_empty_directory(tmp_path: Path) -> None:
    run = tmp_path / "fresh"
    with pytest.raises(ConfigError, match="model_kwargs.sizes"):
        train(cfg(model_kwargs={"sizes": [63, 10]}), out=run)
    assert not run.exists()


def test_out_refuses_a_directory_that_is_not_a_run_unless_force(tmp_path: Path) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "config.json").write_text('{"my": "settings"}')
    (mine / "notes.txt").write_text("precious")
    with pytest.raises(RunDirError, match="not a hybridc run directory"):
        train(cfg(), out=mine)
    assert (mine / "config.json").read_text() == '{"my": "settings"}'
    res = train(cfg(), out=mine, force=True)
    assert len(res.records) == 1 and (mine / "notes.txt").read_text() == "precious"


def test_resuming_a_finished_run_keeps_its_summary(tmp_path: Path) -> None:
    run = tmp_path / "run"
    train(cfg(), out=run)
    before = {n: (run / n).read_bytes() for n in ("summary.json", "config.json", "metrics.jsonl")}
    again = train(resume=run)
    assert len(again.records) == 1
    assert {n: (run / n).read_bytes() for n in before} == before


# ---- checkpoints and plans cannot change unnoticed --------------------------------------------------------


def _flip_inside_weight(path: Path, n: int = 40) -> None:
    """Flip `n` bytes inside the stored bytes of the checkpoint's largest weight tensor (torch's zip format
    stores them raw; torch itself does not notice)."""
    ck = torch.load(path, weights_only=True)
    w = max(ck["model"].values(), key=lambda t: t.numel())
    raw = w.contiguous().numpy().tobytes()
    data = bytearray(path.read_bytes())
    at = bytes(data).find(raw)
    assert at >= 0
    for i in range(at + 100, at + 100 + n):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))
    torch.load(path, weights_only=True)  # still loads: only the digest can tell


def test_corrupted_checkpoint_and_edited_plan_are_refused(tmp_path: Path) -> None:
    run = tmp_path / "run"
    train(cfg(schedule="none"), out=run)
    good = (run / "checkpoint.pt").read_bytes()
    _flip_inside_weight(run / "checkpoint.pt")
    with pytest.raises(CheckpointError, match="does not match the SHA-256 digest"):
        train(resume=run, resume_overrides={"epochs": 2})
    with pytest.raises(ExportError, match="does not match the SHA-256 digest"):
        load_run(run)
    (run / "checkpoint.pt").write_bytes(good)
    plan = json.loads((run / "plan.json").read_text())
    plan["config"]["hardsigmoid_slope"] = 0.25
    (run / "plan.json").write_text(json.dumps(plan, indent=2))
    with pytest.raises(CheckpointError, match="plan.json was changed after the run wrote it"):
        train(resume=run, resume_overrides={"epochs": 2})
    with pytest.raises(ExportError, match="plan.json was changed after the run wrote it"):
        load_run(run)
    (run / "checkpoint.pt").write_bytes(os.urandom(2000))
    with pytest.raises(CheckpointError, match="corrupt") as info:
        load_checkpoint(run / "checkpoint.pt")
    assert "weights_only" not in str(info.value)


def test_checkpoint_of_unsafe_objects_gets_no_unsafe_advice(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.pt"
    torch.save({"x": Path("/")}, path)  # a pickled object that is not plain data
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    assert "weights_only" not in str(info.value) and "never unpickles" in str(info.value)


# ---- exports: publish only what passed; no staging left; settings validated ------------------------------


def _tiny(mode: str = "sync") -> object:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Flatten(), nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 3)
    )
    return hc_compile(net, (torch.randn(2, 3, 4),), max_block_size=3, solver={"t1": 6, "mode": mode})


@pytest.fixture(scope="module")
def good_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("good") / "pub"
    assert export_ffebm(_tiny(), d).report.ok
    return d


def _tanh_net() -> object:
    """A model whose tanh neurons onnxruntime computes ~1e-7 away from torch: a check at 1e-12 fails."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Flatten(), nn.Linear(12, 16), nn.Tanh(), nn.Linear(16, 8), nn.Tanh(), nn.Linear(8, 3)
    )
    return hc_compile(net, (torch.randn(2, 3, 4),), max_block_size=2, activation="keep", solver={"t1": 6})


def test_failed_check_keeps_the_previous_export_and_stale_staging_is_removed(tmp_path: Path) -> None:
    pub = tmp_path / "pub"
    assert export_ffebm(_tanh_net(), pub).published
    before = _tree(pub)
    dead = tmp_path / f".pub.tmp-{_dead_pid()}-abc123"  # left by an export killed with -9
    old_style = tmp_path / ".pub.tmp-k2j4_x9"  # from a version without pids in the name
    running = tmp_path / ".pub.tmp-1-live00"  # pid 1 is alive: another export in progress
    for d in (dead, old_style, running):
        d.mkdir()
    res = export_ffebm(_tanh_net(), pub, tol=1e-12)  # the check fails
    assert not res.published and not res.report.ok
    assert _tree(pub) == before and verify_export(pub).ok  # the good export is untouched
    assert res.kept is not None and res.kept.name.startswith("pub.failed-")
    report = json.loads((res.kept / "verify-report.json").read_text())
    assert report["ok"] is False and (res.kept / "manifest.json").is_file()
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted(["pub", res.kept.name, running.name])


@pytest.mark.parametrize(
    "kw,fragment",
    [
        ({"tol": -1.0}, "--tol must be"),
        ({"tol": float("nan")}, "--tol must be"),
        ({"opset": 99}, "--opset 99 is not supported"),
        ({"opset": 16}, "--opset 16 is not supported"),
        ({"batch": 10**9}, "out of range"),
    ],
)
def test_export_settings_are_validated_before_any_work(tmp_path: Path, kw: dict, fragment: str) -> None:
    ff = _tiny()
    with pytest.raises(ExportError, match=fragment):
        export_ffebm(ff, tmp_path / "x", **kw)
    assert not any(tmp_path.iterdir())


def _reseal(src: Path, dst: Path, edit: object) -> None:
    shutil.copytree(src, dst)
    m = Manifest.load(dst)
    edit(m)
    m.save(dst / "manifest.json")  # a consistent forger: the digest is recomputed


def _first_analog(m: Manifest) -> AnalogBlockInfo:
    return next(b for b in m.blocks if isinstance(b, AnalogBlockInfo))


def test_manifest_that_lies_fails_verify(good_export: Path, tmp_path: Path) -> None:
    text = (good_export / "manifest.json").read_text()
    edited = tmp_path / "edited"
    shutil.copytree(good_export, edited)
    (edited / "manifest.json").write_text(text.replace('"kind": "hardsigmoid"', '"kind": "tanh"', 1))
    with pytest.raises(ExportError, match="manifest.json was changed after export"):
        verify_export(edited)

    def tanh(m: Manifest) -> None:
        _first_analog(m).neurons[0].activation.kind = "tanh"
        _first_analog(m).neurons[0].activation.params = {}

    def slope(m: Manifest) -> None:
        _first_analog(m).neurons[0].activation.params = {"slope": 0.7}

    def mode(m: Manifest) -> None:
        _first_analog(m).solver.mode = "async"

    def identity(m: Manifest) -> None:
        _first_analog(m).neurons[0].activation.kind = "identity"
        _first_analog(m).neurons[0].activation.params = {}

    def opset(m: Manifest) -> None:
        m.opset = 19

    for edit, fragment in (
        (tanh, "does not apply the manifest's activation tanh"),
        (slope, r"activation hardsigmoid\(slope=0.7\)"),
        (mode, "solver mode is async in the manifest"),
        (identity, "described as identity, but the step graph applies Clip"),
        (opset, "not the opset 19 the manifest records"),
    ):
        d = tmp_path / edit.__name__
        _reseal(good_export, d, edit)
        with pytest.raises(ExportError, match=fragment):
            verify_export(d)


def test_async_export_verifies_and_its_mode_is_checked(tmp_path: Path) -> None:
    d = tmp_path / "async"
    assert export_ffebm(_tiny("async"), d).report.ok

    def sync(m: Manifest) -> None:
        _first_analog(m).solver.mode = "sync"

    _reseal(d, tmp_path / "lie", sync)
    with pytest.raises(ExportError, match="solver mode is sync in the manifest"):
        verify_export(tmp_path / "lie")


# ---- finite settings, everywhere --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fields,fragment",
    [
        ({"hardsigmoid_slope": float("inf")}, "hardsigmoid_slope: Input should be a finite number"),
        ({"hardsigmoid_slope": -0.5}, "hardsigmoid_slope: Input should be greater than 0"),
        ({"beta": 1e6}, "beta: Input should be less than or equal to 1"),
        ({"beta": float("nan")}, "beta: Input should be a finite number"),
        ({"lr": float("inf")}, "lr: Input should be a finite number"),
        ({"analog": {"read_noise": float("nan")}}, "read_noise: Input should be a finite number"),
        ({"analog": {"nope": 1}}, "nope: unknown key"),
        ({"seed": 10**20}, "seed: Input should be less than or equal to 4294967295"),
    ],
)
def test_experiment_floats_must_be_finite_and_in_range(fields: dict, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment.replace("(", r"\(")):
        validate_config(fields)


def _plan_file(tmp_path: Path, edit: object) -> Path:
    plan = _tiny().plan
    data = json.loads(plan.to_json())
    edit(data)
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(data))
    return path


def test_plan_floats_and_order_are_validated(tmp_path: Path) -> None:
    def neg_slope(d: dict) -> None:
        analog = next(b for b in d["blocks"] if b["kind"] == "analog")
        analog["neurons"][0]["activation"]["params"]["slope"] = -0.5

    def inf_slope(d: dict) -> None:
        d["config"]["hardsigmoid_slope"] = float("inf")

    def cycle(d: dict) -> None:
        d["blocks"].reverse()

    for edit, fragment in (
        (neg_slope, "hardsigmoid slope must be > 0"),
        (inf_slope, "finite number"),
        (cycle, "an output of the later block"),
    ):
        with pytest.raises(PlanFileError, match=fragment):
            read_plan(_plan_file(tmp_path, edit))
    (tmp_path / "plan.json").write_text('{"version": 1, "model"')
    with pytest.raises(PlanFileError, match="not valid JSON"):
        read_plan(tmp_path / "plan.json")


# ---- training that goes wrong without diverging is warned about; bad data and models are errors ----------


def test_exploding_loss_and_chance_accuracy_are_warned(tmp_path: Path) -> None:
    boom = train(
        cfg(
            algorithm="bp",
            optimizer="sgd",
            lr=0.3,
            momentum=0.9,
            epochs=4,
            schedule="none",
            train_subset=320,
            test_subset=64,
            model_kwargs={},
        ),
        out=tmp_path / "boom",
    )  # 2.0 -> 82
    assert any("blowing up" in w for w in boom.summary["warnings"]), boom.records
    still = train(cfg(lr=1e-9, epochs=3), out=tmp_path / "still")
    assert any("at chance" in w for w in still.summary["warnings"])
    healthy = train(cfg(epochs=3, train_subset=320), out=tmp_path / "ok")
    assert healthy.summary["warnings"] == [] and healthy.records[-1]["train_acc"] > 0.3
    saved = json.loads((tmp_path / "still" / "summary.json").read_text())
    assert saved["warnings"] == still.summary["warnings"]


def test_zero_sample_dataset_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import hybridc.data as data
    from hybridc.errors import DataError

    real = data.load_dataset

    def empty_train(name: str, data_dir: object = None, split: str = "train", **kw: object) -> object:
        ds = real(name, data_dir, split, **kw)
        if split == "train":
            ds.x, ds.y = ds.x[:0], ds.y[:0]
        return ds

    monkeypatch.setattr(data, "load_dataset", empty_train)
    with pytest.raises(DataError, match="0 training samples"):
        train(cfg(), out=tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_model_producing_nan_on_its_own_is_an_error(tmp_path: Path) -> None:
    src = tmp_path / "logmodel.py"
    src.write_text(
        "import torch, torch.nn as nn\nINPUT_SHAPE = (1, 8, 8)\n"
        "class M(nn.Module):\n    def __init__(self):\n        super().__init__()\n"
        "        self.a = nn.Linear(64, 32)\n        self.b = nn.Linear(32, 10)\n"
        "    def forward(self, x):\n        return self.b(torch.relu(self.a(torch.log(x.flatten(1)))))\n"
        "def model():\n    return M()\n"
    )
    with pytest.raises(ConfigError, match="outputs NaN/Inf on the first .* before any training"):
        train(ExperimentConfig(**(BASE | {"model": str(src), "model_kwargs": {}})), out=tmp_path / "run")


# ---- the command line: one `error:` line (exit 2) for every bad input ---------------------------------------


def _cli(*args: str) -> tuple[int, str]:
    """Run `hybridc ARGS` in-process, as `hybridc.cli.main` would: (exit status, output + error line)."""
    from typer.testing import CliRunner

    from hybridc.cli import app, user_error

    res = CliRunner().invoke(app, list(args))
    exc = res.exception
    if exc is not None and not isinstance(exc, SystemExit):
        message = user_error(exc)
        assert message is not None, "".join(traceback.format_exception(exc))
        return 2, res.output + "error: " + message
    return res.exit_code, res.output


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("attack")
    out = {"root": root}
    (root / "dir").mkdir()
    (root / "truncated.json").write_text('{"version": 1, "blocks": [')
    (root / "exits.py").write_text("import sys\nsys.exit(0)\n")
    (root / "inf_constants.json").write_text('{"analog_mac_pj": 1e999}')  # json reads it as inf
    mine = root / "mine"
    mine.mkdir()
    (mine / "config.json").write_text("{}")
    (mine / "metrics.jsonl").write_text("mine\n")
    out["mine"] = mine
    plan = json.loads(_tiny().plan.to_json())
    plan["blocks"].reverse()
    (root / "cyclic.json").write_text(json.dumps(plan))
    run = root / "run"
    run.mkdir()
    (run / "config.json").write_text(ExperimentConfig(**BASE).to_json())
    (run / "checkpoint.pt").write_bytes(os.urandom(3000))
    out["run"] = run
    return out


CASES = [
    # (argv with {root}/{mine}/{run} placeholders, expected fragment)
    (["partition", "mlp", "-f", "json", "-o", "{root}/dir"], "is a directory"),
    (["report", "mlp", "-o", "{root}/missing/dir/x"], "does not exist"),
    (["report", "mlp", "--constants", "{root}/inf_constants.json"], "Input should be a finite number"),
    (["partition", "mlp", "--hardsigmoid-slope", "inf"], "finite number"),
    (["partition", "mlp", "--hardsigmoid-slope", "-1"], "greater than 0"),
    (["partition", "mlp", "--input-shape", "100000,100000,100000"], "values per sample"),
    (["partition", "{root}/exits.py", "--input-shape", "4"], "called sys.exit(0)"),
    (["train", "--plan", "{root}/truncated.json"], "not valid JSON"),
    (["train", "--plan", "{root}/cyclic.json"], "an output of the later block"),
    (["train", "--analog", '{"nope": 1}'], "nope: unknown key"),
    (["train", "--analog", '{"read_noise": -1}'], "read_noise: Input should be greater than or equal to 0"),
    (["train", "--analog", "[1]"], "must be a JSON object"),
    (["train", "--device", "tpu"], "'tpu' is not one of"),
    (["train", "--seed", "99999999999999999999"], "seed: Input should be less than or equal to"),
    (["train", "--hardsigmoid-slope", "inf"], "hardsigmoid_slope: Input should be a finite number"),
    (["train", "--hardsigmoid-slope", "-0.5"], "hardsigmoid_slope: Input should be greater than 0"),
    (["train", "--beta", "1e6"], "beta: Input should be less than or equal to 1"),
    (["train", "--beta", "nan"], "beta: Input should be a finite number"),
    (["train", "--lr", "inf"], "lr: Input should be a finite number"),
    (["train", "--out", "{mine}"], "not a hybridc run directory"),
    (["train", "--resume", "{run}"], "is corrupt or not a hybridc checkpoint"),
    (["export", "mlp", "-o", "{root}/x", "--tol", "-1"], "--tol must be a finite number > 0"),
    (["export", "mlp", "-o", "{root}/x", "--tol", "nan"], "--tol must be a finite number > 0"),
    (["export", "mlp", "-o", "{root}/x", "--opset", "99"], "--opset 99 is not supported"),
    (["export", "mlp", "-o", "{root}/x", "--batch", "1000000000"], "out of range"),
    (["export", "mlp", "-o", "{root}/x", "--plan", "{root}/cyclic.json"], "an output of the later block"),
    (["export", "mlp", "-o", "{root}/x", "--seed", "99999999999999999999"], "--seed"),
    (["verify", "{root}/dir", "--tol", "-1"], "--tol must be a finite number > 0"),
    (["gradcheck", "mlp", "--plot", "{root}/missing/dir/x.png"], "--plot"),
    (["gradcheck", "mlp", "--device", "tpu"], "--device must be cpu or cuda"),
]


@pytest.mark.parametrize(
    "argv,fragment", CASES, ids=[" ".join(a[:3]) + f" [{i}]" for i, (a, _) in enumerate(CASES)]
)
def test_cli_bad_input_is_one_clear_error(files: dict[str, Path], argv: list[str], fragment: str) -> None:
    args = [
        a.replace("{root}", str(files["root"]))
        .replace("{mine}", str(files["mine"]))
        .replace("{run}", str(files["run"]))
        for a in argv
    ]
    code, text = _cli(*args)
    assert code == 2, text
    assert fragment in text, text
    assert "weights_only=False" not in text
    assert not (files["root"] / "x").exists()  # no export was written
    assert (files["mine"] / "metrics.jsonl").read_text() == "mine\n"  # nobody's files were touched


@pytest.mark.slow
def test_sigterm_during_export_removes_its_staging_directory(tmp_path: Path) -> None:
    """`hybridc export` killed with SIGTERM while writing: its staging directory goes with it."""
    import signal
    import time

    out = tmp_path / "pub"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "hybridc",
            "export",
            "mlp",
            "--model-kwargs",
            '{"sizes": [784, 16, 10]}',
            "-n",
            "2",
            "--t1",
            "5",
            "-o",
            str(out),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 120
    while time.time() < deadline and not any(p.name.startswith(".pub.tmp-") for p in tmp_path.iterdir()):
        time.sleep(0.05)
    assert any(p.name.startswith(".pub.tmp-") for p in tmp_path.iterdir()), "the export never started staging"
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=120)
    assert proc.returncode == 143, proc.stderr.read()
    assert sorted(p.name for p in tmp_path.iterdir()) == []
