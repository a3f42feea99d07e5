"""`hybridc train --analog-optimizer`: which parameters the analog optimizer owns, that the device bound
holds through training, that Tiki-Taka's second array survives a resume, and the config errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from hybridc.analog.optimizers import AnalogSGD, TikiTaka
from hybridc.train.experiment import ExperimentConfig
from hybridc.train.loop import Trainer, train
from hybridc.train.metrics import strip_timings
from hybridc.train.optimizers import analog_weights, make_optimizer
from tests.fixtures.experiments import smaller as cfg


def test_analog_weights_get_the_analog_optimizer_and_the_rest_adam(tmp_path: Path) -> None:
    trainer = Trainer(
        cfg(analog_optimizer="analog-sgd", analog_tau=0.3, analog_lr=0.05, epochs=1), out=tmp_path / "r"
    )
    trainer.run()
    digital, analog = trainer.opt.optimizers
    assert isinstance(digital, torch.optim.Adam) and isinstance(analog, AnalogSGD)
    a_ids = {id(p) for g in analog.param_groups for p in g["params"]}
    d_ids = {id(p) for g in digital.param_groups for p in g["params"]}
    all_ids = {id(p) for p in trainer.module.parameters()}
    assert a_ids.isdisjoint(d_ids) and a_ids | d_ids == all_ids
    blocks = trainer.module.analog_blocks.values()
    weights = {id(p) for b in blocks for p in b.parameters() if p.dim() >= 2}
    assert a_ids == weights and len(weights) == 3  # 64→32→32 block and the 32→10 head block
    assert analog.param_groups[0]["initial_lr"] == 0.05 and analog.param_groups[0]["tau"] == 0.3


def test_analog_sgd_keeps_weights_inside_the_device_bound(tmp_path: Path) -> None:
    tau = 0.05
    res = train(cfg(analog_optimizer="analog-sgd", analog_tau=tau, analog_lr=0.5), out=tmp_path / "r")
    state = torch.load(tmp_path / "r" / "checkpoint.pt", weights_only=True)["model"]
    mats = [v for k, v in state.items() if v.dim() >= 2]
    assert mats and all(float(v.abs().max()) <= tau + 1e-7 for v in mats)
    assert max(float(v.abs().max()) for v in mats) > 0.9 * tau  # the bound is reached: the test can fail
    assert len(res.records) == 2


def test_bp_baseline_analog_weights_are_linear_and_conv_weights() -> None:
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2), torch.nn.Flatten(), torch.nn.Linear(2, 3)
    )
    got = analog_weights(model)
    assert [p.shape for p in got] == [model[0].weight.shape, model[3].weight.shape]
    opt = make_optimizer(ExperimentConfig(algorithm="bp", analog_optimizer="sgd"), model)
    assert len(opt.optimizers) == 2 and isinstance(opt.optimizers[1], torch.optim.SGD)


def test_tiki_taka_resume_equals_uninterrupted(tmp_path: Path) -> None:
    """The P array lives in the optimizer state: a run extended from its checkpoint continues exactly."""
    kw = {
        "analog_optimizer": "tiki-taka",
        "analog_lr": 0.05,
        "analog_tau": 0.5,
        "transfer_lr": 0.01,
        "schedule": "none",
    }
    full = train(cfg(epochs=2, **kw), out=tmp_path / "full")
    train(cfg(epochs=1, **kw), out=tmp_path / "one")
    ck = torch.load(tmp_path / "one" / "checkpoint.pt", weights_only=True)
    tt_state = ck["optimizer"]["optimizers"][1]["state"]
    assert tt_state and all(float(s["P"].abs().sum()) > 0 for s in tt_state.values())
    resumed = train(resume=tmp_path / "one", resume_overrides={"epochs": 2})
    assert strip_timings(resumed.records) == strip_timings(full.records)
    trainer = Trainer(cfg(**kw, epochs=1, train_subset=16), out=tmp_path / "x")
    trainer.run()
    assert isinstance(trainer.opt.optimizers[1], TikiTaka)


@pytest.mark.parametrize(
    "kw, needle",
    [
        ({"analog_lr": 0.1}, "only apply with analog_optimizer"),
        (
            {"analog_optimizer": "analog-sgd", "transfer_lr": 0.1},
            "only applies to analog_optimizer=tiki-taka",
        ),
        ({"analog_optimizer": "adam"}, "analog_optimizer"),
        ({"analog_optimizer": "sgd", "analog_tau": 0.0}, "analog_tau"),
    ],
)
def test_config_errors(kw: dict, needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        cfg(**kw)


def test_cli_flags_reach_the_config(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from hybridc.cli import app

    out = tmp_path / "run"
    r = CliRunner().invoke(
        app,
        [
            "train",
            "--epochs",
            "1",
            "--train-subset",
            "64",
            "--test-subset",
            "32",
            "--analog-optimizer",
            "tiki-taka",
            "--analog-lr",
            "0.02",
            "--analog-tau",
            "0.7",
            "--transfer-lr",
            "0.005",
            "--transfer-every",
            "2",
            "--no-progress",
            "--out",
            str(out),
        ],
    )
    assert r.exit_code == 0, r.output
    saved = ExperimentConfig.model_validate_json((out / "config.json").read_text())
    assert (
        saved.analog_optimizer,
        saved.analog_lr,
        saved.analog_tau,
        saved.transfer_lr,
        saved.transfer_every,
    ) == ("tiki-taka", 0.02, 0.7, 0.005, 2)
    assert "tiki-taka lr 0.02, τ 0.7" in r.output
