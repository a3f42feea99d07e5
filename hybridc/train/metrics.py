"""Per-epoch metrics of a training run: `metrics.jsonl` (one JSON object per epoch), the loss/accuracy
curves as PNG, and the final summary table.

The metrics file is rewritten atomically after each epoch (it is small), so it always ends with a complete
line and, on `--resume`, can be cut back to the checkpoint's epoch: a crash between writing metrics and
writing the checkpoint never leaves a duplicated or missing epoch.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.table import Table
from rich.text import Text

from hybridc.files import atomic_write, atomic_write_text
from hybridc.train.run_dir import CURVES_NAME, METRICS_NAME  # noqa: F401  (their old home)

#: Keys that measure time, not learning: they legitimately differ between a run and its resumed twin.
TIMING_KEYS = frozenset({"epoch_time_s", "samples_per_s", "eval_time_s", "wall_time_s"})


class MetricsLog:
    """The list of per-epoch records of one run, mirrored to `<run_dir>/metrics.jsonl`."""

    def __init__(self, path: Path | None, records: Sequence[dict[str, Any]] = ()):
        self.path = Path(path) if path is not None else None
        self.records: list[dict[str, Any]] = list(records)

    @classmethod
    def load(cls, path: Path, upto_epoch: int | None = None) -> MetricsLog:
        """Read an existing file, keeping only epochs ≤ `upto_epoch` (the checkpoint's) when given."""
        records: list[dict[str, Any]] = []
        if path.is_file():
            for i, line in enumerate(path.read_text().splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    from hybridc.train.checkpoint import CheckpointError

                    raise CheckpointError(
                        f"{path}:{i} is not valid JSON; the metrics file is damaged"
                    ) from None
                if upto_epoch is None or rec.get("epoch", 0) <= upto_epoch:
                    records.append(rec)
        return cls(path, records)

    def append(self, record: dict[str, Any]) -> None:
        self.records.append(record)
        if self.path is not None:
            atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in self.records))

    def best(self, key: str = "test_acc") -> dict[str, Any] | None:
        recs = [r for r in self.records if r.get(key) is not None]
        return max(recs, key=lambda r: r[key]) if recs else None


def strip_timings(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Records without the timing fields (to compare a resumed run with an uninterrupted one)."""
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in records]


def _plain_log_labels(ax: Any) -> None:
    """Log-axis tick labels as plain numbers (2.2, 0.05), not matplotlib's "2.2 × 10⁰"."""
    from matplotlib.ticker import FuncFormatter

    fmt = FuncFormatter(lambda v, _pos: f"{v:.3g}")
    ax.yaxis.set_major_formatter(fmt)
    ax.yaxis.set_minor_formatter(fmt)


def plot_curves(records: Sequence[dict[str, Any]], path: Path, title: str = "") -> None:
    """Train/test loss and accuracy per epoch, and (when the model has analog blocks) each block's
    equilibrium residual — the mean max|Δs| of the free phase's last step, on a log axis: what tells whether
    EP's gradients are estimated at a fixed point. Integer epoch ticks; written atomically as PNG (Agg)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    if not records:
        return
    epochs = [r["epoch"] for r in records]
    blocks = list(dict.fromkeys(k for r in records for k in (r.get("residual") or {})))
    n_panels = 3 if blocks else 2
    fig, axes = plt.subplots(1, n_panels, figsize=(5 * n_panels, 4))
    ax_l, ax_a = axes[0], axes[1]
    for key, label, style in (("train_loss", "train", "-o"), ("test_loss", "test", "-s")):
        ax_l.plot(epochs, [r.get(key) for r in records], style, label=label, markersize=3)
    for key, label, style in (("train_acc", "train", "-o"), ("test_acc", "test", "-s")):
        ax_a.plot(
            epochs,
            [100 * r[key] if r.get(key) is not None else None for r in records],
            style,
            label=label,
            markersize=3,
        )
    ax_l.set_ylabel("cross-entropy loss")
    ax_l.set_yscale("log")
    _plain_log_labels(ax_l)
    ax_a.set_ylabel("accuracy (%)")
    if blocks:
        ax_r = axes[2]
        floor = 1e-12  # an exactly converged (or single-step) block plots at the floor instead of vanishing
        for name in blocks:
            ax_r.plot(
                epochs,
                [max((r.get("residual") or {}).get(name, float("nan")), floor) for r in records],
                "-o",
                label=name,
                markersize=3,
            )
        ax_r.set_yscale("log")
        ax_r.set_ylabel("residual: mean max|Δs|, last free step")
        ax_r.set_title("equilibrium residual per analog block", fontsize=9)
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)


def summary_table(summary: dict[str, Any]) -> Table:
    """The final two-column summary of a run (what was trained, how well, how fast, where it is)."""
    t = Table(title="summary", title_justify="left", show_header=False)
    t.add_column("key", style="bold")
    t.add_column("value")
    for key, value in summary.items():
        if value is None:
            text = "-"
        elif isinstance(value, float) and key.endswith("_acc"):
            text = f"{100 * value:.2f} %"
        elif isinstance(value, float) and key.endswith("_s") and key != "samples_per_s":
            text = f"{value:.1f} s"
        elif isinstance(value, float):
            text = f"{value:.4g}"
        elif isinstance(value, int) and not isinstance(value, bool):
            text = f"{value:,}"
        elif isinstance(value, list):
            text = "\n".join(map(str, value)) or "-"
        elif isinstance(value, dict):
            text = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in value.items())
        else:
            text = str(value)
        label = key.replace("_s", "").replace("_", " ") if key.endswith("_time_s") else key.replace("_", " ")
        t.add_row(label, Text(text))  # plain text: a warning's "[x, −x]" is not rich markup
    return t
