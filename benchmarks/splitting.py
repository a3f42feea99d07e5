"""The ff-EBM paper's splitting experiment, compiled by hybridc: one ordinary VGG, cut by `max_block_size`
into 1, 2, 3 or 6 energy-based blocks, trained by EP and by implicit differentiation (ID), 3 seeds each.

The paper (Nest & Ernoult, NeurIPS 2024, Table 1 / camera-ready tolerance version) claims that "a standard
DHN can be arbitrarily split into any uniform size while maintaining or improving performance with increases
in simulation speed of up to four times". Here every block split is built by hybridc from the zoo's
`vgg-paper` (6 weight layers + a digital readout; `vgg-paper-12` for the gpu preset) through the Python API
(`hybridc.api.compile(model, x, max_block_size=N, ...)`): no hand-written block.

Columns (one row per model / block size / gradient, mean ± std over seeds):

* `acc`        test accuracy (training solver settings).
* `s/epoch`    wall-clock seconds per training epoch (train subset, this machine's threads).
* `steps`      mean free-phase relaxation steps to tolerance per block (tolerance version; over training
               batches and blocks) and `layer-steps`: Σ_blocks steps × weight layers per sample — the
               simulation cost that splitting changes.
* `speed-up`   s/epoch of the single block (largest max_block_size) / s/epoch of this split, same gradient.
* `residual`   final free-phase residual max|T(s) − s| (worst block, mean over test batches).
* `EP/ID`      gradient gap at the end of training on one training batch: 1 − cosine and relative error
               ‖g_EP − g_ID‖ / ‖g_ID‖ of the whole gradient (same weights, same batch).
* `eq`         "!" when the model is not at equilibrium: residual > 1e-3 after the free phase, or test
               accuracy (on `eq_subset` samples) that drops by more than 0.5 points when the free phase is
               given 5× its step budget (5·T1 fixed steps; in tolerance mode 5× max_steps and tol/10).

Presets:

* `--preset cpu` (the measured tables in the README): Fashion-MNIST padded to 32×32 (hybridc's loader,
  /usr/share/datasets/fashion-mnist, `hybridc.data.fashion32`), **width 1/16** (channels 8-16-16-32-32, hidden
  Linear 16 instead of 128-256-256-512-512 / 256), **5000 training images** (a fixed random subset),
  **3 epochs**, 2000 test images (500 for the 5× check), batch 32, Adam lr 2e-3 with cosine annealing,
  β 0.2 centered (as the paper, but on hybridc's unit-RMS δ: see below), the reference's asynchronous (even/odd)
  updates, tolerance version: max|Δs| < 1e-4 checked every step, at most 100 steps per phase (the paper:
  relative ‖Δs‖/‖s‖ < 1e-6, at most 1580 steps), hard-sigmoid slope 1.0 (the paper's fixed-step configs),
  PyTorch's default init (the reference's GOE variance, tuned for full width, leaves the width-1/16 net with
  logits of std ~4e-6: `--init goe-conv` gives it), hybridc's default equilibrium guard ρ ≤ 0.8 (the paper has
  none; `--feedback-gain 0` removes it: without it, at this width and lr, n=6 EP collapsed to chance in epoch 3
  and n=6 ID hit a NaN off equilibrium), norm policy `entry`: the paper's one BatchNorm stays in
  block 1's input synapse at every split.
* `--preset gpu`: the paper's widths and settings — CIFAR-10 when its files are found (else Fashion-MNIST
  32×32), batch 128, Adam (weight decay 3e-4) + cosine to 1e-6, β 0.2 centered, the reference's conv-only
  GOE init (`init="goe-conv"`), asynchronous updates, norm `entry`, no guard (`feedback_gain` 0);
  `vgg-paper` at 6, 3, 2, 1 (fixed version: T1 60, T2 20, slope 1.0, lr 1e-4, 200 epochs; tolerance version:
  at most 1580 steps, tol 1e-6, slope 0.65, lr 3e-4, 100 epochs) and `vgg-paper-12` at 4, 3, 2 (fixed: T1 20,
  T2 5, lr 5e-5; tolerance: tol 1e-4, slope 0.55), per `hydra_conf/splitting_{small,large}[_TOL].yaml` of the
  reference code. `--epochs` shortens it to what a lent GPU allows.

Faithfulness notes (what differs from the paper, and why):

* The readout stays digital (partition policy `readout="digital"`): the paper's Linear read of the last
  block. The paper differentiates CE∘readout *inside* the nudged phase (the nudge −β ∂ℓ(readout(s_L), y)/∂s_L is
  re-evaluated at every nudged step, raw per-sample gradient); hybridc nudges with the gradient δ at the free
  equilibrium, fixed for the phase and normalised to unit RMS per sample (`GradientConfig.normalize`), so its β
  is not the paper's raw-δ β.
* The paper's one BatchNorm (block 1's feedforward entry, conv0 → pool → BN) is in block 1's input synapse
  (norm policy `entry` keeps a norm that reads the block's inputs only): evaluated once per relaxation phase
  with the batch's statistics in training (running statistics updated by the free phase only, never by the
  feedback-gain probe), running statistics in eval; its affine parameters are trained by EP/ID through Φ, as the
  reference trains them. At `max_block_size` 1 every activation, pool and norm is digital (each block is one
  weight layer with a linear neuron), so n=1 is the feedforward net, BN included.
* hybridc's tolerance is max|Δs| (absolute, all layers), the paper's the mean over layers of ‖Δs‖/‖s‖; and with
  a tolerance set hybridc applies it to the nudged phases too (capped at max_steps), where the paper runs its T2
  steps (tolerance on the free phase only).

Rows are appended to a JSON-lines file (`--out`, default `benchmarks/results/splitting_<preset>.jsonl`) as
each finishes; rows already there are skipped, so an interrupted run resumes where it stopped.

    python benchmarks/splitting.py --preset cpu                     # the whole L=6 grid (resumes)
    python benchmarks/splitting.py --preset cpu --table-only        # the table from the rows so far
    python benchmarks/splitting.py --preset gpu --device cuda --epochs 5 --solver tol
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from hybridc.api import compile as hc_compile
from hybridc.data.fashion32 import load_32
from hybridc.errors import EquilibriumDivergedError
from hybridc.models import build_zoo_model

RESULTS = Path(__file__).resolve().parent / "results"
#: The equilibrium flag's thresholds (see the module docstring).
RESIDUAL_FLAG = 1e-3
DROP_FLAG = 0.005


@dataclass(frozen=True)
class Settings:
    """Everything one grid needs; a preset is one instance, flags override fields."""

    data: str = "fashion-mnist"
    models: dict[str, list[int]] = field(default_factory=lambda: {"vgg-paper": [6, 3, 2, 1]})
    gradients: tuple[str, ...] = ("ep", "id")
    seeds: tuple[int, ...] = (0, 1, 2)
    width: float = 0.0625
    train_subset: int | None = 5000
    test_subset: int | None = 2000
    eq_subset: int = 500
    epochs: int = 3
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 0.0
    eta_min: float = 0.0
    beta: float = 0.2
    solver: str = "tol"  # "tol" (stop on tolerance, capped at max_steps) or "fixed" (t1/t2 steps)
    t1: int = 60
    t2: int = 20
    tol: float = 1e-4
    max_steps: int = 100
    check_every: int = 1
    mode: str = "async"  # the reference's even/odd updates (`asynchronous: true`); "sync" oscillates more
    slope: float = 1.0
    init: str = (
        "keep"  # "goe-conv" (the reference's conv-only GOE), "goe" (every weight) or "keep" (PyTorch's)
    )
    goe_variance: float = 8.351e-5
    norm: str = "synapse"
    feedback_gain: float | None = None  # None: the compiler's default guard (ρ ≤ 0.8); 0: off (the paper)
    id_tol: float = 1e-6
    device: str = "cpu"
    #: per-model overrides (the gpu preset's 12-layer net has its own T1/T2, slope, lr)
    per_model: dict[str, dict[str, Any]] = field(default_factory=dict)


PRESETS: dict[str, Settings] = {
    "cpu": Settings(),
    "gpu": Settings(
        data="cifar10",
        models={"vgg-paper": [6, 3, 2, 1], "vgg-paper-12": [4, 3, 2]},
        width=1.0,
        train_subset=None,
        test_subset=None,
        eq_subset=2000,
        epochs=100,
        batch_size=128,
        lr=3e-4,
        weight_decay=3e-4,
        eta_min=1e-6,
        beta=0.2,
        solver="tol",
        t1=60,
        t2=20,
        tol=1e-6,
        max_steps=1580,
        check_every=5,
        slope=0.65,
        norm="synapse",
        device="cuda",
        init="goe-conv",
        feedback_gain=0.0,
        per_model={
            "vgg-paper-12": {
                "t1": 20,
                "t2": 5,
                "tol": 1e-4,
                "slope": 0.55,
                "lr": 5e-5,
                "goe_variance": 5.9e-5,
            }
        },
    ),
}
#: The gpu preset's fixed-step version (`--solver fixed`): the paper's splitting_small / splitting_large.
GPU_FIXED = {
    "vgg-paper": {"slope": 1.0, "lr": 1e-4, "epochs": 200},
    "vgg-paper-12": {"slope": 1.0, "lr": 5e-5, "epochs": 200},
}


# ---- compiling the paper's splits -------------------------------------------------------------------------
def settings_for(s: Settings, model: str) -> Settings:
    return replace(s, **s.per_model.get(model, {}))


def solver_dict(s: Settings, scale: int = 1) -> dict[str, Any]:
    """SolverConfig fields; `scale` multiplies the step budget (and divides the tolerance) for the 5× check."""
    if s.solver == "tol":
        return {
            "t1": s.t1,
            "t2": s.t2,
            "tol": s.tol / (10 if scale > 1 else 1),
            "max_steps": s.max_steps * scale,
            "check_every": s.check_every,
            "mode": s.mode,
        }
    return {"t1": s.t1 * scale, "t2": s.t2, "check_every": max(s.t1 * scale, s.t2), "mode": s.mode}


def build(s: Settings, model_name: str, n: int, gradient: str, example: torch.Tensor) -> torch.nn.Module:
    """The ff-EBM hybridc compiles from the ordinary zoo model at max_block_size `n`."""
    model = build_zoo_model(
        model_name, width=s.width, in_channels=example.shape[1], image_size=example.shape[-1]
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ff = hc_compile(
            model,
            example,
            max_block_size=n,
            norm=s.norm,
            readout="digital",
            hardsigmoid_slope=s.slope,
            gradient=gradient,
            beta=s.beta,
            init=s.init,
            goe_variance=s.goe_variance,
            solver=solver_dict(s),
            feedback_gain=s.feedback_gain,
        )
    ff.set_gradient(id_solver="fixed_point", id_tol=s.id_tol)
    return ff.to(s.device)


def block_layers(ff: torch.nn.Module) -> dict[str, int]:
    return {b.name: len(b.weight_layers) for b in ff.plan.analog_blocks}


# ---- data -------------------------------------------------------------------------------------------------
def load_data(s: Settings) -> tuple[str, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(name, x_train, y_train, x_test, y_test), normalised, 32×32, the subsets fixed by seed 0
    (`hybridc.data.fashion32.load_32`: Fashion-MNIST when the preset's data set is not on disk)."""
    d = load_32(s.data, train_subset=s.train_subset, test_subset=s.test_subset)
    return d.name, d.x_train, d.y_train, d.x_test, d.y_test


# ---- one row ----------------------------------------------------------------------------------------------
@torch.no_grad()
def evaluate(
    ff: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, s: Settings, scale: int = 1, batch: int = 500
) -> tuple[torch.Tensor, float, dict[str, float]]:
    """(per-sample hits (bool, CPU), worst block's mean final free-phase residual, mean free-phase steps per
    block)."""
    ff.set_solver(**solver_dict(s, scale))
    ff.eval()
    hits, res, steps, batches = [], {}, {}, 0
    for i in range(0, len(x), batch):
        xb, yb = x[i : i + batch].to(s.device), y[i : i + batch].to(s.device)
        hits.append((ff(xb).argmax(1) == yb).cpu())
        for k, v in ff.equilibrium_residuals().items():
            res[k] = res.get(k, 0.0) + v
        for k, b in ff.analog_blocks.items():
            steps[k] = steps.get(k, 0) + b.last_steps
        batches += 1
    ff.train()
    ff.set_solver(**solver_dict(s))
    return (
        torch.cat(hits),
        max((v / batches for v in res.values()), default=0.0),
        {k: v / batches for k, v in steps.items()},
    )


def gradient_gap(ff: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, s: Settings) -> dict[str, float]:
    """EP vs ID on one batch with the same weights: 1 − cosine and relative error of the whole gradient."""
    grads: dict[str, torch.Tensor] = {}
    mode = next(iter(ff.analog_blocks.values())).gradient.mode
    try:
        for g in ("ep", "id"):
            ff.set_gradient(g)
            ff.zero_grad(set_to_none=True)
            F.cross_entropy(ff(x.to(s.device)), y.to(s.device)).backward()
            grads[g] = torch.cat([p.grad.flatten().double() for p in ff.parameters() if p.grad is not None])
    except EquilibriumDivergedError:  # ID has no gradient off equilibrium: the gap is undefined, not zero
        return {"ep_id_1mcos": float("nan"), "ep_id_relerr": float("nan")}
    finally:
        ff.set_gradient(mode)
    ff.zero_grad(set_to_none=True)
    ep, gid = grads["ep"], grads["id"]
    cos = float(F.cosine_similarity(ep, gid, dim=0))
    return {"ep_id_1mcos": 1.0 - cos, "ep_id_relerr": float((ep - gid).norm() / gid.norm().clamp_min(1e-30))}


def run_row(
    s: Settings, data: tuple, model_name: str, n: int, gradient: str, seed: int, ckpt_dir: Path | None
) -> dict[str, Any]:
    data_name, xtr, ytr, xte, yte = data
    torch.manual_seed(seed)
    ff = build(s, model_name, n, gradient, xtr[:8])
    layers = block_layers(ff)
    opt = torch.optim.Adam(ff.parameters(), lr=s.lr, weight_decay=s.weight_decay)
    batches = math.ceil(len(xtr) / s.batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, s.epochs * batches, eta_min=s.eta_min)
    g = torch.Generator().manual_seed(1000 + seed)
    epoch_s: list[float] = []
    steps_sum: dict[str, float] = dict.fromkeys(layers, 0.0)
    n_steps = 0
    losses: list[float] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(s.epochs):
            if s.device.startswith("cuda"):
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            perm = torch.randperm(len(xtr), generator=g)
            total = torch.zeros((), device=s.device)
            for i in range(0, len(xtr), s.batch_size):
                b = perm[i : i + s.batch_size]
                loss = F.cross_entropy(ff(xtr[b].to(s.device)), ytr[b].to(s.device))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                total += loss.detach() * len(b)
                for k, blk in ff.analog_blocks.items():
                    steps_sum[k] += blk.last_steps
                n_steps += 1
            if s.device.startswith("cuda"):
                torch.cuda.synchronize()
            epoch_s.append(time.perf_counter() - t0)
            losses.append(float(total) / len(xtr))
            print(
                f"  {model_name} n={n} {gradient} seed {seed}: epoch {len(epoch_s)}/{s.epochs} loss {losses[-1]:.4f} "
                f"({epoch_s[-1]:.0f} s)",
                flush=True,
            )
        unconverged = sum(1 for w in caught if "fixed point" in str(w.message))
        hits, residual, test_steps = evaluate(ff, xte, yte, s)
        eq = min(s.eq_subset, len(xte))
        acc, acc_eq = (
            float(hits.float().mean()),
            float(hits[:eq].float().mean()),
        )  # the 1× run on the check's samples
        hits_5x, residual_5x, steps_5x = evaluate(ff, xte[:eq], yte[:eq], s, scale=5)
        acc_5x = float(hits_5x.float().mean())
        gap = gradient_gap(ff, xtr[: s.batch_size], ytr[: s.batch_size], s)
    train_steps = {k: v / n_steps for k, v in steps_sum.items()}
    if ckpt_dir is not None:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        torch.save(ff.state_dict(), ckpt_dir / f"{model_name}-n{n}-{gradient}-s{seed}.pt")
    flag = residual > RESIDUAL_FLAG or acc_5x < acc_eq - DROP_FLAG
    return {
        "model": model_name,
        "max_block_size": n,
        "gradient": gradient,
        "seed": seed,
        "data": data_name,
        "blocks": layers,
        "test_acc": acc,
        "epoch_s": epoch_s,
        "train_loss": losses,
        "train_steps_per_block": train_steps,
        "test_steps_per_block": test_steps,
        "layer_steps": sum(train_steps[k] * layers[k] for k in layers),
        "residual": residual,
        "acc_eq": acc_eq,
        "acc_5x": acc_5x,
        "residual_5x": residual_5x,
        "steps_5x_per_block": steps_5x,
        "unconverged_warnings": unconverged,
        "not_at_equilibrium": flag,
        **gap,
        "threads": torch.get_num_threads(),
        "device": s.device,
    }


# ---- grid, results file, table ----------------------------------------------------------------------------
#: Settings that are grid dimensions (or bookkeeping), not part of what a row measured.
_GRID_FIELDS = ("models", "per_model", "seeds", "gradients")


def row_settings(s: Settings) -> dict[str, Any]:
    """What a row records of its settings (JSON-normalised: tuples as lists)."""
    return json.loads(json.dumps({k: v for k, v in asdict(s).items() if k not in _GRID_FIELDS}, default=str))


def settings_diff(row: dict[str, Any], s: Settings) -> str:
    rec, now = row.get("settings", {}), row_settings(settings_for(s, row.get("model", "")))
    diff = [
        f"{k}: {rec.get(k)!r} there, {now.get(k)!r} now"
        for k in sorted(set(rec) | set(now))
        if k not in _GRID_FIELDS and rec.get(k) != now.get(k)
    ]
    return "; ".join(diff[:3]) or "no settings recorded"


def same_settings(row: dict[str, Any], s: Settings) -> bool:
    """Was `row` run with `s` (its model's per-model settings)? A resumed grid must not count rows of other
    settings as done, nor mix them into its table."""
    rec = {k: v for k, v in row.get("settings", {}).items() if k not in _GRID_FIELDS}
    return rec == row_settings(settings_for(s, row.get("model", "")))


def row_key(r: dict[str, Any]) -> tuple:
    return (r["model"], int(r["max_block_size"]), r["gradient"], int(r["seed"]))


def read_rows(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def append_row(path: Path, row: dict[str, Any]) -> None:
    """One JSON line per finished row, flushed and fsynced: a killed run loses at most the row in progress."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(json.dumps(row, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _ms(values: list[float], fmt: str, scale: float = 1.0) -> str:
    if not values:
        return "-"
    m = statistics.mean(values) * scale
    if len(values) < 2:
        return format(m, fmt)
    return f"{format(m, fmt)} ± {format(statistics.stdev(values) * scale, fmt)}"


def table(rows: list[dict[str, Any]]) -> str:
    """Markdown table: one line per (model, max_block_size, gradient), mean ± std over seeds."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in sorted(rows, key=lambda r: (r["model"], -r["max_block_size"], r["gradient"], r["seed"])):
        groups.setdefault((r["model"], r["max_block_size"], r["gradient"]), []).append(r)
    base: dict[tuple, float] = {}
    for (m, n, g), rs in groups.items():
        biggest = max(k[1] for k in groups if k[0] == m and k[2] == g)
        ok = [r for r in rs if "diverged" not in r]
        if n == biggest and ok:
            base[(m, g)] = statistics.mean(statistics.mean(r["epoch_s"]) for r in ok)
    lines = [
        "| model | blocks (layers) | grad | seeds | test acc % | s/epoch | speed-up | steps/block | "
        "layer-steps | residual | EP/ID 1−cos | EP/ID rel.err | acc 5× % | eq |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (m, n, g), every in groups.items():
        rs = [r for r in every if "diverged" not in r]
        lost = len(every) - len(rs)
        if not rs:
            lines.append(
                f"| {m} | n={n} | {g} | {len(every)} | diverged ({lost} of {lost}) | | | | | | | | | ! |"
            )
            continue
        sizes = "+".join(str(v) for v in rs[0]["blocks"].values())
        es = [statistics.mean(r["epoch_s"]) for r in rs]
        steps = [statistics.mean(r["train_steps_per_block"].values()) for r in rs]
        speed = base.get((m, g), float("nan")) / statistics.mean(es)
        flag = ("!" if any(r["not_at_equilibrium"] for r in rs) else "ok") + (
            f" ({lost} diverged)" if lost else ""
        )
        lines.append(
            f"| {m} | n={n}: {sizes} | {g} | {len(rs)} | {_ms([r['test_acc'] for r in rs], '.2f', 100)} | "
            f"{_ms(es, '.1f')} | {speed:.2f}× | {_ms(steps, '.1f')} | {_ms([r['layer_steps'] for r in rs], '.0f')} | "
            f"{max(r['residual'] for r in rs):.1e} | {statistics.mean(r['ep_id_1mcos'] for r in rs):.1e} | "
            f"{statistics.mean(r['ep_id_relerr'] for r in rs):.2f} | {_ms([r['acc_5x'] for r in rs], '.2f', 100)} | "
            f"{flag} |"
        )
    return "\n".join(lines)


def grid(s: Settings) -> list[tuple[str, int, str, int]]:
    """Rows in the order they run: every seed of a configuration before the next, seed 0 of all first."""
    cells = [(m, n, g) for m, sizes in s.models.items() for n in sizes for g in s.gradients]
    return [(m, n, g, seed) for seed in s.seeds for (m, n, g) in cells]


def parse(argv: list[str] | None) -> tuple[argparse.Namespace, Settings]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    p.add_argument(
        "--out", type=Path, default=None, help="JSON-lines results (default results/splitting_<preset>.jsonl)"
    )
    p.add_argument("--table-only", action="store_true", help="print the table of the rows so far and exit")
    p.add_argument("--solver", choices=["tol", "fixed"], default=None, help="tolerance or fixed-step version")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--seeds", default=None, help="comma-separated seeds (default 0,1,2)")
    p.add_argument("--sizes", default=None, help="comma-separated max block sizes for every model")
    p.add_argument("--models", default=None, help="comma-separated zoo models of the preset")
    p.add_argument("--gradients", default=None, help="ep,id")
    p.add_argument("--width", type=float, default=None)
    p.add_argument("--train-subset", type=int, default=None)
    p.add_argument("--test-subset", type=int, default=None)
    p.add_argument("--eq-subset", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--device", default=None)
    p.add_argument("--init", choices=["goe-conv", "goe", "keep"], default=None)
    p.add_argument("--mode", choices=["async", "sync"], default=None, help="relaxation updates")
    p.add_argument(
        "--goe-variance", type=float, default=None, help="GOE init variance (the paper's: 8.351e-5)"
    )
    p.add_argument("--slope", type=float, default=None, help="hard-sigmoid slope")
    p.add_argument("--feedback-gain", type=float, default=None, help="equilibrium guard ρ bound (0 = off)")
    p.add_argument("--norm", choices=["drop", "entry", "synapse", "split"], default=None)
    p.add_argument("--beta", type=float, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--checkpoints", type=Path, default=None, help="save each trained model's state_dict here")
    args = p.parse_args(argv)
    s = PRESETS[args.preset]
    if args.preset == "gpu" and args.solver == "fixed":
        s = replace(
            s, solver="fixed", per_model={m: s.per_model.get(m, {}) | v for m, v in GPU_FIXED.items()}
        )
    over: dict[str, Any] = {
        k: getattr(args, k)
        for k in (
            "solver",
            "epochs",
            "width",
            "train_subset",
            "test_subset",
            "eq_subset",
            "batch_size",
            "device",
            "init",
            "lr",
            "feedback_gain",
            "norm",
            "beta",
            "goe_variance",
            "slope",
            "mode",
        )
        if getattr(args, k) is not None
    }
    if args.seeds:
        over["seeds"] = tuple(int(v) for v in args.seeds.split(","))
    if args.gradients:
        over["gradients"] = tuple(v.strip() for v in args.gradients.split(","))
    models = dict(s.models)
    if args.models:
        models = {m: models[m] for m in args.models.split(",")}
    if args.sizes:
        models = {m: [int(v) for v in args.sizes.split(",")] for m in models}
    over["models"] = models
    return args, replace(s, **over)


def main(argv: list[str] | None = None) -> int:
    args, s = parse(argv)
    out = args.out or RESULTS / f"splitting_{args.preset}.jsonl"
    if args.table_only:
        print(table(read_rows(out)))
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = read_rows(out)
    stale = [r for r in rows if not same_settings(r, s)]
    if stale:
        print(
            f"{out}: {len(stale)} of its {len(rows)} rows were run with other settings (e.g. "
            f"{settings_diff(stale[0], s)}); give another --out, or move that file away",
            file=sys.stderr,
        )
        return 2
    done = {row_key(r) for r in rows}
    todo = [k for k in grid(s) if k not in done]
    print(
        f"preset {args.preset}: {len(todo)} rows to run ({len(done)} already in {out}); settings: "
        f"{json.dumps(asdict(s), default=str)}",
        flush=True,
    )
    if todo:
        data = load_data(s)
    for model_name, n, gradient, seed in todo:
        ms = settings_for(s, model_name)
        t0 = time.time()
        try:
            row = run_row(ms, data, model_name, n, gradient, seed, args.checkpoints)
        except EquilibriumDivergedError as exc:  # a finding of the grid, not a crash of it
            row = {
                "model": model_name,
                "max_block_size": n,
                "gradient": gradient,
                "seed": seed,
                "diverged": str(exc).split(";")[0],
                "not_at_equilibrium": True,
                "settings": row_settings(ms),
            }
            append_row(out, row | {"preset": args.preset, "wall_s": time.time() - t0})
            print(f"{model_name} n={n} {gradient} seed {seed}: DIVERGED: {row['diverged']}", flush=True)
            continue
        row |= {
            "preset": args.preset,
            "solver": ms.solver,
            "wall_s": time.time() - t0,
            "settings": row_settings(ms),
        }
        append_row(out, row)
        print(
            f"{model_name} n={n} {gradient} seed {seed}: acc {row['test_acc']:.4f}, "
            f"{statistics.mean(row['epoch_s']):.1f} s/epoch, steps/block {row['train_steps_per_block']}, "
            f"residual {row['residual']:.2e}, acc 5x {row['acc_5x']:.4f}, EP/ID 1-cos {row['ep_id_1mcos']:.2e}, "
            f"wall {row['wall_s']:.0f} s",
            flush=True,
        )
    print(table(read_rows(out)))
    return 0


if __name__ == "__main__":
    from hybridc.cli import run_script

    run_script(main)
