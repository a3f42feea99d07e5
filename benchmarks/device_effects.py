"""Device-effects benchmark: test accuracy of an EP-trained ff-EBM on Fashion-MNIST under analog non-idealities.

The zoo MLP 784-256-256-10, compiled with analog blocks of 2 layers (hard-sigmoid slope 0.25), is trained by EP
with ideal devices (the settings of `benchmarks/accuracy.py`'s mlp-ep: β 0.05, T1 20, T2 5, Adam 1e-3 with a
cosine schedule, batch 128), or taken from a finished run directory (`--from RUN_DIR`). Then the trained model's
device effects are replaced with `FFEBM.set_analog` and its accuracy on the full test set (eval mode) is measured
under each effect alone:

* program_noise  std of a weight's programming error, relative to its tensor's max |w| (3 seeds, mean ± std)
* read_noise     std of the noise on every neuron update during relaxation (3 seeds)
* weight_levels  levels across ±max |w| of each tensor (per-tensor range: nothing is clipped, the grid is
                 symmetric, so an even level count has no zero level)
* dac_bits       bits of every analog block's inputs (full scale: the batch's max |x|)
* adc_bits       bits of every analog block's outputs (same)

"In the loop" rows (`--in-the-loop`, on by default): the ideal model fine-tuned for one epoch by EP *with* an
effect on (hardware-aware training: forward and equilibria see the programmed weights / quantised values,
updates go to the ideal weights through straight-through gradients); accuracy before and after, with the
effect, and after on ideal devices; the control is the same epoch of fine-tuning on ideal devices, evaluated
with the effect (so the gain is what hardware-aware training adds, not what one more epoch adds).

    python benchmarks/device_effects.py                        # train 3 epochs, then every row
    python benchmarks/device_effects.py --from runs/devfx/train --json devfx.json
    python benchmarks/device_effects.py --quick                # smoke run: 2,000 training / 1,000 test samples

Fashion-MNIST is found automatically at /usr/share/datasets/fashion-mnist, or downloaded, or read from --data-dir.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

# effect -> levels swept (each alone, everything else ideal)
SWEEP: dict[str, list[float | int]] = {
    "program_noise": [0.01, 0.02, 0.05, 0.1, 0.2],
    "read_noise": [0.01, 0.02, 0.05, 0.1, 0.2, 0.5],
    "weight_levels": [256, 64, 16, 8, 4],
    "dac_bits": [8, 6, 4, 3, 2],
    "adc_bits": [8, 6, 4, 3, 2],
}
STOCHASTIC = {"program_noise", "read_noise"}
# hardware-aware fine-tuning rows: (label, AnalogSpec fields)
IN_THE_LOOP: list[tuple[str, dict[str, Any]]] = [
    ("weight_levels 4", {"weight_levels": 4}),
    ("weight_levels 8", {"weight_levels": 8}),
    ("adc+dac 4 bits", {"adc_bits": 4, "dac_bits": 4}),
    ("read_noise 0.2", {"read_noise": 0.2}),
]


def train_config(args: argparse.Namespace) -> dict[str, Any]:
    """ExperimentConfig fields of the ideal training run."""
    cfg: dict[str, Any] = {
        "model": "mlp",
        "model_kwargs": {"sizes": [784, *args.hidden, 10]},
        "data": "fashion-mnist",
        "algorithm": "ep",
        "max_block_size": 2,
        "hardsigmoid_slope": args.slope,
        "beta": args.beta,
        "t1": args.t1,
        "t2": args.t2,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "optimizer": "adam",
        "schedule": "cosine",
        "seed": args.seed,
        "test_batch_size": 1000,
        "device": args.device,
        "progress": args.progress,
    }
    if args.data_dir:
        cfg["data_dir"] = args.data_dir
    if args.quick:
        cfg |= {"epochs": 1, "train_subset": 2000, "test_subset": 1000}
    return cfg


def load_run(run_dir: Path, device: str) -> tuple[Any, Any, Any, dict[str, Any]]:
    """(compiled model with the run's trained weights, train split, test split, config) of a run directory."""
    from hybridc.data import load_dataset
    from hybridc.plan import Plan
    from hybridc.train.build import build_model, compile_model
    from hybridc.train.checkpoint import load_checkpoint
    from hybridc.train.experiment import validate_config

    cfg = validate_config(json.loads((run_dir / "config.json").read_text()), str(run_dir / "config.json"))
    if cfg.algorithm == "bp":
        raise SystemExit(f"{run_dir}: a backprop run has no analog blocks")
    train_ds = load_dataset(cfg.data, cfg.data_dir, "train", download=cfg.download)
    test_ds = load_dataset(cfg.data, cfg.data_dir, "test", download=cfg.download)
    model, example = build_model(cfg, train_ds.input_shape, train_ds.num_classes)
    ff = compile_model(cfg, model, example, Plan.load(run_dir / "plan.json"))
    ff.load_state_dict(load_checkpoint(run_dir / "checkpoint.pt")["model"])
    dev = torch.device(
        "cuda" if device == "auto" and torch.cuda.is_available() else ("cpu" if device == "auto" else device)
    )
    return ff.to(dev), train_ds, test_ds, cfg.model_dump(mode="json")


@torch.no_grad()
def accuracy(ff: Any, loader: Any) -> float:
    ff.eval()
    correct = n = 0
    for xb, yb in loader:
        correct += int((ff(xb).argmax(1) == yb).sum())
        n += yb.shape[0]
    return correct / max(n, 1)


def evaluate(ff: Any, loader: Any, spec: dict[str, Any], seeds: list[int]) -> list[float]:
    """Test accuracy under `spec`, once per seed (programming noise from the seed; read noise from the global
    RNG, seeded too)."""
    accs = []
    for s in seeds:
        torch.manual_seed(s)
        ff.set_analog(spec, seed=s)
        accs.append(accuracy(ff, loader))
    ff.set_analog(None)
    return accs


def fine_tune(ff: Any, loader: Any, lr: float, epochs: int = 1) -> float:
    """Train `ff` (effects as installed) by its own gradient rule with Adam and a cosine schedule; seconds."""
    opt = torch.optim.Adam(ff.parameters(), lr=lr)
    steps = max(1, epochs * len(loader))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: 0.5 * (1 + math.cos(math.pi * min(i, steps) / steps))
    )
    ff.train()
    t0 = time.perf_counter()
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        for xb, yb in loader:
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(ff(xb), yb).backward()
            opt.step()
            sched.step()
    ff.eval()
    return time.perf_counter() - t0


def _fmt(accs: list[float]) -> str:
    m = 100 * statistics.fmean(accs)
    return f"{m:.2f}%" + (f" ± {100 * statistics.stdev(accs):.2f}" if len(accs) > 1 else "")


def main(argv: list[str] | None = None) -> int:
    from rich.console import Console
    from rich.table import Table

    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--from",
        dest="run_from",
        type=Path,
        default=None,
        help="a finished `hybridc train` run directory to evaluate instead of training one",
    )
    p.add_argument(
        "--quick", action="store_true", help="smoke run: 1 epoch on 2,000 samples, 1,000 test samples"
    )
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--hidden", type=int, nargs="+", default=[256, 256], help="hidden widths of the MLP")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--beta", type=float, default=0.05)
    p.add_argument("--t1", type=int, default=20)
    p.add_argument("--t2", type=int, default=5)
    p.add_argument("--slope", type=float, default=0.25, help="hard-sigmoid slope of the analog neurons")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--seeds", type=int, default=3, help="seeds of the stochastic effects (program/read noise)"
    )
    p.add_argument("--effects", default=",".join(SWEEP), help="comma-separated effects to sweep")
    p.add_argument(
        "--in-the-loop",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also fine-tune 1 epoch with an effect on (hardware-aware training)",
    )
    p.add_argument(
        "--ft-lr", type=float, default=1e-4, help="Adam learning rate of the in-the-loop fine-tuning"
    )
    p.add_argument("--device", default="auto")
    p.add_argument("--data-dir", default=None)
    p.add_argument(
        "--out", type=Path, default=Path("runs") / f"device-effects-{time.strftime('%Y%m%d-%H%M%S')}"
    )
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=sys.stdout.isatty())
    p.add_argument("--json", type=Path, default=None, help="also write the results as JSON")
    args = p.parse_args(argv)
    effects = [e.strip() for e in args.effects.split(",") if e.strip()]
    unknown = [e for e in effects if e not in SWEEP]
    if unknown:
        p.error(f"unknown effect(s) {unknown}; choose from {', '.join(SWEEP)}")

    console = Console(width=None if sys.stdout.isatty() else 150)
    t_start = time.perf_counter()
    run_dir = args.run_from
    train_info: dict[str, Any] = {}
    if run_dir is None:
        from hybridc.train.experiment import ExperimentConfig
        from hybridc.train.loop import train

        run_dir = args.out / "train"
        console.rule("training (ideal devices)")
        res = train(ExperimentConfig(**train_config(args)), out=run_dir, console=console)
        train_info = {
            "final_test_acc": res.summary["final_test_acc"],
            "wall_time_s": res.summary["wall_time_s"],
            "epoch_times_s": [r["epoch_time_s"] for r in res.records],
        }
    ff, train_ds, test_ds, cfg = load_run(run_dir, args.device)
    dev = next(ff.parameters()).device
    if args.quick:
        test_ds.x, test_ds.y = test_ds.x[:1000], test_ds.y[:1000]
        train_ds.x, train_ds.y = train_ds.x[:2000], train_ds.y[:2000]
    test_loader = test_ds.loader(1000, shuffle=False, device=dev)
    seeds = list(range(args.seeds))

    console.rule(f"device effects ({len(test_ds)} test samples)")
    t0 = time.perf_counter()
    ideal = accuracy(ff, test_loader)
    eval_s = time.perf_counter() - t0
    console.print(
        f"ideal devices: {100 * ideal:.2f}% ({eval_s:.1f} s per evaluation)"
        + (f"; the run reported {100 * train_info['final_test_acc']:.2f}%" if train_info else "")
    )
    rows: list[dict[str, Any]] = [{"effect": "ideal", "level": None, "accs": [ideal]}]
    for effect in effects:
        for level in SWEEP[effect]:
            spec = {effect: level}
            accs = evaluate(ff, test_loader, spec, seeds if effect in STOCHASTIC else seeds[:1])
            rows.append({"effect": effect, "level": level, "accs": accs})
            console.print(f"  {effect} {level}: {_fmt(accs)}")

    loop_rows: list[dict[str, Any]] = []
    if args.in_the_loop:
        ideal_state = {k: v.detach().clone() for k, v in ff.state_dict().items()}
        train_loader = train_ds.loader(cfg["batch_size"], shuffle=True, seed=args.seed + 1, device=dev)
        # control: the same epoch of fine-tuning on ideal devices (same batches), evaluated with each effect
        torch.manual_seed(args.seed)
        ctrl_s = fine_tune(ff, train_loader, args.ft_lr)
        control = {
            label: evaluate(ff, test_loader, spec, seeds if any(k in spec for k in STOCHASTIC) else seeds[:1])
            for label, spec in IN_THE_LOOP
        }
        console.print(
            f"  control: ideal fine-tuning ({ctrl_s:.0f} s) → {100 * accuracy(ff, test_loader):.2f}% ideal"
        )
        for label, spec in IN_THE_LOOP:
            ff.set_analog(None)
            ff.load_state_dict(ideal_state)
            stochastic = any(k in spec for k in STOCHASTIC)
            before = evaluate(ff, test_loader, spec, seeds if stochastic else seeds[:1])
            torch.manual_seed(args.seed)
            ff.set_analog(spec, seed=args.seed)
            ft_s = fine_tune(ff, train_loader, args.ft_lr)
            after = evaluate(ff, test_loader, spec, seeds if stochastic else seeds[:1])
            after_ideal = accuracy(ff, test_loader)
            loop_rows.append(
                {
                    "effect": label,
                    "spec": spec,
                    "before": before,
                    "control": control[label],
                    "after": after,
                    "after_ideal_devices": after_ideal,
                    "fine_tune_s": ft_s,
                }
            )
            console.print(f"  in the loop, {label}: {_fmt(before)} → {_fmt(after)} ({ft_s:.0f} s)")
        ff.set_analog(None)
        ff.load_state_dict(ideal_state)

    n_train = cfg.get("train_subset") or len(train_ds)
    sizes = "-".join(map(str, cfg["model_kwargs"].get("sizes", [])))
    title = (
        f"Fashion-MNIST, {cfg['model']} {sizes} "
        f"EP-trained {cfg['epochs']} epoch(s) on {n_train} samples with ideal devices; test accuracy on "
        f"{len(test_ds)} samples under one device effect at a time ({torch.get_num_threads()} CPU thread(s)"
        + (", CUDA" if dev.type == "cuda" else "")
        + ")"
    )
    table = Table(title=title, title_justify="left")
    for col in ("effect", "level", "test acc", "Δ vs ideal (points)", "seeds"):
        table.add_column(col, justify="left" if col == "effect" else "right")
    last = None
    for r in rows:
        if last is not None and r["effect"] != last:
            table.add_section()
        last = r["effect"]
        m = statistics.fmean(r["accs"])
        table.add_row(
            r["effect"],
            "-" if r["level"] is None else f"{r['level']:g}",
            _fmt(r["accs"]),
            "-" if r["level"] is None else f"{100 * (m - ideal):+.2f}",
            str(len(r["accs"])),
        )
    console.print(table)
    if loop_rows:
        lt = Table(
            title="In the loop: 1 epoch of EP fine-tuning from the ideal model with the effect on (Adam "
            f"{args.ft_lr:g}, cosine), against the same epoch on ideal devices; accuracy with the effect",
            title_justify="left",
        )
        for col in (
            "effect",
            "before",
            "ideal fine-tune",
            "in-the-loop fine-tune",
            "Δ vs ideal fine-tune",
            "in-the-loop model, ideal devices",
            "fine-tune (s)",
        ):
            lt.add_column(col, justify="left" if col == "effect" else "right")
        for r in loop_rows:
            gain = statistics.fmean(r["after"]) - statistics.fmean(r["control"])
            lt.add_row(
                r["effect"],
                _fmt(r["before"]),
                _fmt(r["control"]),
                _fmt(r["after"]),
                f"{100 * gain:+.2f}",
                f"{100 * r['after_ideal_devices']:.2f}%",
                f"{r['fine_tune_s']:.0f}",
            )
        console.print(lt)
    total = time.perf_counter() - t_start
    console.print(
        f"total {total:.0f} s"
        + (
            f" (training {train_info['wall_time_s']:.0f} s, epochs "
            + ", ".join(f"{t:.0f}" for t in train_info["epoch_times_s"])
            + " s)"
            if train_info
            else ""
        )
    )
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps(
                {
                    "run_dir": str(run_dir),
                    "config": cfg,
                    "training": train_info,
                    "ideal_test_acc": ideal,
                    "test_samples": len(test_ds),
                    "seeds": seeds,
                    "sweep": [
                        r
                        | {"mean": statistics.fmean(r["accs"]), "delta": statistics.fmean(r["accs"]) - ideal}
                        for r in rows
                    ],
                    "in_the_loop": loop_rows,
                    "total_s": total,
                    "threads": torch.get_num_threads(),
                },
                indent=2,
            )
            + "\n"
        )
    return 0


if __name__ == "__main__":
    from hybridc.cli import run_script

    run_script(main)
