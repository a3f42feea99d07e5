"""The summary a finished (or interrupted) training run writes to summary.json and prints as a table."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hybridc.train.build import analog_blocks

if TYPE_CHECKING:
    from hybridc.train.loop import Trainer


def run_summary(t: Trainer, wall: float, interrupted: bool) -> dict[str, Any]:
    """summary.json: what the run was, its final and best accuracies, its throughput and wall time (over
    every session of a resumed run), and the warnings it gave."""
    recs = t.log.records
    last = recs[-1] if recs else {}
    best = t.log.best()
    n_analog = sum(p.numel() for b in analog_blocks(t.module).values() for p in b.parameters())
    n_all = sum(p.numel() for p in t.module.parameters())
    times = [r["epoch_time_s"] for r in recs]
    samples = sum(r["samples_per_s"] * r["epoch_time_s"] for r in recs)
    return {
        "model": t.cfg.model_label(),
        "data": t.cfg.data,
        "algorithm": t.cfg.algorithm,
        "analog_blocks": len(t.block_names),
        "params_analog": n_analog,
        "params_digital": n_all - n_analog,
        "epochs_done": len(recs),
        "final_test_acc": last.get("test_acc"),
        "best_test_acc": best["test_acc"] if best else None,
        "best_epoch": best["epoch"] if best else None,
        "final_train_acc": last.get("train_acc"),
        "final_test_loss": last.get("test_loss"),
        "mean_epoch_time_s": sum(times) / len(times) if times else None,
        # the mean training throughput over the epochs (their samples over their training time)
        "samples_per_s": samples / sum(times) if times and sum(times) > 0 else None,
        "wall_time_s": wall,
        "device": str(t.device),
        "processes": t.ctx.world_size,
        "interrupted": interrupted,
        "run_dir": str(t.run_dir),
        "warnings": list(t.diagnosis.warnings),
    }
