"""Benchmark rows: each row one run directory; a finished row is read back, not retrained; earlier results
merge into the same table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hybridc.train.benchmark_rows import run_rows, select_rows

TINY = {
    "train_subset": 96,
    "test_subset": 48,
    "batch_size": 16,
    "epochs": 1,
    "t1": 6,
    "t2": 3,
    "model_kwargs": {"sizes": [64, 32, 32, 10]},
    "progress": False,
    "lr": 1e-2,
}


def test_rows_run_resume_and_merge(tmp_path: Path) -> None:
    rows = {"ep": TINY, "bp": TINY | {"algorithm": "bp"}}
    first = run_rows(rows, ["ep"], tmp_path)
    assert set(first) == {"ep"} and first["ep"]["epochs"] == 1 and len(first["ep"]["test_acc_per_epoch"]) == 1
    stamp = (tmp_path / "ep" / "checkpoint.pt").stat().st_mtime_ns
    saved = tmp_path / "first.json"
    saved.write_text(json.dumps(first))
    again = run_rows(rows, ["ep", "bp"], tmp_path)
    assert (
        tmp_path / "ep" / "checkpoint.pt"
    ).stat().st_mtime_ns == stamp  # finished: read back, not retrained
    assert again["ep"]["final_test_acc"] == first["ep"]["final_test_acc"]
    merged = run_rows(rows, [], tmp_path, merge=[saved])
    assert merged == json.loads(saved.read_text())
    assert again["bp"]["config"]["algorithm"] == "bp"
    assert select_rows(" bp, ep ", rows) == ["bp", "ep"]
    with pytest.raises(ValueError, match=r"unknown part\(s\) \['dhn'\]; choose from ep, bp"):
        select_rows("ep,dhn", rows)
