#!/usr/bin/env python
"""Analog SGD vs Tiki-Taka on a least-squares problem (reproduces Wu et al., NeurIPS 2024).

Problem: ``f(W) = 1/(2n) ‖A W − b‖²`` with ``A`` (n×d) Gaussian and ``b = A W* + r`` where the
residual ``r`` is orthogonal to the range of ``A``; hence ``W*`` (with a chosen ‖W*‖∞) is the
exact minimiser, ``f* = ‖r‖²/(2n)``, and the single-sample stochastic gradients
``a_i (a_iᵀW − b_i)`` are noisy at ``W*`` (noise level set by ‖r‖).  Every method sees the same
sample sequence; ``--seeds`` independent runs are simulated at once (the optimizers are
elementwise, so the rows of a ``(seeds, d)`` parameter are independent runs).

Table 1 (τ sweep, ‖W*‖ fixed, W₀ = 0, N steps, constant learning rates): final ‖W − W*‖² and
``f(W) − f*`` (means over the seeds) for digital SGD, Analog SGD and Tiki-Taka, plus the
Analog SGD fixed point predicted by theory: the W solving ``E[g(W)] + E|g(W)| ⊙ W/τ = 0``,
i.e. ``H (W − W*) + D(W) W/τ = 0`` with ``H = AᵀA/n`` and ``D(W) = E_i |a_i (a_iᵀW − b_i)|``.
Analog SGD's error floor grows with ‖W*‖/τ; Tiki-Taka's does not.

Table 2 (learning-rate sweep at the smallest τ, W₀ = W*, P₀ = 0): the stationary error when
started at the optimum.  Analog SGD drifts to its biased fixed point whatever the step size
(an *asymptotic* error), whereas the error of Tiki-Taka (and digital SGD) shrinks with the step
size, i.e. it converges exactly.

Tiki-Taka's transfer rate is set to ``β = c·α·σ̂/τ`` (``c = --tt-ratio``, ``σ̂ = D(W*)`` averaged,
the gradient-noise level at the optimum), which keeps the transfer slow compared with the leak
rate ``α σ̂/τ`` of the P array for every τ.

Usage::

    python benchmarks/analog_optimizers.py [--quick] [--json out.json | --json -]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

try:  # run from a checkout without installing the package
    from hybridc.analog.optimizers import AnalogSGD, TikiTaka
except ImportError:  # pragma: no cover
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from hybridc.analog.optimizers import AnalogSGD, TikiTaka

DTYPE = torch.float64


def make_problem(n: int, d: int, w_inf: float, noise: float, seed: int) -> dict[str, torch.Tensor]:
    """Least-squares problem with known minimiser ``W*`` (‖W*‖∞ = w_inf) and residual std ``noise``."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, d, generator=g, dtype=DTYPE)
    mag = 0.5 + 0.5 * torch.rand(d, generator=g, dtype=DTYPE)
    sign = torch.where(torch.rand(d, generator=g, dtype=DTYPE) < 0.5, -1.0, 1.0)
    w_star = mag * sign
    w_star = w_star / w_star.abs().max() * w_inf
    z = torch.randn(n, generator=g, dtype=DTYPE)
    q, _ = torch.linalg.qr(a)
    r = z - q @ (q.T @ z)  # orthogonal to range(A)
    r = r / r.norm() * math.sqrt(n) * noise
    b = a @ w_star + r
    return {"A": a, "b": b, "w_star": w_star, "H": a.T @ a / n, "f_star": (r @ r) / (2 * n)}


def grad_noise_abs(prob: dict[str, torch.Tensor], w: torch.Tensor) -> torch.Tensor:
    """``D(W) = E_i |a_i (a_iᵀW − b_i)|`` for uniform single-sample gradients."""
    a, b = prob["A"], prob["b"]
    return (a.abs() * (a @ w - b).abs()[:, None]).mean(0)


def analog_sgd_fixed_point(prob: dict[str, torch.Tensor], tau: float, iters: int = 200) -> torch.Tensor:
    """Solve ``H (W − W*) + D(W) ⊙ W / τ = 0`` by fixed-point iteration."""
    h, w_star = prob["H"], prob["w_star"]
    w = w_star.clone()
    for _ in range(iters):
        w_new = torch.linalg.solve(h + torch.diag(grad_noise_abs(prob, w) / tau), h @ w_star)
        if torch.allclose(w_new, w, rtol=0, atol=1e-13):
            return w_new
        w = w_new
    return w


def run(
    method: str,
    prob: dict[str, torch.Tensor],
    configs: list[dict[str, float]],
    steps: int,
    seeds: int,
    w0: torch.Tensor,
    sample_seed: int,
) -> list[dict[str, float]]:
    """Run ``method`` for every config (one param group each) and return final metrics."""
    print(
        f"running {method}: {len(configs)} settings x {seeds} seeds, {steps} steps",
        file=sys.stderr,
        flush=True,
    )
    a, b, w_star, h = prob["A"], prob["b"], prob["w_star"], prob["H"]
    n, d = a.shape
    ws = [w0.expand(seeds, d).clone() for _ in configs]
    if method == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(
            [{"params": [w], "lr": c["lr"]} for w, c in zip(ws, configs)], lr=1.0
        )
    elif method == "analog_sgd":
        opt = AnalogSGD(
            [{"params": [w], "lr": c["lr"], "tau": c["tau"]} for w, c in zip(ws, configs)], lr=1.0, tau=1.0
        )
    elif method == "tiki_taka":
        opt = TikiTaka(
            [
                {"params": [w], "lr": c["lr"], "tau": c["tau"], "transfer_lr": c["transfer_lr"]}
                for w, c in zip(ws, configs)
            ],
            lr=1.0,
            tau=1.0,
            transfer_lr=1.0,
        )
    else:
        raise ValueError(method)
    gen = torch.Generator().manual_seed(sample_seed)
    chunk = 2000
    for start in range(0, steps, chunk):
        m = min(chunk, steps - start)
        idx = torch.randint(0, n, (m, len(configs), seeds), generator=gen)
        a_s, b_s = a[idx], b[idx]  # (m, G, R, d), (m, G, R)
        for k in range(m):
            for j, w in enumerate(ws):
                ak = a_s[k, j]
                w.grad = ak * ((ak * w).sum(1) - b_s[k, j])[:, None]
            opt.step()
    out = []
    for w in ws:
        e = w - w_star
        out.append(
            {
                "err2": (e * e).sum(1).mean().item(),
                "loss_gap": 0.5 * ((e @ h) * e).sum(1).mean().item(),
            }
        )
    return out


def fmt(x: float) -> str:
    return f"{x:.2e}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="fewer steps/seeds (a few seconds)")
    ap.add_argument(
        "--taus", type=float, nargs="+", default=[0.5, 1.0, 2.0, 4.0, 8.0], help="device bounds τ"
    )
    ap.add_argument("--w-inf", type=float, default=0.4, help="‖W*‖∞ (must be < min τ)")
    ap.add_argument("--n", type=int, default=200, help="number of samples")
    ap.add_argument("--d", type=int, default=10, help="dimension")
    ap.add_argument("--noise", type=float, default=1.0, help="residual std (gradient noise at W*)")
    ap.add_argument("--lr", type=float, default=None, help="learning rate α for all methods in table 1")
    ap.add_argument("--lrs", type=float, nargs="+", default=None, help="learning rates of table 2")
    ap.add_argument("--tt-ratio", type=float, default=0.1, help="c in Tiki-Taka's β = c·α·σ̂/τ")
    ap.add_argument("--steps", type=int, default=None, help="steps N of table 1")
    ap.add_argument("--steps2", type=int, default=None, help="steps of table 2")
    ap.add_argument("--seeds", type=int, default=None, help="independent runs averaged")
    ap.add_argument("--seed", type=int, default=0, help="problem / sampling seed")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ap.add_argument(
        "--json", metavar="PATH", default=None, help="write results as JSON to PATH ('-': stdout only)"
    )
    args = ap.parse_args(argv)

    quick = args.quick
    lr = args.lr if args.lr is not None else (0.01 if quick else 0.003)
    lrs = args.lrs if args.lrs is not None else ([0.01, 0.001] if quick else [0.01, 0.003, 0.001])
    steps = args.steps if args.steps is not None else (6000 if quick else 20000)
    steps2 = args.steps2 if args.steps2 is not None else (4000 if quick else 10000)
    seeds = args.seeds if args.seeds is not None else (16 if quick else 32)
    if min(args.taus) <= args.w_inf:
        ap.error("--w-inf must be smaller than every τ (W* must be representable on the device)")
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()

    prob = make_problem(args.n, args.d, args.w_inf, args.noise, args.seed)
    w_star = prob["w_star"]
    sigma = grad_noise_abs(prob, w_star).mean().item()
    zeros = torch.zeros(args.d, dtype=DTYPE)

    # ---- table 1: sweep tau, W0 = 0 --------------------------------------------------------
    taus = sorted(args.taus)
    cfg1 = [{"tau": t, "lr": lr, "transfer_lr": args.tt_ratio * lr * sigma / t} for t in taus]
    res1 = {
        m: run(m, prob, cfg1, steps, seeds, zeros, args.seed + 1) for m in ("sgd", "analog_sgd", "tiki_taka")
    }
    rows1 = []
    for i, c in enumerate(cfg1):
        wfp = analog_sgd_fixed_point(prob, c["tau"])
        rows1.append(
            {
                "tau": c["tau"],
                "w_inf_over_tau": args.w_inf / c["tau"],
                "w_norm_over_tau": w_star.norm().item() / c["tau"],
                "transfer_lr": c["transfer_lr"],
                **{f"{m}_{k}": res1[m][i][k] for m in res1 for k in ("err2", "loss_gap")},
                "analog_sgd_predicted_err2": ((wfp - w_star) ** 2).sum().item(),
            }
        )

    # ---- table 2: sweep lr at the smallest tau, W0 = W* -------------------------------------
    tau2 = taus[0]
    cfg2 = [{"tau": tau2, "lr": a, "transfer_lr": args.tt_ratio * a * sigma / tau2} for a in lrs]
    res2 = {
        m: run(m, prob, cfg2, steps2, seeds, w_star, args.seed + 2)
        for m in ("sgd", "analog_sgd", "tiki_taka")
    }
    pred2 = ((analog_sgd_fixed_point(prob, tau2) - w_star) ** 2).sum().item()
    rows2 = [
        {
            "tau": tau2,
            "lr": c["lr"],
            "transfer_lr": c["transfer_lr"],
            **{f"{m}_err2": res2[m][i]["err2"] for m in res2},
            "analog_sgd_predicted_err2": pred2,
        }
        for i, c in enumerate(cfg2)
    ]
    elapsed = time.perf_counter() - t0

    floor_growth = {
        m: rows1[0][f"{m}_err2"] / rows1[-1][f"{m}_err2"] for m in ("sgd", "analog_sgd", "tiki_taka")
    }
    lr_gain = {m: rows2[0][f"{m}_err2"] / rows2[-1][f"{m}_err2"] for m in ("sgd", "analog_sgd", "tiki_taka")}
    result = {
        "problem": {
            "n": args.n,
            "d": args.d,
            "w_inf": args.w_inf,
            "w_norm": w_star.norm().item(),
            "w_norm2": (w_star @ w_star).item(),
            "noise": args.noise,
            "grad_noise_abs_at_opt": sigma,
            "f_star": prob["f_star"].item(),
            "seed": args.seed,
        },
        "table1": {"lr": lr, "steps": steps, "seeds": seeds, "w0": "zeros", "rows": rows1},
        "table2": {"tau": tau2, "steps": steps2, "seeds": seeds, "w0": "w_star", "rows": rows2},
        "floor_growth_smallest_over_largest_tau": floor_growth,
        "err_ratio_largest_over_smallest_lr": lr_gain,
        "elapsed_s": elapsed,
    }

    if args.json == "-":
        print(json.dumps(result, indent=2))
        return 0
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")

    from rich.console import Console
    from rich.table import Table

    con = Console()
    pr = result["problem"]
    con.print(
        f"least squares n={pr['n']} d={pr['d']}  ‖W*‖∞={pr['w_inf']}  ‖W*‖₂={pr['w_norm']:.3f}  "
        f"‖W*‖²={pr['w_norm2']:.3f}  residual std={pr['noise']}  σ̂=mean E|g(W*)|={sigma:.3f}  seeds={seeds}\n"
        f"Tiki-Taka: α = lr, β = c·α·σ̂/τ with c={args.tt_ratio};  'ASGD theory' = Analog SGD's predicted fixed point"
    )
    t1 = Table(title=f"Table 1a — final ‖W−W*‖² after N={steps} steps from W₀=0, α={lr}")
    for col in ("τ", "‖W*‖∞/τ", "SGD", "Analog SGD", "ASGD theory", "Tiki-Taka", "TT β"):
        t1.add_column(col, justify="right")
    for r in rows1:
        t1.add_row(
            f"{r['tau']:g}",
            f"{r['w_inf_over_tau']:.3f}",
            fmt(r["sgd_err2"]),
            fmt(r["analog_sgd_err2"]),
            fmt(r["analog_sgd_predicted_err2"]),
            fmt(r["tiki_taka_err2"]),
            fmt(r["transfer_lr"]),
        )
    con.print(t1)
    t1b = Table(title="Table 1b — final loss gap f(W) − f* (same runs)")
    for col in ("τ", "‖W*‖₂/τ", "SGD", "Analog SGD", "Tiki-Taka"):
        t1b.add_column(col, justify="right")
    for r in rows1:
        t1b.add_row(
            f"{r['tau']:g}",
            f"{r['w_norm_over_tau']:.3f}",
            fmt(r["sgd_loss_gap"]),
            fmt(r["analog_sgd_loss_gap"]),
            fmt(r["tiki_taka_loss_gap"]),
        )
    con.print(t1b)
    t2 = Table(
        title=f"Table 2 — ‖W−W*‖² after {steps2} steps started at W*, τ={tau2:g} (‖W*‖∞/τ={args.w_inf / tau2:.2f})"
    )
    for col in ("α", "TT β", "SGD", "Analog SGD", "ASGD theory", "Tiki-Taka"):
        t2.add_column(col, justify="right")
    for r in rows2:
        t2.add_row(
            f"{r['lr']:g}",
            fmt(r["transfer_lr"]),
            fmt(r["sgd_err2"]),
            fmt(r["analog_sgd_err2"]),
            fmt(r["analog_sgd_predicted_err2"]),
            fmt(r["tiki_taka_err2"]),
        )
    con.print(t2)
    con.print(
        f"table 1, err²(τ={taus[0]:g}) / err²(τ={taus[-1]:g}):  SGD ×{floor_growth['sgd']:.2f}   "
        f"Analog SGD ×{floor_growth['analog_sgd']:.2f}   Tiki-Taka ×{floor_growth['tiki_taka']:.2f}"
    )
    con.print(
        f"table 2, err²(α={lrs[0]:g}) / err²(α={lrs[-1]:g}):  SGD ×{lr_gain['sgd']:.2f}   "
        f"Analog SGD ×{lr_gain['analog_sgd']:.2f}   Tiki-Taka ×{lr_gain['tiki_taka']:.2f}"
    )
    con.print(f"[dim]{elapsed:.1f} s[/dim]")
    return 0


if __name__ == "__main__":
    from hybridc.cli import run_script

    run_script(main)
