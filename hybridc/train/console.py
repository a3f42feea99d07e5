"""What a run shows its user: its header, the epoch lines and progress bars, and the likely causes of a run
stuck at chance. Pure functions of the run's config, plan and records (the header reads a set-up Trainer)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from hybridc.plan import Plan
from hybridc.train.experiment import ExperimentConfig

if TYPE_CHECKING:
    from hybridc.train.loop import Trainer

#: mean free-phase residual above which a block's equilibrium is called off in warnings
UNCONVERGED_RESIDUAL = 0.1


def activation_text(plan: Plan | None) -> str:
    """The neuron activations the analog blocks really use (from the compiled plan): `hardsigmoid slope
    0.5`, or under `activation keep` the model's own (`keep: relu`)."""
    pc = plan.config if plan is not None else None
    kinds: list[str] = []
    for b in plan.analog_blocks if plan is not None else []:
        for nr in b.neurons:
            a = nr.activation
            text = a.kind + "".join(f" {k} {v:g}" for k, v in a.params.items())
            if text not in kinds:
                kinds.append(text)
    if pc is not None and pc.activation == "keep":
        return "activation keep: " + (", ".join(kinds) or "the model's own")
    return "activation " + (
        ", ".join(kinds) or (f"hardsigmoid slope {pc.hardsigmoid_slope:g}" if pc else "-")
    )


def analog_text(plan: Plan | None, cfg: ExperimentConfig) -> str:
    """The block kind and the device effects the analog blocks simulate."""
    pc = plan.config if plan is not None else None
    kind = pc.eb_kind if pc is not None else (cfg.eb_kind or "dhn")
    kinds = sorted({b.eb_kind or kind for b in plan.analog_blocks}) if plan is not None else [kind]
    text = "/".join(kinds)
    if "drn" in kinds and pc is not None:
        text += f" (γ {pc.drn_gamma:g})"
    spec = plan.analog if plan is not None else None
    effects = {
        k: v for k, v in (spec.model_dump() if spec is not None else {}).items() if v not in (None, 0, 0.0)
    }
    per_block = [b.name for b in (plan.analog_blocks if plan is not None else []) if b.analog]
    text += ", device effects " + (
        ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in effects.items())
        if effects
        else "off (ideal device)"
    )
    if per_block:
        text += f" (own effects in {', '.join(per_block)})"
    return text


def free_phase_text(cfg: ExperimentConfig) -> str:
    """How the run's free phases end: `T1 20` (fixed steps) or `free phase to equilibrium (tol 1e-04)`."""
    return f"T1 {cfg.t1}" if cfg.t1 is not None else f"free phase to equilibrium (tol {cfg.free_tol:g})"


def epoch_line(r: dict[str, Any], epochs: int) -> str:
    """The line printed after each epoch: losses, accuracies, time, throughput, residual per block."""
    res = ", ".join(f"{k} {v:.1e}" for k, v in r["residual"].items())
    return (
        f"epoch {r['epoch']:>3}/{epochs}  train loss {r['train_loss']:.4f} acc "
        f"{100 * r['train_acc']:6.2f}%  test loss {r['test_loss']:.4f} acc {100 * r['test_acc']:6.2f}%  "
        f"{r['epoch_time_s']:.1f}s {r['samples_per_s']:,.0f} samples/s" + (f"  residual {res}" if res else "")
    )


def progress_bars(console: Any) -> Any:
    """The rich bars of an epoch (batches, running loss/accuracy, throughput, ETA) on `console`."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("{task.description:>14}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}"),
        TextColumn("acc {task.fields[acc]}"),
        TextColumn("{task.fields[speed]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
    )


def chance_causes(
    cfg: ExperimentConfig, plan: Plan | None, records: list[dict[str, Any]], num_classes: int
) -> list[str]:
    """The likely reasons a run sits at chance, from its settings and metrics, most specific first."""
    recs = records
    pc = plan.config if plan is not None else None
    out: list[str] = []
    flat = all(abs(r["train_loss"] - math.log(max(num_classes, 2))) < 0.05 for r in recs[-2:])
    if pc is not None and pc.eb_kind == "drn" and pc.drn_gamma > 10:
        out.append(
            f"--drn-gamma {pc.drn_gamma:g} drives the DRN blocks' sources (γ·[x, −x]) far beyond "
            "the neurons' range, so they saturate and the outputs stop depending on the input; try "
            "--drn-gamma 1 (the default) to 10"
        )
    if plan is not None and plan.analog.any:
        out.append("the device effects (--analog) may drown the signal: train once without them to check")
    bad = [k for k, v in recs[-1].get("residual", {}).items() if v > UNCONVERGED_RESIDUAL]
    if bad:
        out.append(
            f"{', '.join(bad)} end their free phase far from equilibrium: "
            + (
                "raise --t1 or drop it (run to equilibrium)"
                if cfg.t1 is not None
                else "keep the blocks contractive (a lower --feedback-gain)"
            )
        )
    high_lr = 0.01 if cfg.optimizer == "adam" else 0.5
    if cfg.lr > high_lr:
        out.append(f"--lr {cfg.lr:g} is high for {cfg.optimizer}: try {high_lr / 10:g}")
    if flat:
        out.append(
            f"the train loss stays at ln({num_classes}) = {math.log(num_classes):.3f}: the "
            "logits do not depend on the input (saturated or dead neurons, or a zero gradient)"
        )
    return out


def run_header(t: Trainer) -> str:
    """The lines `hybridc train` prints before its first epoch: model and data, algorithm and analog blocks,
    partition and solver, schedule and device, analog optimizer, and where the run directory is."""
    from rich.markup import escape

    from hybridc.load_library import is_library_spec

    cfg = t.cfg
    title = escape(cfg.model) if is_library_spec(cfg.model or "") else cfg.model_label()  # the whole spec
    parts = [
        f"[bold]hybridc train[/] {title} on {t.info.title}",
        f"input {'x'.join(map(str, t.transform.raw_shape))}: {t.transform.describe()}"
        + (f"; model fitted to the data: {t.fit.how}" if t.fit.how not in ("as is", "") else ""),
        f"algorithm {cfg.algorithm}",
    ]
    if cfg.algorithm != "bp":
        pc = t.plan.config if t.plan is not None else None
        gain = getattr(t.module, "feedback_gain", None)
        parts.append(f"{len(t.block_names)} analog block(s) {analog_text(t.plan, t.cfg)}")
        partition = f"plan {cfg.plan}" if cfg.plan else (f"max_block_size {pc.max_block_size}" if pc else "-")
        parts.append(
            f"partition {partition}, {activation_text(t.plan)}, β {cfg.beta:g}, solver {cfg.solver_mode} "
            f"{free_phase_text(cfg)} T2 {cfg.t2}, init {cfg.init}"
            + (f", feedback gain ≤ {gain:g}" if gain else ", feedback gain unbounded")
        )
    parts.append(
        f"{cfg.epochs} epochs × {len(t.train_loader)} batches of {cfg.batch_size}, {cfg.optimizer} "
        f"lr {cfg.lr:g} ({cfg.schedule}), augment {t.augment}, device {t.device}"
        + (f" × {t.ctx.world_size} processes" if t.ctx.enabled else "")
    )
    if cfg.analog_optimizer is not None:
        n = sum(p.numel() for p in t.opt.optimizers[-1].param_groups[0]["params"])
        parts.append(
            f"analog weights ({n:,} parameters): {cfg.analog_optimizer} lr "
            f"{cfg.analog_lr if cfg.analog_lr is not None else cfg.lr:g}"
            + (f", τ {cfg.analog_tau:g}" if cfg.analog_optimizer != "sgd" else "")
            + (
                f", transfer lr {cfg.transfer_lr if cfg.transfer_lr is not None else '= lr'} every "
                f"{cfg.transfer_every}"
                if cfg.analog_optimizer == "tiki-taka"
                else ""
            )
        )
    if t.start_epoch >= cfg.epochs:
        parts.append(f"run directory {t.run_dir} (complete)")
    elif t.start_epoch or t.partial:
        parts.append(
            f"resuming {t.run_dir} at epoch {t.start_epoch + 1}"
            + (f", batch {t.partial['batches']}" if t.partial else "")
        )
    else:
        parts.append(f"run directory {t.run_dir}")
    return "\n".join(parts)
