"""Plumbing of the paper-reproduction benchmarks (benchmarks/splitting.py, benchmarks/paper_gradients.py) on
small generated data: rows written and resumed, the table and the equilibrium flag, the gradient figure. The
measured tables come from running the scripts on Fashion-MNIST (README, "Reproducing the paper")."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent


def _script(name: str):  # noqa: ANN202
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", ROOT / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def _fake_data(_settings: object) -> tuple:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(48, 1, 32, 32, generator=g)
    y = torch.randint(0, 10, (48,), generator=g)
    return "generated", x[:32], y[:32], x[32:], y[32:]


@pytest.mark.filterwarnings("ignore")
def test_splitting_rows_resume_and_table(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    splitting = _script("splitting")
    monkeypatch.setattr(splitting, "load_data", _fake_data)
    out = tmp_path / "rows.jsonl"
    argv = [
        "--out",
        str(out),
        "--epochs",
        "1",
        "--sizes",
        "3",
        "--seeds",
        "0",
        "--gradients",
        "ep,id",
        "--width",
        "0.03",
        "--batch-size",
        "16",
        "--eq-subset",
        "8",
        "--train-subset",
        "32",
    ]
    assert splitting.main(argv) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert {(r["max_block_size"], r["gradient"]) for r in rows} == {(3, "ep"), (3, "id")}
    for r in rows:
        assert list(r["blocks"].values()) == [3, 3]
        assert 0.0 <= r["test_acc"] <= 1.0 and r["residual"] >= 0.0 and len(r["epoch_s"]) == 1
        assert r["not_at_equilibrium"] == (
            r["residual"] > splitting.RESIDUAL_FLAG or r["acc_5x"] < r["acc_eq"] - splitting.DROP_FLAG
        )
        assert 0.0 <= r["ep_id_1mcos"] <= 2.0
    capsys.readouterr()
    assert splitting.main(argv) == 0  # resumes: nothing left to run
    text = capsys.readouterr().out
    assert "0 rows to run (2 already" in text
    assert splitting.main(argv + ["--lr", "0.01"]) == 2  # other settings: the rows are not counted as done
    assert "run with other settings (e.g. lr: 0.002 there, 0.01 now)" in capsys.readouterr().err
    assert len(out.read_text().splitlines()) == 2
    table = splitting.table(rows)
    assert "| vgg-paper | n=3: 3+3 | ep | 1 |" in table and "| vgg-paper | n=3: 3+3 | id | 1 |" in table
    assert "1.00×" in table  # the largest block size run is its own speed-up baseline


def test_paper_gradients_figure(tmp_path: Path) -> None:
    grads = _script("paper_gradients")
    layers = [
        {
            "name": f"l{i}.weight",
            "block": f"analog{i // 2}",
            "analog": True,
            "cos": 1 - 10.0**-i,
            "relerr": 10.0**-i,
            "cos_id_bptt": 1.0,
        }
        for i in range(4)
    ]
    results = {
        f"{stage}/{dt}": {
            "dtype": dt,
            "beta": 0.05,
            "loss": 2.3,
            "tol": 1e-6,
            "residuals": {"analog0": 1e-7},
            "layers": layers,
        }
        for stage in ("init", "trained")
        for dt in ("float32", "float64")
    }
    meta = {
        "width": 0.0625,
        "max_block_size": 3,
        "slope": 1.0,
        "batch": 16,
        "epochs": 1,
        "train_subset": 2000,
    }
    out = tmp_path / "g"
    out.with_suffix(".json").write_text(json.dumps({"settings": meta, "results": results}))
    assert grads.main(["--plot-only", "--out", str(out)]) == 0
    png = out.with_suffix(".png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
