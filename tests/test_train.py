"""`hybridc train`: experiment config (file < flags, unknown keys rejected), the run directory's contents,
the bp baseline, every gradient mode, the host-sync budget of the loop, and the command line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hybridc.plan import Plan
from hybridc.train.build import build_model, compile_model
from hybridc.train.checkpoint import load_checkpoint
from hybridc.train.experiment import ConfigError, ExperimentConfig, resolve_config, validate_config
from hybridc.train.loop import train
from tests.fixtures.experiments import TINY, tiny


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "hybridc", "train", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=600,
    )


# ------------------------------------------------------------------------------------------- config
def test_config_file_then_flags_and_unknown_keys(tmp_path: Path) -> None:
    f = tmp_path / "exp.yaml"
    f.write_text("data: Fashion_MNIST\nlr: 0.01\nepochs: 3\nalgorithm: bp\n")
    cfg = resolve_config(f, {"lr": 0.5, "epochs": None})
    assert cfg.data == "fashion-mnist" and cfg.lr == 0.5 and cfg.epochs == 3 and cfg.algorithm == "bp"
    j = tmp_path / "exp.json"
    j.write_text(json.dumps({"batch_size": 7, "t1": 9}))
    assert resolve_config(j).batch_size == 7
    bad = tmp_path / "bad.yaml"
    bad.write_text("learning_rate: 0.1\nepochs: 0\n")
    with pytest.raises(ConfigError) as exc:
        resolve_config(bad)
    msg = str(exc.value)
    assert "learning_rate: unknown key" in msg and "epochs" in msg and str(bad) in msg
    with pytest.raises(ConfigError, match="unknown dataset 'nope'"):
        resolve_config(None, {"data": "nope"})
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        resolve_config(tmp_path / "list.yaml")
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_config(tmp_path / "missing.yaml")


def test_embedded_default_has_a_multi_layer_analog_block() -> None:
    cfg = ExperimentConfig()
    assert cfg.model is None and cfg.data == "digits" and cfg.algorithm == "ep"
    model, example = build_model(cfg, (1, 8, 8), 10)
    ff = compile_model(cfg, model, example)
    assert max(len(b.weight_layers) for b in ff.plan.analog_blocks) >= 2
    assert [m.in_features for m in model.modules() if isinstance(m, torch.nn.Linear)] == [64, 256, 256]


def test_model_fitting_errors() -> None:
    with pytest.raises(ConfigError, match="first size must be 64"):
        build_model(ExperimentConfig(model="mlp", model_kwargs={"sizes": [784, 10]}), (1, 8, 8), 10)
    with pytest.raises(ConfigError, match="zoo models only"):
        build_model(
            ExperimentConfig(model="tests/fixtures/small_mlp.py", model_kwargs={"a": 1}), (1, 8, 8), 10
        )


# --------------------------------------------------------------------------------------- run directory
def test_ep_run_directory_contents(tmp_path: Path) -> None:
    run = tmp_path / "run"
    res = train(tiny(epochs=3), out=run)
    assert not res.interrupted and res.run_dir == run
    for name in ("config.json", "plan.json", "metrics.jsonl", "checkpoint.pt", "curves.png", "summary.json"):
        assert (run / name).is_file(), name
    saved = ExperimentConfig.model_validate_json((run / "config.json").read_text())
    given = tiny(epochs=3)
    assert {k: getattr(saved, k) for k in given.model_fields_set - {"model_kwargs"}} == {
        k: getattr(given, k) for k in given.model_fields_set - {"model_kwargs"}
    }
    assert saved.model_kwargs == given.model_kwargs | {"in_shape": [1, 8, 8]}  # the factory's data argument
    plan = Plan.load(run / "plan.json")
    # what ran, not nulls: the partition settings of the compiled plan, the input size, the feedback bound
    assert saved.max_block_size == plan.config.max_block_size == 2 and saved.eb_kind == "dhn"
    assert saved.activation == "hardsigmoid" and saved.hardsigmoid_slope == plan.config.hardsigmoid_slope
    assert saved.input_size == 8 and saved.augment == "none" and saved.feedback_gain == 0.9
    assert res.config == saved
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2, 3]
    names = {b.name for b in plan.analog_blocks}
    for r in lines:
        assert set(r["residual"]) == names
        assert all(v >= 0 and v == v for v in r["residual"].values())
        assert 0 <= r["train_acc"] <= 1 and 0 <= r["test_acc"] <= 1 and r["samples_per_s"] > 0
    # it learns: loss falls and accuracy is far above chance (10 %) on held-out digits
    assert lines[-1]["train_loss"] < lines[0]["train_loss"]
    assert lines[-1]["test_acc"] > 0.5
    assert (run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    ck = load_checkpoint(run / "checkpoint.pt")
    assert ck["epoch"] == 3 and ck["batch"] == 0 and ck["partial"] is None
    summary = json.loads((run / "summary.json").read_text())
    assert summary["epochs_done"] == 3 and summary["final_test_acc"] == lines[-1]["test_acc"]
    total = sum(r["samples_per_s"] * r["epoch_time_s"] for r in lines) / sum(r["epoch_time_s"] for r in lines)
    assert summary["samples_per_s"] == pytest.approx(total)  # the mean over the epochs, not the last one
    best = max(lines, key=lambda r: r["test_acc"])
    ck_best = load_checkpoint(run / "best.pt", resumable=False)
    assert (
        ck_best["epoch"] == best["epoch"] == summary["best_epoch"] and ck_best["test_acc"] == best["test_acc"]
    )
    assert summary["analog_blocks"] == len(names) and summary["params_analog"] > 0
    assert not list(run.glob(".*.tmp")), "temporary files left behind"


def test_progress_bars_and_epoch_lines(tmp_path: Path) -> None:
    import io

    from rich.console import Console

    buf = io.StringIO()
    console = Console(file=buf, force_terminal=True, width=200, color_system=None)
    train(tiny(epochs=1, train_subset=64, progress=True, log_every=2), out=tmp_path / "p", console=console)
    text = buf.getvalue()
    for needle in ("epoch 1/1", "batches", "samples/s", "ETA", "loss", "acc", "summary", "final test acc"):
        assert needle in text, needle


def test_cifar_files_vgg_with_crop_flip(tmp_path: Path) -> None:
    """A 32x32 dataset from files in the real on-disk format, a zoo VGG fitted to it, on-device random crop +
    flip chosen automatically."""
    import pickle

    import numpy as np

    from hybridc.train.loop import Trainer

    folder = tmp_path / "cifar10" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        obj = {b"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8), b"labels": [0, 1, 2, 3]}
        (folder / name).write_bytes(pickle.dumps(obj))
    cfg = ExperimentConfig(
        model="vgg-paper",
        model_kwargs={"width": 0.0625},
        data="cifar10",
        data_dir=str(tmp_path),
        download=False,
        epochs=1,
        batch_size=10,
        t1=4,
        t2=2,
        progress=False,
    )
    trainer = Trainer(cfg, out=tmp_path / "run")
    res = trainer.run()
    assert trainer.augment == "crop-flip" and trainer.train_loader.num_samples == 20
    # (the paper's VGG keeps its one BatchNorm as an analog block's entry: no digital parameters to count)
    assert len(res.records) == 1 and res.summary["params_analog"] > 0 and res.summary["analog_blocks"] >= 2


def test_bp_baseline_trains_the_original_model(tmp_path: Path) -> None:
    res = train(tiny(algorithm="bp", epochs=3), out=tmp_path / "bp")
    assert not (tmp_path / "bp" / "plan.json").exists()
    assert res.summary["analog_blocks"] == 0 and res.summary["params_analog"] == 0
    assert all(r["residual"] == {} for r in res.records)
    assert res.records[-1]["test_acc"] > 0.6


def test_train_compiles_exactly_a_given_plan(tmp_path: Path) -> None:
    from hybridc.api import partition

    model, example = build_model(tiny(), (1, 8, 8), 10)
    plan = partition(model, example, max_block_size=3, hardsigmoid_slope=1.0)
    plan.save(tmp_path / "p.json")
    res = train(tiny(epochs=1, train_subset=32, plan=str(tmp_path / "p.json")), out=tmp_path / "run")
    saved = Plan.load(res.run_dir / "plan.json")
    # what the compiler's feedback-gain bound rescaled is recorded in the run's plan on top of the given one
    saved.decisions = [d for d in saved.decisions if d.action not in ("rescaled", "unconstrained")]
    assert saved == plan
    assert res.summary["analog_blocks"] == 1
    with pytest.raises(ConfigError, match="either a plan or partition settings"):
        validate_config(TINY | {"plan": str(tmp_path / "p.json"), "max_block_size": 2})


@pytest.mark.slow
def test_torch_compile_path_trains(tmp_path: Path) -> None:
    res = train(tiny(epochs=1, compile=True, train_subset=64), out=tmp_path / "c")
    plain = train(tiny(epochs=1, train_subset=64), out=tmp_path / "p")
    assert res.records[0]["train_loss"] == pytest.approx(plain.records[0]["train_loss"], rel=1e-3)


@pytest.mark.parametrize("algorithm", ["id", "bptt"])
def test_other_gradient_modes_train(tmp_path: Path, algorithm: str) -> None:
    # one batch: ID solves its adjoint to 1e-10 with a host check per iteration (slow by design)
    res = train(
        tiny(algorithm=algorithm, epochs=1, train_subset=16, test_subset=16), out=tmp_path / algorithm
    )
    assert len(res.records) == 1 and 0 < res.records[0]["train_loss"] < 10


def test_amp_bf16_keeps_analog_blocks_in_float32(tmp_path: Path) -> None:
    res = train(tiny(amp="bf16", epochs=1), out=tmp_path / "amp")
    assert res.records[0]["test_acc"] > 0.1


def test_no_host_sync_per_batch_in_the_loop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Count tensor->host reads made by hybridc code outside the solver (whose end-of-phase divergence
    check is its own, documented sync): with log_every above the batch count they happen only per epoch."""
    counts = {"n": 0}
    solver = str(Path("hybridc", "energy", "solver.py"))
    pkg = str(Path(__file__).resolve().parents[1] / "hybridc")

    def counting(name: str):  # noqa: ANN202
        orig = getattr(torch.Tensor, name)

        def wrapper(self, *a, **k):  # noqa: ANN001, ANN002, ANN003, ANN202
            caller = sys._getframe(1).f_code.co_filename
            if caller.startswith(pkg) and not caller.endswith(solver):
                counts["n"] += 1
            return orig(self, *a, **k)

        return wrapper

    for name in ("item", "tolist", "__bool__", "__float__", "__int__"):
        monkeypatch.setattr(torch.Tensor, name, counting(name))
    seen = []
    for batches in (6, 18):
        counts["n"] = 0
        train(
            tiny(epochs=2, train_subset=batches * 16, batch_size=16, log_every=1000),
            out=tmp_path / f"s{batches}",
        )
        seen.append(counts["n"])
    # independent of the number of batches: per epoch one read of the train sums and one of the test sums
    # (+ 2 one-off reads when the data loaders are built, + 1 when the compiler calibrates the feedback gain
    # of the one multi-layer block, + 1 for the check that the model's own output is finite on the first batch)
    assert seen[0] == seen[1] <= 2 * 2 + 2 + 1 + 1, seen


# ------------------------------------------------------------------------------------------------- CLI
def test_cli_train_flags(tmp_path: Path) -> None:
    exp = tmp_path / "exp.yaml"
    exp.write_text("epochs: 5\nlr: 0.003\nmodel_kwargs: {sizes: [64, 24, 24, 10]}\n")
    r = cli(
        "--config",
        str(exp),
        "--epochs",
        "1",
        "--train-subset",
        "64",
        "--test-subset",
        "32",
        "--t1",
        "5",
        "--t2",
        "2",
        "--max-block-size",
        "3",
        "--hardsigmoid-slope",
        "1.0",
        "--solver-mode",
        "async",
        "--init",
        "goe",
        "--out",
        str(tmp_path / "r"),
        "--no-progress",
    )
    assert r.returncode == 0, r.stderr
    cfg = json.loads((tmp_path / "r" / "config.json").read_text())
    assert (
        cfg["epochs"] == 1 and cfg["lr"] == 0.003 and cfg["solver_mode"] == "async" and cfg["init"] == "goe"
    )
    plan = Plan.load(tmp_path / "r" / "plan.json")
    assert plan.config.max_block_size == 3 and plan.config.hardsigmoid_slope == 1.0
    assert "summary" in r.stdout and "final test acc" in r.stdout


def test_cli_errors_are_one_line_exit_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from hybridc.cli import main

    done = tmp_path / "done"
    done.mkdir()
    (done / "checkpoint.pt").write_bytes(b"")
    bad = tmp_path / "bad.yaml"
    bad.write_text("epoch: 3\n")
    for args, needle in (
        (("--config", str(bad)), "epoch: unknown key"),
        (("--data", "imagenet64"), "unknown dataset"),
        (("--model-kwargs", "[1]"), "JSON object"),
        (("--resume", str(tmp_path / "nothing")), "no such run directory"),
        (("--out", str(done)), "already holds a run"),
    ):
        monkeypatch.setattr(sys, "argv", ["hybridc", "train", *args])
        with pytest.raises(SystemExit) as exc:
            main()
        err = capsys.readouterr().err
        assert exc.value.code == 2, (args, err)
        assert needle in err and "Traceback" not in err, err


def test_unconverged_free_phase_is_reported_once_per_block(tmp_path: Path) -> None:
    import io

    from rich.console import Console

    def run(t1: int, name: str) -> tuple[str, list]:
        buf = io.StringIO()
        res = train(
            tiny(epochs=2, t1=t1, train_subset=64),
            out=tmp_path / name,
            console=Console(file=buf, width=300, color_system=None),
        )
        return buf.getvalue(), res.records

    text, records = run(1, "short")  # one step from the initial state: far from the fixed point
    assert max(records[0]["residual"].values()) > 0.1
    assert text.count("away from a fixed point") == sum(
        1 for k in records[0]["residual"] if max(r["residual"][k] for r in records) > 0.1
    )
    assert "Raise --t1" in text
    text, records = run(30, "long")
    assert max(records[-1]["residual"].values()) < 0.1 and "away from a fixed point" not in text
