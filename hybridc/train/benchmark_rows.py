"""Run the rows of an accuracy benchmark: named experiment configs, each one training run in its own run
directory, summarised as JSON-ready records (what `benchmarks/*.py` tabulate).

A row whose run directory already has a checkpoint is resumed (an interrupted benchmark continues where it
stopped, a finished row is only read back), and results of earlier invocations can be merged in, so long
rows can run separately and still end in one table.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from hybridc.train.experiment import ExperimentConfig
from hybridc.train.loop import train


def select_rows(parts: str, rows: dict[str, Any]) -> list[str]:
    """The row names of a comma-separated `--parts` value, in order; an unknown name is a ValueError."""
    wanted = [r.strip() for r in parts.split(",") if r.strip()]
    unknown = [r for r in wanted if r not in rows]
    if unknown:
        raise ValueError(f"unknown part(s) {unknown}; choose from {', '.join(rows)}")
    return wanted


def run_rows(
    rows: dict[str, dict[str, Any]],
    wanted: Iterable[str],
    out: Path,
    console: Any = None,
    merge: Iterable[Path] = (),
) -> dict[str, dict[str, Any]]:
    """Train the `wanted` rows (ExperimentConfig fields by name) under `out/<name>`; earlier results from the
    `merge` JSON files come first. Per row: final/best test accuracy, epochs, per-epoch test accuracy and
    times, median epoch time, samples/s, wall time, threads, device and the resolved config."""
    results: dict[str, dict[str, Any]] = {}
    for earlier in merge:
        results |= json.loads(Path(earlier).read_text())
    for name in wanted:
        cfg = ExperimentConfig(**rows[name])
        if console is not None:
            console.rule(name)
        run_dir = out / name
        if (run_dir / "checkpoint.pt").is_file():
            res = train(resume=run_dir, console=console)
        else:
            res = train(cfg, out=run_dir, console=console)
        s = res.summary
        times = sorted(r["epoch_time_s"] for r in res.records)
        results[name] = {
            "final_test_acc": s["final_test_acc"],
            "best_test_acc": s["best_test_acc"],
            "epochs": s["epochs_done"],
            "median_epoch_time_s": times[len(times) // 2],
            "epoch_times_s": [r["epoch_time_s"] for r in res.records],
            "test_acc_per_epoch": [r["test_acc"] for r in res.records],
            "samples_per_s": s["samples_per_s"],
            "wall_time_s": s["wall_time_s"],
            "threads": torch.get_num_threads(),
            "device": str(s.get("device", "")),
            "config": cfg.model_dump(mode="json"),
        }
    return results
