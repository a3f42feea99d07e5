"""Implicit-differentiation adjoint solve: GMRES vs the plain fixed-point iteration λ ← δ + Jᵀλ, on the
multi-layer conv blocks of the zoo (float64). Per analog block: vjps (steps) and backward time of each solver
at the same tolerance, and the largest relative difference of the resulting gradients (solved to `--tol`).

    python benchmarks/adjoint_solve.py                       # vgg-paper (width 0.25) and resnet18 (base 8)
    python benchmarks/adjoint_solve.py --tol 1e-13 --batch 4
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table

from hybridc.api import compile
from hybridc.load import load_model
from hybridc.progress import StepProgress

#: `with measuring(row):` a line on stderr when a measured row starts and when it ends (and a "still running"
#: line during a long one), so a run of minutes shows where it is; stdout keeps only the table / JSON.
measuring = StepProgress("adjoint_solve", None, rich=False, numbered=False).step

MODELS = {"vgg-paper": ({"width": 0.25}, 3), "resnet18": ({"base": 8}, 4)}


def _id_grads(
    ff: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, solver: str, tol: float
) -> tuple[torch.Tensor, float, dict[str, int]]:
    ff.set_gradient("id", id_solver=solver, id_tol=tol, id_max_steps=20000)
    ff.zero_grad(set_to_none=True)
    loss = F.cross_entropy(ff(x), y)
    t0 = time.perf_counter()
    loss.backward()
    wall = time.perf_counter() - t0
    grads = torch.cat([p.grad.flatten() for p in ff.parameters() if p.grad is not None])
    return grads, wall, {k: b.last_adjoint_steps for k, b in ff.analog_blocks.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(MODELS), help="comma-separated: " + ", ".join(MODELS))
    ap.add_argument("--tol", type=float, default=1e-10, help="adjoint tolerance (relative residual)")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2, help="timed backward passes per solver (best kept)")
    args = ap.parse_args()
    torch.manual_seed(0)
    table = Table(title=f"adjoint solve, float64, tol {args.tol:g} (relative residual)")
    for col in (
        "model",
        "blocks (neurons)",
        "fixed-point vjps",
        "GMRES vjps",
        "fixed-point s",
        "GMRES s",
        "speed-up",
        "max rel. diff of grads",
    ):
        table.add_column(col, justify="left" if col == "model" else "right")
    for name in args.models.split(","):
        kwargs, n = MODELS[name]
        with measuring(f"{name} (max_block_size {n}): compile, fixed-point and GMRES adjoints"):
            lm = load_model(name, **kwargs)
            x = torch.randn(args.batch, *lm.example_inputs[0].shape[1:], dtype=torch.float64)
            y = torch.randint(0, 10, (args.batch,))
            ff = (
                compile(
                    lm.model.double(),
                    x,
                    max_block_size=n,
                    solver={"tol": 1e-13, "max_steps": 5000, "check_every": 10},
                )
                .double()
                .eval()
            )
            res = {}
            for solver in ("fixed_point", "gmres"):
                runs = [_id_grads(ff, x, y, solver, args.tol) for _ in range(args.repeats)]
                res[solver] = (runs[0][0], min(r[1] for r in runs), runs[0][2])
            # both solved much tighter: their difference is then the solvers' disagreement, not the tolerance
            tight = {s: _id_grads(ff, x, y, s, 1e-13)[0] for s in ("fixed_point", "gmres")}
            diff = float(
                (tight["gmres"] - tight["fixed_point"]).abs().max() / tight["fixed_point"].abs().max()
            )
            fp, gm = res["fixed_point"], res["gmres"]
            sizes = ", ".join(f"{k} ({len(b.neuron_names)})" for k, b in ff.analog_blocks.items())
            table.add_row(
                name,
                sizes,
                " ".join(str(v) for v in fp[2].values()),
                " ".join(str(v) for v in gm[2].values()),
                f"{fp[1]:.2f}",
                f"{gm[1]:.2f}",
                f"{fp[1] / gm[1]:.1f}x",
                f"{diff:.1e}",
            )
    Console(width=200).print(table)


if __name__ == "__main__":
    from hybridc.cli import run_script

    run_script(main)
