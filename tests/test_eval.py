"""Using a trained run: `hybridc.load_run` (the model behind its trained input transform), the best-epoch
checkpoint, `evaluate_run` (accuracy, residuals, device effects), every zoo model fitted to the bundled 8x8
digits, and what the trainer says about a run (header, warnings, progress lines, plan mismatches)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch
from rich.console import Console

import hybridc
from hybridc.data import load_dataset
from hybridc.evaluate import EvalError, evaluate_run, load_run
from hybridc.train.build import build_model, fit_model
from hybridc.train.experiment import ConfigError, ExperimentConfig
from hybridc.train.loop import train
from tests.fixtures.experiments import tiny as tiny_experiment


def tiny(**kw: object) -> ExperimentConfig:
    return tiny_experiment(**({"train_subset": 160, "test_subset": 64} | kw))


def console() -> tuple[Console, io.StringIO]:
    buf = io.StringIO()
    return Console(file=buf, force_terminal=False, width=400, color_system=None), buf


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("eval") / "run"
    train(tiny(), out=out)
    return out


# ------------------------------------------------------------------------------------------ load_run
def test_load_run_takes_raw_pixels_and_gives_the_trained_accuracy(run_dir: Path) -> None:
    assert hybridc.load_run is load_run
    model = hybridc.load_run(run_dir)
    assert not model.training and model.ffebm is model.net and model.config.data == "digits"
    test = load_dataset("digits", split="test")
    x, y = test.x[:64], test.y[:64]
    with torch.no_grad():
        logits = model(x)
        # exactly the trainer's transform: the compiled model on (x - mean) / std
        torch.testing.assert_close(logits, model.net((x - 0.3053) / 0.3760), rtol=0, atol=0)
        acc = float((logits.argmax(1) == y).float().mean())
    summary = json.loads((run_dir / "summary.json").read_text())
    assert acc == pytest.approx(summary["final_test_acc"], abs=1e-9)  # the run's own test subset
    assert model.epoch == 2 and model.checkpoint == run_dir / "checkpoint.pt"


def test_best_checkpoint_beside_the_last(run_dir: Path) -> None:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    best = max(records, key=lambda r: r["test_acc"])
    model = load_run(run_dir, "best")
    assert model.checkpoint == run_dir / "best.pt" and model.epoch == best["epoch"]
    test = load_dataset("digits", split="test")
    with torch.no_grad():
        acc = float((model(test.x[:64]).argmax(1) == test.y[:64]).float().mean())
    assert acc == pytest.approx(best["test_acc"], abs=1e-9)
    assert not list(run_dir.glob(".*.tmp"))


def test_load_run_errors(tmp_path: Path, run_dir: Path) -> None:
    from hybridc.train.checkpoint import CheckpointError

    with pytest.raises(CheckpointError, match="not a run directory"):
        load_run(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_run(tmp_path / "empty")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_run(run_dir, tmp_path / "nope.pt")


# ---------------------------------------------------------------------------------------- evaluate_run
def test_evaluate_run_accuracy_residuals_and_device_effects(run_dir: Path) -> None:
    summary = json.loads((run_dir / "summary.json").read_text())
    ideal = evaluate_run(run_dir, subset=64, device="cpu")
    assert ideal.accuracy == pytest.approx(summary["final_test_acc"], abs=1e-9) and ideal.samples == 64
    assert set(ideal.residual) == set(
        json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])["residual"]
    )
    assert all(v >= 0 for v in ideal.residual.values()) and ideal.analog is None
    same = evaluate_run(run_dir, analog={}, subset=64, device="cpu")  # {} = the ideal device: as trained here
    assert same.accuracy == ideal.accuracy and same.analog == {}
    noisy = evaluate_run(
        run_dir, analog={"read_noise": 0.3, "weight_levels": 3}, subset=64, seeds=3, device="cpu"
    )
    assert len(noisy.accuracies) == 3 and noisy.analog == {"read_noise": 0.3, "weight_levels": 3}
    # read noise on every relaxation step keeps the free phase from settling: the residual shows it
    assert max(noisy.residual.values()) > 10 * max(max(ideal.residual.values()), 1e-6)
    assert noisy.accuracy < ideal.accuracy
    assert "accuracy" in json.dumps(noisy.to_json())
    Console(file=io.StringIO()).print(noisy.table())


def test_evaluate_run_refuses_what_does_not_fit(run_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(EvalError, match="weight_level: unknown key"):
        evaluate_run(run_dir, analog={"weight_level": 8})
    with pytest.raises(EvalError, match="cifar10 .* does not fit the run's model"):
        evaluate_run(run_dir, data="cifar10")
    bp = tmp_path / "bp"
    train(tiny(algorithm="bp", epochs=1), out=bp)
    assert load_run(bp).ffebm is None
    assert evaluate_run(bp, subset=32, device="cpu").residual == {}
    with pytest.raises(EvalError, match="backprop"):
        evaluate_run(bp, analog={"read_noise": 0.1})


# ------------------------------------------------------------------------------------ zoo on digits
@pytest.mark.parametrize("name", ["mlp", "vgg-paper", "vgg-paper-12", "resnet18", "transformer", "vit"])
def test_every_zoo_model_fits_the_bundled_digits(name: str) -> None:
    from hybridc.models import zoo_facts

    cfg = ExperimentConfig(model=name)
    fit = fit_model(cfg, (1, 8, 8), 10)
    model, example = build_model(cfg, (1, 8, 8), 10)
    side = fit.input_size[0] if fit.input_size else 8
    assert tuple(example[0].shape[1:]) == (1, side, side)
    with torch.no_grad():
        assert model.eval()(example[0]).shape == (2, 10)
    facts = {f["name"]: f for f in zoo_facts()}[name]
    assert facts["fits"]["digits"] == fit.how and not fit.how.startswith("does not fit")


def test_vgg_on_digits_trains_upsampled_and_loads_for_raw_pixels(tmp_path: Path) -> None:
    con, buf = console()
    cfg = ExperimentConfig(
        model="vgg-paper",
        model_kwargs={"width": 0.0625},
        epochs=1,
        train_subset=32,
        test_subset=16,
        batch_size=16,
        t1=3,
        t2=2,
        progress=False,
    )
    train(cfg, out=tmp_path / "vgg", console=con)
    assert "input upsampled 8x8 -> 16x16" in buf.getvalue()
    saved = json.loads((tmp_path / "vgg" / "config.json").read_text())
    assert saved["input_size"] == 16 and saved["model_kwargs"]["image_size"] == 16
    model = load_run(tmp_path / "vgg")
    assert model.transform.size == (16, 16)
    raw = load_dataset("digits", split="test").x[:16]
    with torch.no_grad():
        up = torch.nn.functional.interpolate(raw, size=(16, 16), mode="bilinear")
        torch.testing.assert_close(model(raw), model.net((up - 0.3053) / 0.3760))
    summary = json.loads((tmp_path / "vgg" / "summary.json").read_text())
    assert evaluate_run(tmp_path / "vgg", subset=16, device="cpu").accuracy == pytest.approx(
        summary["final_test_acc"], abs=1e-9
    )


# ------------------------------------------------------------------------------ what the trainer says
def test_header_states_block_kind_gamma_device_effects_and_real_activation(tmp_path: Path) -> None:
    con, buf = console()
    train(
        tiny(epochs=1, eb_kind="drn", drn_gamma=2.0, analog={"read_noise": 0.01}),
        out=tmp_path / "d",
        console=con,
    )
    head = buf.getvalue()
    assert "drn (γ 2)" in head and "device effects read_noise=0.01" in head
    con, buf = console()
    train(tiny(epochs=1, activation="keep"), out=tmp_path / "k", console=con)
    head = buf.getvalue().split("\nepoch ")[0]
    assert "activation keep: relu" in head and "slope" not in head
    saved = json.loads((tmp_path / "k" / "config.json").read_text())
    assert saved["activation"] == "keep" and saved["eb_kind"] == "dhn" and saved["max_block_size"] == 2


def test_run_at_chance_is_warned_with_the_likely_cause(tmp_path: Path) -> None:
    res = train(tiny(eb_kind="drn", drn_gamma=300.0), out=tmp_path / "c")
    assert all(r["train_acc"] < 0.15 for r in res.records)  # the premise: this setting does not learn
    (warning,) = res.summary["warnings"]
    assert "at chance" in warning and "--drn-gamma 300" in warning


def test_plain_progress_lines_when_not_a_terminal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import hybridc.train.loop as T

    monkeypatch.setattr(T, "PLAIN_PROGRESS_S", 0.0)
    con, buf = console()
    train(tiny(epochs=1, progress=True, log_every=2), out=tmp_path / "p", console=con)
    lines = [x for x in buf.getvalue().splitlines() if x.startswith("epoch 1/1 batch")]
    assert [x.split()[3] for x in lines] == [f"{b}/10" for b in (2, 4, 6, 8)]
    assert all("samples/s" in x and "ETA" in x for x in lines)


def test_plan_mismatch_names_the_model_being_trained(tmp_path: Path) -> None:
    from hybridc.api import partition
    from hybridc.load import load_model

    lm = load_model("mlp", (1, 8, 8), sizes=[64, 32, 10], in_shape=[1, 8, 8])
    plan = partition(lm.model, lm.example_inputs, max_block_size=1)
    plan.save(tmp_path / "plan.json")
    with pytest.raises(ConfigError) as info:  # the plan is for a 64-32-10 MLP; this one is 64-64-64-10
        train(tiny(epochs=1, plan=str(tmp_path / "plan.json")), out=tmp_path / "m")
    msg = str(info.value)
    assert "the model being trained, mlp-default (MLP)" in msg and str(tmp_path / "plan.json") in msg
