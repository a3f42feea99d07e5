"""Analog optimizers on Fashion-MNIST: the same EP-trained ff-EBM with its analog weights updated by an ideal
device (SGD), Analog SGD and Tiki-Taka on soft-bounds devices of bound τ, and Adam (digital reference).

Model: the zoo MLP 784-H-H-10 (H = --hidden, default 256) compiled with analog blocks of 2 layers (the
hidden pair and the classifier), EP (β 0.05, T1 20, T2 5, hard-sigmoid slope 0.25, as in accuracy.py).
Analog weights are the weight matrices of the analog blocks; biases stay digital (Adam). Each row is one
`hybridc train` run with `--analog-optimizer`; the run directories are under --out.

    python benchmarks/analog_optimizers_fmnist.py                       # 3 epochs, τ 0.1 and 0.3
    python benchmarks/analog_optimizers_fmnist.py --quick               # 1 epoch on 5,000 samples
    hybridc train mlp --model-kwargs '{"sizes": [784, 256, 256, 10]}' --data fashion-mnist \\
        --hardsigmoid-slope 0.25 --analog-optimizer tiki-taka --analog-lr 0.1 --analog-tau 0.1 --transfer-lr 0.01
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch


def rows(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """Row name -> ExperimentConfig fields."""
    common: dict[str, Any] = {
        "model": "mlp",
        "model_kwargs": {"sizes": [784, args.hidden, args.hidden, 10]},
        "data": "fashion-mnist",
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "test_batch_size": 1000,
        "lr": 1e-3,
        "schedule": args.schedule,
        "seed": args.seed,
        "progress": args.progress,
        "max_block_size": 2,
        "hardsigmoid_slope": 0.25,
        "beta": 0.05,
        "t1": 20,
        "t2": 5,
        "device": args.device,
    }
    if args.quick:
        common |= {"epochs": 1, "train_subset": 5000, "test_subset": 2000}
    if args.train_subset:
        common |= {"train_subset": args.train_subset}
    out: dict[str, dict[str, Any]] = {
        "adam (digital)": common,
        "sgd (ideal device)": common | {"analog_optimizer": "sgd", "analog_lr": args.analog_lr},
    }
    for tau in args.taus:
        out[f"analog-sgd τ={tau:g}"] = common | {
            "analog_optimizer": "analog-sgd",
            "analog_lr": args.analog_lr,
            "analog_tau": tau,
        }
        out[f"tiki-taka τ={tau:g}"] = common | {
            "analog_optimizer": "tiki-taka",
            "analog_lr": args.analog_lr,
            "analog_tau": tau,
            "transfer_lr": args.transfer_lr,
        }
    return out


def main(argv: list[str] | None = None) -> int:
    from rich.console import Console
    from rich.table import Table

    from hybridc.train.experiment import ExperimentConfig
    from hybridc.train.loop import train

    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--train-subset", type=int, default=None, help="first N training samples (tuning)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--analog-lr", type=float, default=0.1)
    p.add_argument("--transfer-lr", type=float, default=0.01)
    p.add_argument("--taus", type=float, nargs="+", default=[0.1, 0.3])
    p.add_argument(
        "--schedule",
        choices=["cosine", "none"],
        default="none",
        help="constant rates by default: the regime the convergence theory is about",
    )
    p.add_argument("--only", default=None, help="comma-separated substrings: run only matching rows")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument(
        "--out", type=Path, default=Path("runs") / f"analog-optim-{time.strftime('%Y%m%d-%H%M%S')}"
    )
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=sys.stdout.isatty())
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)

    console = Console(width=None if sys.stdout.isatty() else 150)
    results: dict[str, dict[str, Any]] = {}
    for i, (name, fields) in enumerate(rows(args).items()):
        if args.only and not any(s in name for s in args.only.split(",")):
            continue
        cfg = ExperimentConfig(**fields)
        console.rule(name)
        res = train(cfg, out=args.out / f"row{i}", console=console)
        state = torch.load(args.out / f"row{i}" / "checkpoint.pt", weights_only=True)["model"]
        w_max = max(float(v.abs().max()) for k, v in state.items() if v.dim() >= 2)
        results[name] = {
            "test_acc": res.summary["final_test_acc"],
            "train_acc": res.summary["final_train_acc"],
            "max_abs_weight": w_max,
            "epochs": res.summary["epochs_done"],
            "mean_epoch_time_s": res.summary["mean_epoch_time_s"],
            "config": cfg.model_dump(mode="json"),
        }

    table = Table(
        title=f"Analog optimizers, EP on Fashion-MNIST (784-{args.hidden}-{args.hidden}-10, "
        f"{'quick' if args.quick else f'{args.epochs} epochs'}, analog lr {args.analog_lr:g}, "
        f"Tiki-Taka transfer lr {args.transfer_lr:g}, {args.schedule} schedule)",
        title_justify="left",
    )
    for col in ("analog weights updated by", "test acc", "train acc", "max |W|", "epoch (s)"):
        table.add_column(col, justify="left" if col.startswith("analog") else "right")
    for name, r in results.items():
        table.add_row(
            name,
            f"{100 * r['test_acc']:.2f}%",
            f"{100 * r['train_acc']:.2f}%",
            f"{r['max_abs_weight']:.3f}",
            f"{r['mean_epoch_time_s']:.1f}",
        )
    console.print(table)
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    from hybridc.cli import run_script

    run_script(main)
