"""Checkpoints and `--resume`: an interrupted run (Ctrl-C mid-epoch, or a finished shorter run extended)
continues to exactly the metrics of an uninterrupted run; bad run directories fail clearly; checkpoints are
written atomically."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import torch

from hybridc.train import checkpoint as ckmod
from hybridc.train.checkpoint import CheckpointError, load_checkpoint
from hybridc.train.experiment import ConfigError
from hybridc.train.loop import train
from hybridc.train.metrics import strip_timings
from tests.fixtures.experiments import smaller as cfg


def sigint_at(epoch: int, batch: int):  # noqa: ANN201
    """A batch hook that presses Ctrl-C once, after `batch` batches of `epoch` (0-based)."""
    fired = {"done": False}

    def hook(e: int, b: int) -> None:
        if (e, b) == (epoch, batch) and not fired["done"]:
            fired["done"] = True
            os.kill(os.getpid(), signal.SIGINT)

    return hook


def test_ctrl_c_mid_epoch_then_resume_equals_uninterrupted(tmp_path: Path) -> None:
    full = train(cfg(), out=tmp_path / "full")
    part = train(cfg(), out=tmp_path / "part", on_batch_end=sigint_at(0, 4))
    assert part.interrupted and part.records == []
    ck = load_checkpoint(tmp_path / "part" / "checkpoint.pt")
    assert (ck["epoch"], ck["batch"]) == (0, 4) and ck["partial"]["batches"] == 4
    resumed = train(resume=tmp_path / "part")
    assert not resumed.interrupted
    assert strip_timings(resumed.records) == strip_timings(full.records)
    lines = (tmp_path / "part" / "metrics.jsonl").read_text().splitlines()
    assert strip_timings([json.loads(x) for x in lines]) == strip_timings(full.records)
    a = torch.load(tmp_path / "full" / "checkpoint.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "part" / "checkpoint.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_one_epoch_plus_resume_for_one_equals_two_epochs(tmp_path: Path) -> None:
    """`--schedule none`: a finished 1-epoch run extended with `--epochs 2` is the 2-epoch run."""
    full = train(cfg(schedule="none", epochs=2), out=tmp_path / "full")
    one = train(cfg(schedule="none", epochs=1), out=tmp_path / "one")
    assert len(one.records) == 1
    more = train(resume=tmp_path / "one", resume_overrides={"epochs": 2})
    assert strip_timings(more.records) == strip_timings(full.records)
    assert json.loads((tmp_path / "one" / "config.json").read_text())["epochs"] == 2
    again = train(resume=tmp_path / "one")  # the extended run resumes as such (nothing left to do)
    assert len(again.records) == 2 and not again.interrupted
    # the cosine schedule is laid out for the configured epochs: extending it is refused
    train(cfg(epochs=1), out=tmp_path / "cos")
    with pytest.raises(ConfigError, match="cosine schedule"):
        train(resume=tmp_path / "cos", resume_overrides={"epochs": 2})


def test_ctrl_c_at_epoch_boundary_and_finished_run(tmp_path: Path) -> None:
    part = train(cfg(epochs=3, train_subset=64), out=tmp_path / "r", on_batch_end=sigint_at(0, 4))
    assert part.interrupted and len(part.records) == 1  # 64/16 = 4 batches: stopped after the epoch
    assert load_checkpoint(tmp_path / "r" / "checkpoint.pt")["epoch"] == 1
    rest = train(resume=tmp_path / "r")
    assert [r["epoch"] for r in rest.records] == [1, 2, 3]
    # the wall time counts both sessions: at least the three epochs' training time
    assert rest.summary["wall_time_s"] >= sum(r["epoch_time_s"] for r in rest.records)
    written = (tmp_path / "r" / "summary.json").read_text()
    again = train(resume=tmp_path / "r")  # nothing left to do: no error, no new epochs
    assert [r["epoch"] for r in again.records] == [1, 2, 3]
    # ... and the finished run's summary (its wall time) is kept and shown, not replaced by this no-op's
    assert (tmp_path / "r" / "summary.json").read_text() == written
    assert again.summary == json.loads(written)


def test_resume_errors(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no such run directory"):
        train(resume=tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="config.json is missing"):
        train(resume=tmp_path / "empty")
    run = tmp_path / "run"
    train(cfg(epochs=1, train_subset=32), out=run)
    with pytest.raises(ConfigError, match=r"lr: run has 0\.01, requested 0\.5"):
        train(resume=run, resume_overrides={"lr": 0.5})
    with pytest.raises(ConfigError, match="already holds a run"):
        train(cfg(), out=run)
    good = (run / "checkpoint.pt").read_bytes()
    (run / "checkpoint.pt").write_bytes(good[: len(good) // 2])
    with pytest.raises(CheckpointError, match="corrupt"):
        train(resume=run)
    torch.save({"format": 1, "model": {}}, run / "checkpoint.pt")
    with pytest.raises(CheckpointError, match="incomplete"):
        train(resume=run)
    (run / "checkpoint.pt").unlink()
    with pytest.raises(CheckpointError, match="no checkpoint"):
        train(resume=run)


def test_checkpoint_write_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "checkpoint.pt"
    state = {k: None for k in ckmod.REQUIRED_KEYS if k != "format"} | {"config": {"a": 1}}
    ckmod.save_checkpoint(path, state)
    before = path.read_bytes()

    def broken_save(obj: object, f: object) -> None:
        Path(f).write_bytes(b"half a checkpoint")
        raise KeyboardInterrupt  # Ctrl-C while writing

    monkeypatch.setattr(ckmod.torch, "save", broken_save)
    with pytest.raises(KeyboardInterrupt):
        ckmod.save_checkpoint(path, state | {"config": {"a": 2}})
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]


def test_run_written_by_an_older_version_resumes(tmp_path: Path) -> None:
    """A run directory from before a config field (and optimizer sets) existed continues: missing fields take
    their defaults on both sides of the config check, a bare optimizer/scheduler state loads into a set."""
    full = train(cfg(schedule="none", epochs=2), out=tmp_path / "full")
    train(cfg(schedule="none", epochs=1), out=tmp_path / "old")
    newer = ("analog_optimizer", "analog_lr", "analog_tau", "transfer_lr", "transfer_every")
    cfg_path = tmp_path / "old" / "config.json"
    saved = json.loads(cfg_path.read_text())
    cfg_path.write_text(json.dumps({k: v for k, v in saved.items() if k not in newer}))
    ck_path = tmp_path / "old" / "checkpoint.pt"
    ck = load_checkpoint(ck_path)
    ck["config"] = {k: v for k, v in ck["config"].items() if k not in newer}
    ck["optimizer"] = ck["optimizer"]["optimizers"][0]
    ck["scheduler"] = ck["scheduler"]["schedulers"][0]
    ck.pop("plan_sha256")  # older checkpoints carry neither digest (load_checkpoint removed the content one)
    torch.save(ck, ck_path)
    resumed = train(resume=tmp_path / "old", resume_overrides={"epochs": 2})
    assert strip_timings(resumed.records) == strip_timings(full.records)
