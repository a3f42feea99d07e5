"""How much of a relaxation step is Python: the interpreted step (`DHNBlock.step_prepared`, the transpose
program run op by op) against the same step traced once into one aten graph (`make_fx`), and optionally
against `torch.compile` of the step (what `train --compile` does), per analog block of a model.

The question it answers (issue 16): would emitting the step as one graph at compile time speed up CPU
relaxation? If the interpreter's per-op overhead mattered, the traced graph would be faster; the table shows
by how much it is (ratio interpreted / traced), and checks both give the same states (bit for bit).

    python benchmarks/step_overhead.py                    # MLP 784-256-256-10, MLP 784-1024-1024-10, vgg-paper
    python benchmarks/step_overhead.py --compile          # + torch.compile of the step (slow to compile)
    python benchmarks/step_overhead.py --quick
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from rich.console import Console
from rich.table import Table
from torch.fx.experimental.proxy_tensor import make_fx

from hybridc.api import compile as hc_compile
from hybridc.energy.dhn import DHNBlock
from hybridc.load import load_model


def block_inputs(ff: torch.nn.Module, x: torch.Tensor) -> dict[str, tuple[torch.Tensor, ...]]:
    """The inputs each block of the compiled model `ff` receives on `x` (forward pre-hooks, eval mode)."""
    seen: dict[str, tuple[torch.Tensor, ...]] = {}
    hooks = [
        b.register_forward_pre_hook(lambda m, a, name=name: seen.__setitem__(name, a))
        for name, b in ff.blocks.items()
    ]
    with torch.no_grad():
        ff.eval()(x)
    for h in hooks:
        h.remove()
    return seen


def time_steps(step: Callable, prepared: list[torch.Tensor], states: list[torch.Tensor], n: int) -> float:
    """Median µs per step over 3 runs of `n` chained steps."""
    runs = []
    for _ in range(3):
        s = states
        t0 = time.perf_counter()
        for _ in range(n):
            s = step(prepared, s)
        runs.append((time.perf_counter() - t0) / n * 1e6)
    return statistics.median(runs)


def _step_of(block: DHNBlock) -> Callable:
    """`(prepared, states) -> states`: one step of `block` (two arguments, as make_fx traces them)."""

    def step(prepared: list[torch.Tensor], states: list[torch.Tensor]) -> list[torch.Tensor]:
        return block.step_prepared(prepared, states)

    return step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=100, help="chained steps per timing run")
    ap.add_argument("--compile", action="store_true", help="also time torch.compile of the step")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    configs = [("mlp 784-256-256-10", "mlp", {"sizes": (784, 256, 256, 10)}, 3)]
    if not args.quick:
        configs += [
            ("mlp 784-1024-1024-10", "mlp", {"sizes": (784, 1024, 1024, 10)}, 3),
            ("vgg-paper (width 0.5)", "vgg-paper", {"width": 0.5}, 3),
        ]
    steps = 5 if args.quick else args.steps
    table = Table(
        title=f"one relaxation step per analog block: interpreted vs one traced graph (batch {args.batch}, "
        f"{args.threads} thread(s), torch {torch.__version__})"
    )
    for col in ("model", "block", "neurons", "graph nodes", "interpreted µs", "traced µs", "interp / traced"):
        table.add_column(col, justify="left" if col in ("model", "block") else "right")
    if args.compile:
        table.add_column("torch.compile µs", justify="right")
    for label, name, kwargs, n in configs:
        lm = load_model(name, **kwargs)
        ff = hc_compile(lm.model, lm.example_inputs, max_block_size=n, init="goe", solver={"t1": 20})
        x = torch.randn(args.batch, *lm.example_inputs[0].shape[1:])
        inputs = block_inputs(ff, x)
        for bname, block in ff.blocks.items():
            if not isinstance(block, DHNBlock) or len(block.neuron_names) < 2:
                continue
            with torch.no_grad():
                prepared = list(block.prepare(inputs[bname]))
                states = block.initial_states(inputs[bname])

                interpreted = _step_of(block)
                traced = make_fx(interpreted)(prepared, states)
                same = all(
                    torch.equal(a, b) for a, b in zip(interpreted(prepared, states), traced(prepared, states))
                )
                if not same:
                    raise SystemExit(f"{label} {bname}: the traced step differs from the interpreted one")
                t_int = time_steps(interpreted, prepared, states, steps)
                t_tr = time_steps(traced, prepared, states, steps)
                row = [
                    label,
                    bname,
                    str(len(states)),
                    str(len(traced.graph.nodes)),
                    f"{t_int:.0f}",
                    f"{t_tr:.0f}",
                    f"{t_int / t_tr:.2f}",
                ]
                if args.compile:
                    compiled = torch.compile(interpreted, dynamic=False)
                    compiled(prepared, states)  # compile outside the timing
                    row.append(f"{time_steps(compiled, prepared, states, steps):.0f}")
            table.add_row(*row)
    Console(width=160).print(table)


if __name__ == "__main__":
    from hybridc.cli import run_script

    run_script(main)
