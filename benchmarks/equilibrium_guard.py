"""What equilibrium by construction costs: guarded vs unguarded ff-EBMs on Fashion-MNIST, printed as a table.

Each row compiles a model with the Python API (`hybridc.compile`), trains it by EP with a plain torch.optim
loop (Adam, cosine schedule) - so the guard runs through the global optimizer post-step hook, exactly as in a
user's own loop - and reports, beside every accuracy, the mean final free-phase residual max|Δs| of each
analog block, at the training T1 and at 5×T1. An accuracy that changes when T1 grows is the accuracy of a
transient, not of an energy-based model.

Rows (`--rows`, comma-separated):

* conv-off      Conv28 (benchmarks/accuracy.py: conv3x3 16 · pool · conv3x3 32 · pool · linear), max_block_size
                2, pooling absorbed: a two-layer convolutional Hopfield block + the classifier; constrain=False
* conv-0.9      the same, feedback gain ρ ≤ 0.9
* conv-0.95     ρ ≤ 0.95, every phase by tolerance (max|Δs| < 1e-4, checked every 5 steps, at most 4·T1 steps)
* conv-0.8      ρ ≤ 0.8 (the compiler's default, DEFAULT_FEEDBACK_GAIN), with the compiler's default of moving the
                factor downstream (conv2's bias ×t with its weight, the classifier's weight ×1/t: ReLU → max-pool →
                flatten is positively homogeneous), so only the block's feedback shrinks
* conv-0.8-plain  the same with the plain rescale (compensate=False: the block's output shrinks with its weights;
                the default before the downstream compensation)
* conv-0.8-t30  conv-0.8 with T1 = 30 (the free phase's last step then moves < 1e-3 at ρ 0.8)
* conv-async    the conv model unconstrained with even/odd (async) updates: the fair unguarded baseline at an
                equilibrium (async relaxation descends the energy, so it settles where the sync one oscillates)
* conv-ff       the conv model with max_block_size 1: no feedback at all (each layer its own block), the limit a
                vanishing feedback gain tends to
* mlp-off       MLP 784-256-256-10, max_block_size 3 (one three-layer block), constrain=False
* mlp-0.9       the same, ρ ≤ 0.9 (its top neuron is the model's output: no downstream compensation, plain rescale)
* mlp-off-dro   MLP with `readout="digital"`: the classifier digital, 784-256-256 one two-layer block, unconstrained
* mlp-0.9-dro   the same, ρ ≤ 0.9: the factor is moved downstream into the digital classifier (through its ReLU)
* mlp-0.9-dro-plain  the same with the plain rescale

    python benchmarks/equilibrium_guard.py --epochs 2 --train-subset 20000 --threads 1
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

from accuracy import Conv28  # noqa: E402

from hybridc.api import compile as hc_compile  # noqa: E402
from hybridc.data.datasets import load_dataset  # noqa: E402
from hybridc.energy.contraction import constrain_model, feedback_norms  # noqa: E402
from hybridc.models.mlp import MLP  # noqa: E402

ROWS: dict[str, dict[str, Any]] = {
    "conv-off": {"model": "conv", "constrain": False},
    "conv-0.9": {"model": "conv", "gain": 0.9},
    "conv-0.95": {"model": "conv", "gain": 0.95, "tol": True},
    "conv-0.8": {"model": "conv", "gain": 0.8},
    "conv-0.8-plain": {"model": "conv", "gain": 0.8, "compensate": False},
    "conv-0.8-t30": {"model": "conv", "gain": 0.8, "t1": 30},
    "conv-async": {"model": "conv", "constrain": False, "solver": {"mode": "async"}},
    "conv-ff": {"model": "conv", "constrain": False, "mbs": 1},
    "mlp-off": {"model": "mlp", "constrain": False},
    "mlp-0.9": {"model": "mlp", "gain": 0.9},
    "mlp-off-dro": {"model": "mlp", "constrain": False, "policies": {"readout": "digital"}},
    "mlp-0.9-dro": {"model": "mlp", "gain": 0.9, "policies": {"readout": "digital"}},
    "mlp-0.9-dro-plain": {
        "model": "mlp",
        "gain": 0.9,
        "compensate": False,
        "policies": {"readout": "digital"},
    },
}


def _data(args: argparse.Namespace) -> tuple[torch.Tensor, ...]:
    train = load_dataset("fashion-mnist", split="train", download=False)
    test = load_dataset("fashion-mnist", split="test", download=False)
    (xtr, ytr), (xte, yte) = train.tensors, test.tensors
    mean, std = train.mean[0], train.std[0]
    xtr, xte = (xtr - mean) / std, (xte - mean) / std
    g = torch.Generator().manual_seed(args.seed)
    idx = torch.randperm(len(xtr), generator=g)[: args.train_subset]
    return xtr[idx], ytr[idx], xte[: args.test_subset], yte[: args.test_subset]


def _model(kind: str) -> torch.nn.Module:
    if kind == "conv":
        return Conv28()
    return MLP((784, 256, 256, 10), in_shape=(1, 28, 28))


@torch.no_grad()
def _evaluate(
    ff: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, t1: int, solver: dict[str, Any]
) -> tuple[float, float]:
    """Test accuracy and the largest (over blocks) mean final residual, with the free phase at `t1`."""
    ff.set_solver(**(solver | {"t1": t1, "max_steps": 4 * t1}))
    ff.eval()
    correct, res, n = 0, {}, 0
    for i in range(0, len(x), 1000):
        out = ff(x[i : i + 1000])
        correct += int((out.argmax(1) == y[i : i + 1000]).sum())
        for k, v in ff.equilibrium_residuals().items():
            res[k] = res.get(k, 0.0) + v
        n += 1
    ff.train()
    return correct / len(x), max((v / n for v in res.values()), default=0.0)


def run_row(
    name: str, spec: dict[str, Any], data: tuple[torch.Tensor, ...], args: argparse.Namespace
) -> dict[str, Any]:
    torch.manual_seed(args.seed)
    xtr, ytr, xte, yte = data
    model = _model(spec["model"])
    t1 = spec.get("t1", args.t1)
    solver: dict[str, Any] = {"t1": t1, "t2": args.t2, "check_every": t1} | spec.get("solver", {})
    if spec.get("tol"):
        solver |= {"tol": 1e-4, "check_every": 5}
    mbs = spec.get("mbs", 2 if spec["model"] == "conv" else 3)
    t0 = time.time()
    constrain, compensate = spec.get("constrain", True), spec.get("compensate", True)
    ff = hc_compile(
        model,
        xtr[:8],
        max_block_size=mbs,
        hardsigmoid_slope=spec.get("slope", args.slope),
        beta=args.beta,
        solver=solver | {"max_steps": 4 * t1},
        constrain=constrain and compensate,
        feedback_gain=spec.get("gain"),
        **spec.get("policies", {}),
    )
    if constrain and not compensate:  # the compiler's guard without moving the factor downstream
        constrain_model(ff, spec["gain"], compensate=False)
    compile_s = time.time() - t0
    opt = torch.optim.Adam(ff.parameters(), lr=args.lr)
    steps = args.epochs * math.ceil(len(xtr) / args.batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    g = torch.Generator().manual_seed(args.seed)
    t0 = time.time()
    train_res = []
    for _ in range(args.epochs):
        perm = torch.randperm(len(xtr), generator=g)
        for i in range(0, len(xtr), args.batch_size):
            b = perm[i : i + args.batch_size]
            loss = F.cross_entropy(ff(xtr[b]), ytr[b])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        train_res.append(max(ff.equilibrium_residuals().values(), default=0.0))
    train_s = time.time() - t0
    acc1, res1 = _evaluate(ff, xte, yte, t1, solver)
    acc5, res5 = _evaluate(ff, xte, yte, 5 * t1, solver)
    rhos = feedback_norms(ff)
    rescaled = sorted({d.block for d in ff.plan.decisions if d.action == "rescaled"})
    comp = {b: c["mode"] for b, c in getattr(ff, "guard_compensation", {}).items()}
    return {
        "row": name,
        "acc_t1": acc1,
        "res_t1": res1,
        "acc_5t1": acc5,
        "res_5t1": res5,
        "train_residual_last": train_res[-1],
        "rho_final": rhos,
        "rescaled_blocks": rescaled,
        "compensation": comp,
        "compile_s": compile_s,
        "train_s": train_s,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", default=",".join(ROWS))
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--train-subset", type=int, default=20000)
    p.add_argument("--test-subset", type=int, default=10000)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--beta", type=float, default=0.05)
    p.add_argument("--t1", type=int, default=20)
    p.add_argument("--t2", type=int, default=5)
    p.add_argument("--slope", type=float, default=0.25)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", type=Path, default=None, help="append each row's result as a JSON line")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    data = _data(args)
    results = []
    print(f"rows {args.rows}; {args.epochs} epoch(s) on {len(data[0])} samples", flush=True)
    for name in args.rows.split(","):
        r = run_row(name, ROWS[name], data, args)
        results.append(r)
        print(json.dumps(r), flush=True)
        if args.json:
            with args.json.open("a") as f:
                f.write(json.dumps(r) + "\n")
    print(
        f"\nFashion-MNIST, {args.epochs} epoch(s) on {args.train_subset} training samples, "
        f"{args.test_subset} test samples, T1={args.t1}, T2={args.t2}, β={args.beta}, slope {args.slope}"
    )
    print(
        f"{'row':<18} {'acc@T1':>7} {'resid@T1':>9} {'acc@5T1':>8} {'resid@5T1':>9} {'ρ final':>16} "
        f"{'guard':>10} {'train s':>8}"
    )
    for r in results:
        rho = ",".join(f"{v:.3f}" for v in r["rho_final"].values()) or "-"
        guard = ",".join(r["compensation"].values()) or "-"
        print(
            f"{r['row']:<18} {100 * r['acc_t1']:>6.2f}% {r['res_t1']:>9.1e} {100 * r['acc_5t1']:>7.2f}% "
            f"{r['res_5t1']:>9.1e} {rho:>16} {guard:>10} {r['train_s']:>8.0f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
