"""Cost of one training step: EP, ID and BPTT through the compiled ff-EBM vs plain backprop of the original
model, with the measured EP/BP ratio beside the ideal (T1 + 2·T2)·2/3 of DESIGN.md's performance model.

Memory: on CUDA the peak allocated during a step; everywhere, the bytes autograd saves for backward
(what grows with T for BPTT and stays flat for EP).

    python benchmarks/step_cost.py                  # CPU defaults (reduced VGG width, see --help)
    python benchmarks/step_cost.py --device cuda --batch 128 --vgg-width 1
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table

from hybridc.api import compile
from hybridc.load import load_model
from hybridc.progress import StepProgress

#: `with measuring(row):` a line on stderr when a measured row starts and when it ends (and a "still running"
#: line during a long one), so a run of minutes shows where it is; stdout keeps only the table / JSON.
measuring = StepProgress("step_cost", None, rich=False, numbered=False).step


@contextmanager
def saved_bytes_counter(box: list[int]):
    def pack(t: torch.Tensor) -> torch.Tensor:
        box[0] += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        yield


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(
    model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int, warmup: int, device: torch.device
) -> tuple[float, float, float | None]:
    """Median ms per step (forward, backward, Adam step), MB saved for backward, CUDA peak MB."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    times = []
    saved = [0]
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for i in range(warmup + steps):
        box = [0]
        _sync(device)
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        with saved_bytes_counter(box):
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        _sync(device)
        if i >= warmup:
            times.append((time.perf_counter() - t0) * 1e3)
            saved[0] = max(saved[0], box[0])
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    return statistics.median(times), saved[0] / 2**20, peak


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch", type=int, default=None, help="batch size (default 128 on CUDA, 32 on CPU)")
    ap.add_argument(
        "--vgg-width",
        type=float,
        default=None,
        help="VGG channel multiplier (1 = paper; default 1 on CUDA, 0.25 on CPU)",
    )
    ap.add_argument("--t1", type=int, default=20)
    ap.add_argument("--t2", type=int, default=5)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="tiny sizes, 2 steps: a smoke run")
    ap.add_argument("--json", action="store_true", help="print JSON rows instead of a table")
    args = ap.parse_args()
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    batch = args.batch or (128 if cuda else 32)
    width = args.vgg_width or (1.0 if cuda else 0.25)
    steps, warmup = (2, 1) if args.quick else (args.steps, args.warmup)
    if args.quick:
        batch, width = 8, 0.0625
    ideal = (args.t1 + 2 * args.t2) * 2 / 3
    configs = [
        (
            "mlp 784-256-256-10" if args.quick else "mlp 784-1024-1024-10",
            load_model("mlp", sizes=(784, 256, 256, 10) if args.quick else (784, 1024, 1024, 10)),
            [2],
        ),
        (f"vgg-paper (width {width:g})", load_model("vgg-paper", width=width), [2, 3]),
    ]
    rows = []
    for label, lm, sizes in configs:
        x = torch.randn(batch, *lm.example_inputs[0].shape[1:], device=device)
        y = torch.randint(0, 10, (batch,), device=device)
        base = lm.model.to(device).train()
        with measuring(f"{label}: bp (original)"):
            bp_ms, bp_saved, bp_peak = time_steps(base, x, y, steps, warmup, device)
        rows.append(
            {
                "model": label,
                "block": "-",
                "algorithm": "bp (original)",
                "ms": bp_ms,
                "ratio": 1.0,
                "ideal": None,
                "saved_mb": bp_saved,
                "peak_mb": bp_peak,
            }
        )
        for n in sizes:
            ff = (
                compile(
                    lm.model,
                    lm.example_inputs,
                    max_block_size=n,
                    init="goe",
                    solver={"t1": args.t1, "t2": args.t2},
                )
                .to(device)
                .train()
            )
            for mode in ("ep", "id", "bptt"):
                ff.set_gradient(mode, bptt_steps=args.t2, id_tol=1e-6, id_max_steps=50)
                with measuring(f"{label}: block size {n}, {mode}"):
                    ms, saved, peak = time_steps(ff, x, y, steps, warmup, device)
                rows.append(
                    {
                        "model": label,
                        "block": n,
                        "algorithm": mode,
                        "ms": ms,
                        "ratio": ms / bp_ms,
                        "ideal": ideal if mode == "ep" else None,
                        "saved_mb": saved,
                        "peak_mb": peak,
                    }
                )
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    t = Table(
        title=f"training step cost on {device} ({torch.cuda.get_device_name(device) if cuda else 'CPU'}), "
        f"batch {batch}, T1={args.t1}, T2={args.t2}, torch {torch.__version__}"
    )
    for col in (
        "model",
        "block size",
        "algorithm",
        "ms / step",
        "× BP",
        "ideal × BP",
        "saved for bwd MB",
        "CUDA peak MB",
    ):
        t.add_column(col, justify="left" if col in ("model", "algorithm") else "right")
    for r in rows:
        t.add_row(
            r["model"],
            str(r["block"]),
            r["algorithm"],
            f"{r['ms']:.1f}",
            f"{r['ratio']:.1f}",
            "-" if r["ideal"] is None else f"{r['ideal']:.1f}",
            f"{r['saved_mb']:.1f}",
            "-" if r["peak_mb"] is None else f"{r['peak_mb']:.0f}",
        )
    Console(width=160).print(t)


if __name__ == "__main__":
    from hybridc.cli import run_script

    run_script(main)
