"""Accuracy benchmark: EP-trained ff-EBMs against backprop on Fashion-MNIST, printed as a table.

Rows (each a full `hybridc train` run, its run directory under --out):

* mlp-ep    the zoo MLP 784-1024-1024-10 compiled with analog blocks of 2 layers, trained by EP
* mlp-bp    the same architecture, the original feedforward model trained by backprop (the baseline)
* conv-ep   a small convolutional ff-EBM for 28x28 (`conv28` below), trained by EP
* vit-ep    the zoo ViT (16 patches of 7x7, dim 64, depth 2): attention, norms digital, each MLP one analog block
* vit-bp    the same ViT by backprop

Targets: mlp-ep ≥ 88 % test and within 1.5 points of mlp-bp; conv-ep ≥ 90 %; vit-ep within 2 points of vit-bp.
Rows run in separate invocations are put in one table with `--merge earlier.json`; a row whose run directory
under --out already has a checkpoint is resumed (an interrupted benchmark continues where it stopped).

    python benchmarks/accuracy.py                 # everything, 5 epochs (long on a CPU: see --parts)
    python benchmarks/accuracy.py --quick         # smoke run: 1 epoch on 2,000 samples
    python benchmarks/accuracy.py --parts mlp-ep,mlp-bp --epochs 5 --beta 0.05 --lr 1e-3

Fashion-MNIST is found automatically where Debian's `dataset-fashion-mnist` package puts it
(/usr/share/datasets/fashion-mnist), or downloaded, or read from --data-dir.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

INPUT_SHAPE = (1, 28, 28)


class Conv28(nn.Module):
    """conv3x3(1→c1) · ReLU · maxpool2 · conv3x3(c1→c2) · ReLU · maxpool2 · linear(c2·7·7→10).

    With `max_block_size 2` and pooling absorbed into the synapses, both convolutions form one analog
    block (a two-layer convolutional Hopfield network, max-pool paths unpooled by argmax in the top-down
    pass) and the classifier a second one.
    """

    def __init__(self, c1: int = 16, c2: int = 32, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, c1, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(c2 * 7 * 7, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def conv28() -> nn.Module:
    """Factory used as `benchmarks/accuracy.py:conv28` by `hybridc train` (16 and 32 channels)."""
    return Conv28()


def conv28_wide() -> nn.Module:
    """The same with 32 and 64 channels (`--conv-factory conv28_wide`)."""
    return Conv28(32, 64)


# row -> (absolute target, baseline row, largest allowed gap to the baseline)
TARGETS: dict[str, tuple[float | None, str | None, float | None]] = {
    "mlp-ep": (0.88, "mlp-bp", 0.015),
    "mlp-bp": (None, None, None),
    "conv-ep": (0.90, None, None),
    "vit-ep": (None, "vit-bp", 0.02),
    "vit-bp": (None, None, None),
}


def experiments(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """The ExperimentConfig fields of every row (common settings + per-row ones)."""
    common: dict[str, Any] = {
        "data": "fashion-mnist",
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "schedule": "cosine",
        "seed": args.seed,
        "progress": args.progress,
        "test_batch_size": 1000,
        "device": args.device,
    }
    if args.data_dir:
        common["data_dir"] = args.data_dir
    if args.quick:
        common |= {"epochs": 1, "train_subset": 2000, "test_subset": 1000}
    ep: dict[str, Any] = {
        "algorithm": "ep",
        "max_block_size": 2,
        "beta": args.beta,
        "t1": args.t1,
        "t2": args.t2,
        "solver_mode": args.solver_mode,
        "init": args.init,
        "hardsigmoid_slope": args.slope,
        "feedback_gain": args.feedback_gain,
    }
    return {
        "mlp-ep": common | ep | {"model": "mlp"},
        "mlp-bp": common | {"model": "mlp", "algorithm": "bp", "lr": args.bp_lr},
        "conv-ep": common
        | ep
        | {
            "model": f"{Path(__file__).resolve()}:{args.conv_factory}",
            "lr": args.conv_lr,
            "epochs": common["epochs"] if args.quick else (args.conv_epochs or common["epochs"]),
        },
        "vit-ep": common | ep | {"model": "vit", "hardsigmoid_slope": args.vit_slope, "lr": args.vit_lr},
        "vit-bp": common | {"model": "vit", "algorithm": "bp", "lr": args.vit_lr},
    }


def main(argv: list[str] | None = None) -> int:
    from rich.console import Console
    from rich.table import Table

    from hybridc.train.benchmark_rows import run_rows, select_rows

    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--parts", default="mlp-ep,mlp-bp,conv-ep", help="comma-separated rows to run")
    p.add_argument("--quick", action="store_true", help="smoke run: 1 epoch on 2,000 training samples")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3, help="EP MLP learning rate (Adam)")
    p.add_argument("--bp-lr", type=float, default=1e-3)
    p.add_argument("--conv-lr", type=float, default=1e-3)
    p.add_argument("--conv-factory", choices=["conv28", "conv28_wide"], default="conv28")
    p.add_argument("--conv-epochs", type=int, default=None, help="epochs of conv-ep (default: --epochs)")
    p.add_argument("--vit-lr", type=float, default=1e-3)
    p.add_argument("--vit-slope", type=float, default=0.5, help="hard-sigmoid slope of the ViT MLP neurons")
    p.add_argument(
        "--merge", type=Path, action="append", default=[], help="earlier --json results to tabulate too"
    )
    p.add_argument("--beta", type=float, default=0.05)
    p.add_argument("--t1", type=int, default=20)
    p.add_argument("--t2", type=int, default=5)
    p.add_argument(
        "--slope", type=float, default=0.25, help="hard-sigmoid slope (0.25: tuned, see the module docstring)"
    )
    p.add_argument("--init", choices=["keep", "goe"], default="keep")
    p.add_argument(
        "--feedback-gain",
        type=float,
        default=None,
        help="bound the feedback gain of multi-layer blocks (train --feedback-gain) [off]",
    )
    p.add_argument("--solver-mode", choices=["sync", "async"], default="sync")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--out", type=Path, default=Path("runs") / f"accuracy-{time.strftime('%Y%m%d-%H%M%S')}")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=sys.stdout.isatty())
    p.add_argument("--json", type=Path, default=None, help="also write the results as JSON")
    args = p.parse_args(argv)

    console = Console(width=None if sys.stdout.isatty() else 150)
    rows = experiments(args)
    try:
        wanted = select_rows(args.parts, rows)
    except ValueError as exc:
        p.error(str(exc))
    results = run_rows(rows, wanted, args.out, console, args.merge)

    table = Table(
        title=f"Fashion-MNIST accuracy{' (quick smoke run)' if args.quick else ''}", title_justify="left"
    )
    for col in (
        "run",
        "algorithm",
        "epochs",
        "test acc (final)",
        "best",
        "target",
        "median epoch (s)",
        "samples/s",
        "threads",
        "verdict",
    ):
        table.add_column(col, justify="right" if col not in ("run", "algorithm", "verdict") else "left")
    for name, r in results.items():
        target, baseline, gap = TARGETS[name]
        acc = r["final_test_acc"]
        checks, wants = [], []
        if target is not None:
            checks.append(acc >= target)
            wants.append(f"≥{100 * target:.0f}%")
        if baseline is not None:
            wants.append(f"≥{baseline}−{100 * gap:g}")
            if baseline in results:
                checks.append(results[baseline]["final_test_acc"] - acc <= gap + 1e-9)
        verdict = "-" if args.quick or not checks else ("pass" if all(checks) else "miss")
        table.add_row(
            name,
            r["config"]["algorithm"],
            str(r["epochs"]),
            f"{100 * acc:.2f}%",
            f"{100 * r['best_test_acc']:.2f}%",
            ", ".join(wants) or "-",
            f"{r['median_epoch_time_s']:.1f}",
            f"{r['samples_per_s']:.0f}",
            str(r.get("threads", "-")),
            verdict,
        )
    console.print(table)
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    from hybridc.cli import run_script

    run_script(main)
