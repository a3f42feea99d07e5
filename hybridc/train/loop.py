"""The training runtime behind `hybridc train`: data -> model -> compile -> epochs -> run directory.

One `Trainer` runs an `ExperimentConfig`:

* builds the model (zoo models are fitted to the dataset's input shape and class count), compiles it into an
  ff-EBM (EP, ID or BPTT through the analog blocks), or keeps the original for `algorithm="bp"`;
* trains with Adam/SGD and a cosine or constant learning rate, on the device the whole dataset lives on;
* keeps the host out of the loop: loss sums, correct counts and each analog block's equilibrium residual
  (`block.last_residual`, a device tensor) accumulate in device tensors that are read every `log_every`
  batches and at epoch end, so the loop itself adds no host sync per batch (see `_accumulate`);
* writes the run directory on the main process only: `config.json`, `plan.json`, `metrics.jsonl`,
  `checkpoint.pt` (atomic, every epoch and on Ctrl-C; it carries the digest of its content and of plan.json,
  both checked on `--resume`), `curves.png`, `summary.json`;
* owns its run directory exclusively: a default name is unique (random suffix, created atomically), the
  directory is locked for the run's life (`hybridc.train.run_lock`), and a non-empty directory that is not a
  run is refused unless `force`;
* warns when training goes wrong without diverging: a loss that explodes (10x its first epoch) or an
  accuracy stuck at chance after a few epochs;
* resumes from a run directory to exactly the metrics an uninterrupted run would have produced
  (model/optimizer/scheduler/RNG states plus the data stream's position, even mid-epoch);
* runs data-parallel under torchrun (see `hybridc.train.distributed`).

Precision: `amp="bf16"` autocasts the forward pass; analog blocks turn autocast off for themselves and relax
in their parameters' dtype (`EnergyBlock.forward`): EP's finite difference [Φ(s^{+β}) − Φ(s^{−β})]/2β would
be swamped by bf16's 8-bit mantissa.

One module over 400 lines on purpose: it is the one class `Trainer`, whose methods are the stages of a run
read in order (setup, restore, step, evaluate, epoch end, save); what it held besides lives in `epoch_sums`,
`diagnosis`, `console`, `summary` and `run_dir`.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from hybridc.data.preprocess import input_transform, resize_images
from hybridc.energy.feedback_guard import guard_state, load_guard_state
from hybridc.errors import DataError, HybridcError
from hybridc.files import atomic_write_text, sha256_file
from hybridc.train import distributed as D
from hybridc.train.build import (
    _check_model_finite,
    _compile_checked,
    analog_blocks,
    apply_torch_compile,
    build_model,
    fit_model,
    load_plan_file,
    resolved_config,
)
from hybridc.train.checkpoint import (
    CheckpointError,
    rng_state,
    save_checkpoint,
    save_model_checkpoint,
    set_rng_state,
)
from hybridc.train.console import (
    epoch_line,
    progress_bars,
    run_header,
)
from hybridc.train.diagnosis import TrainingDiagnosis
from hybridc.train.epoch_sums import EpochSums
from hybridc.train.experiment import (
    ConfigError,
    ExperimentConfig,
)
from hybridc.train.interrupts import StopFlag
from hybridc.train.metrics import MetricsLog, plot_curves, summary_table
from hybridc.train.optimizers import make_optimizer, make_scheduler
from hybridc.train.resume import resume_config
from hybridc.train.run_dir import (
    BEST_CHECKPOINT_NAME,
    CHECKPOINT_NAME,
    CONFIG_NAME,
    CURVES_NAME,
    METRICS_NAME,
    PLAN_NAME,
    SUMMARY_NAME,
    check_fresh_dir,
    claim_run_dir,
)
from hybridc.train.summary import run_summary

#: mean last-step max|Δs| of a free phase above which the trainer warns that a block is not at equilibrium
#: seconds between the plain progress lines printed within an epoch when the console is not a terminal
PLAIN_PROGRESS_S = 10.0

BatchHook = Callable[[int, int], None]


@dataclass
class TrainResult:
    """What a run produced: its directory (main process), per-epoch records and the summary."""

    run_dir: Path | None
    records: list[dict[str, Any]]
    summary: dict[str, Any]
    interrupted: bool = False
    config: ExperimentConfig | None = None


class Trainer:
    """Runs one experiment (see the module docstring). Use `train()` unless you need the pieces."""

    def __init__(
        self,
        cfg: ExperimentConfig,
        out: str | Path | None = None,
        resume: str | Path | None = None,
        resume_overrides: dict[str, Any] | None = None,
        console: Any = None,
        on_batch_end: BatchHook | None = None,
        force: bool = False,
    ):
        self.on_batch_end = on_batch_end
        self.console = console
        self.ckpt: dict[str, Any] | None = None
        self.force = force
        if resume is not None:
            if out is not None and Path(out).resolve() != Path(resume).resolve():
                raise ConfigError(
                    "give --resume RUN_DIR alone: the resumed run continues in RUN_DIR "
                    "(--out cannot point elsewhere)"
                )
            self.run_dir: Path | None = Path(resume)
            cfg, self.ckpt = resume_config(self.run_dir, resume_overrides or {})
        else:
            self.run_dir = Path(out) if out is not None else None  # None: a unique default, made by run()
            if self.run_dir is not None:
                check_fresh_dir(self.run_dir, force)
            if cfg.plan is not None:  # a bad plan file fails now, before any data or model is loaded
                if not Path(cfg.plan).is_file():
                    raise ConfigError(f"plan file {cfg.plan} does not exist")
                load_plan_file(Path(cfg.plan))
        self.cfg = cfg
        self.ctx, self.device = D.init_distributed(cfg.device)
        self.run_dir_writable = self.ctx.is_main  # only the main process writes the run directory
        self._in_step = False

    def _write(self, name: str, text: str) -> None:
        if self.run_dir_writable and self.run_dir is not None:
            atomic_write_text(self.run_dir / name, text)

    def _print(self, *args: Any) -> None:
        if self.ctx.is_main and self.console is not None:
            self.console.print(*args)

    # ---- setup ------------------------------------------------------------------------------------
    def _setup(self) -> None:
        from hybridc.data import load_dataset

        cfg = self.cfg
        torch.manual_seed(cfg.seed)
        # The main process loads (and, if needed, downloads) first; the others then read the files.
        if self.ctx.enabled and not self.ctx.is_main:
            torch.distributed.barrier()
        train_ds = load_dataset(cfg.data, cfg.data_dir, "train", download=cfg.download)
        test_ds = load_dataset(cfg.data, cfg.data_dir, "test", download=cfg.download)
        if self.ctx.enabled and self.ctx.is_main:
            torch.distributed.barrier()
        if cfg.train_subset:
            train_ds.x, train_ds.y = train_ds.x[: cfg.train_subset], train_ds.y[: cfg.train_subset]
        if cfg.test_subset:
            test_ds.x, test_ds.y = test_ds.x[: cfg.test_subset], test_ds.y[: cfg.test_subset]
        for split, ds in (("training", train_ds), ("test", test_ds)):
            if len(ds.y) == 0:
                raise DataError(
                    f"{cfg.data} has 0 {split} samples{f' in {cfg.data_dir}' if cfg.data_dir else ''}: "
                    "nothing to train or measure on; check the dataset files"
                )
        self.num_classes = train_ds.num_classes
        self.info = train_ds.info
        shape = train_ds.input_shape
        augment = cfg.augment
        if augment == "auto":  # decided on the dataset's own images (8x8 digits upsampled for VGG: no flips)
            augment = "crop-flip" if shape[1:] == (32, 32) else "none"
        self.augment = augment
        self.fit = fit_model(cfg, shape, train_ds.num_classes)
        self.transform = input_transform(cfg.data, self.fit.input_size)
        if self.fit.input_size is not None:  # resampled once, on the whole split (the same op per sample)
            train_ds.x = resize_images(train_ds.x, self.fit.input_size)
            test_ds.x = resize_images(test_ds.x, self.fit.input_size)
        self.train_loader = train_ds.loader(
            cfg.batch_size, shuffle=True, seed=cfg.seed, device=self.device, augment=augment
        )
        self.test_loader = test_ds.loader(cfg.test_batch_size, shuffle=False, device=self.device)

        model, example = build_model(cfg, shape, train_ds.num_classes)
        _check_model_finite(model, self.test_loader, cfg)
        plan = None
        if self.ckpt is not None and cfg.algorithm != "bp":
            plan_path = self.run_dir / PLAN_NAME
            if not plan_path.is_file():
                raise CheckpointError(f"--resume {self.run_dir}: {PLAN_NAME} is missing")
            recorded = self.ckpt.get("plan_sha256")
            if recorded is not None and sha256_file(plan_path) != recorded:
                raise CheckpointError(
                    f"--resume {self.run_dir}: {plan_path} was changed after the run wrote it "
                    "(its SHA-256 differs from the one recorded in the checkpoint); a resumed "
                    "run must compile the plan it was trained with: restore the file, or "
                    "start a new run with --plan"
                )
            plan = load_plan_file(plan_path)
        elif cfg.plan is not None:
            if not Path(cfg.plan).is_file():
                raise ConfigError(f"plan file {cfg.plan} does not exist")
            plan = load_plan_file(Path(cfg.plan))
        self.module = _compile_checked(cfg, model, example, plan).to(self.device)
        self.module.train()
        self.plan = getattr(self.module, "plan", None)
        if self.ckpt is None:  # a fresh run records what it resolved; a resumed one keeps its saved config
            cfg = self.cfg = resolved_config(cfg, self.fit, shape, self.plan, self.augment)
        self.diagnosis = TrainingDiagnosis(cfg, self.plan, self.num_classes, self._print)
        self.block_names = list(analog_blocks(self.module))
        self.compiled_parts = apply_torch_compile(self.module, cfg.algorithm) if cfg.compile else []
        self.model = D.wrap_ddp(self.module, self.ctx, self.device)
        self.opt = make_optimizer(cfg, self.module)
        self.sched = make_scheduler(cfg, self.opt)
        self.log = MetricsLog(self.run_dir / METRICS_NAME if self.ctx.is_main else None)
        self.start_epoch, self.partial = 0, None
        self.wall_before, self.t_run = 0.0, 0.0
        self._last_plain = time.perf_counter()
        self.plan_sha256: str | None = None
        if self.ckpt is not None:
            self._restore(self.ckpt)
            self.plan_sha256 = self.ckpt.get("plan_sha256")
            if self.plan is not None and self.plan_sha256 is None and self.ctx.is_main:
                self.plan_sha256 = sha256_file(self.run_dir / PLAN_NAME)  # a run from before plan digests
            cfg_text = cfg.to_json() + "\n"
            cfg_path = self.run_dir / CONFIG_NAME
            if not cfg_path.is_file() or cfg_path.read_text() != cfg_text:
                self._write(CONFIG_NAME, cfg_text)  # resumable fields (epochs, device...) may have changed
        elif self.ctx.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self._write(CONFIG_NAME, cfg.to_json() + "\n")
            if self.plan is not None:
                self._write(PLAN_NAME, self.plan.to_json() + "\n")
                self.plan_sha256 = sha256_file(self.run_dir / PLAN_NAME)

    def _restore(self, ck: dict[str, Any]) -> None:
        self.wall_before = float(ck.get("wall_time_s") or 0.0)
        try:
            self.module.load_state_dict(ck["model"])
            load_guard_state(self.module, ck.get("guard"))  # the guard's warm start: exact resume
            self.opt.load_state_dict(ck["optimizer"])
            self.sched.load_state_dict(ck["scheduler"])
            self.train_loader.load_state_dict(ck["loader"])
        except (RuntimeError, ValueError, KeyError) as exc:
            raise CheckpointError(
                f"checkpoint in {self.run_dir} does not fit this run's model/optimizer: "
                f"{str(exc).splitlines()[0]}"
            ) from None
        set_rng_state(ck["rng"])
        self.start_epoch = int(ck["epoch"])
        self.partial = ck["partial"]
        if self.ctx.is_main:
            self.log = MetricsLog.load(self.run_dir / METRICS_NAME, upto_epoch=self.start_epoch)
        else:
            self.log = MetricsLog(
                None, MetricsLog.load(self.run_dir / METRICS_NAME, self.start_epoch).records
            )

    # ---- checkpoints ------------------------------------------------------------------------------
    def _save(self, epoch: int, batch: int, partial: dict[str, Any] | None) -> None:
        """Checkpoint at (epoch, batch): `epoch` epochs finished plus `batch` batches of the next."""
        if not self.run_dir_writable:
            return
        loader = self.train_loader.state_dict() | {"epoch": epoch, "batch": batch}
        save_checkpoint(
            self.run_dir / CHECKPOINT_NAME,
            {
                "config": self.cfg.model_dump(mode="json"),
                "model": self.module.state_dict(),
                "guard": guard_state(self.module),
                "optimizer": self.opt.state_dict(),
                "scheduler": self.sched.state_dict(),
                "rng": rng_state(),
                "loader": loader,
                "epoch": epoch,
                "batch": batch,
                "partial": partial,
                "world_size": self.ctx.world_size,
                "plan_sha256": self.plan_sha256,
                "input_transform": self.transform.to_json(),
                "wall_time_s": self.wall_before + (time.perf_counter() - self.t_run if self.t_run else 0.0),
            },
        )

    def _save_best(self, record: dict[str, Any]) -> None:
        """The model of the epoch with the best test accuracy so far, beside the last checkpoint: weights only
        (`hybridc.load_run(RUN_DIR, checkpoint="best")`), written atomically with its digest."""
        if not self.run_dir_writable:
            return
        save_model_checkpoint(
            self.run_dir / BEST_CHECKPOINT_NAME,
            {
                "config": self.cfg.model_dump(mode="json"),
                "model": self.module.state_dict(),
                "epoch": record["epoch"],
                "test_acc": record["test_acc"],
                "plan_sha256": self.plan_sha256,
                "input_transform": self.transform.to_json(),
            },
        )

    # ---- one epoch --------------------------------------------------------------------------------
    def _step(self, xb: torch.Tensor, yb: torch.Tensor, acc: EpochSums) -> None:
        cfg = self.cfg
        x, y = D.shard(xb, self.ctx), D.shard(yb, self.ctx)
        amp = (
            torch.autocast(self.device.type, dtype=torch.bfloat16)
            if cfg.amp == "bf16"
            else contextlib.nullcontext()
        )
        with amp:
            out = self.model(x)
        loss_sum = F.cross_entropy(out.float(), y, reduction="sum")
        loss = loss_sum * D.loss_scale(xb.shape[0], self.ctx)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        # From here to the end the step is being committed: a hard interrupt inside leaves no checkpoint.
        self._in_step = True
        self._accumulate(acc, loss_sum.detach(), (out.detach().argmax(1) == y).sum(), y.shape[0])
        self.opt.step()  # its post-step hook keeps every analog block within its constraints (FFEBM.constrain_)
        acc.batches += 1
        self._in_step = False

    def _accumulate(self, acc: EpochSums, loss_sum: torch.Tensor, correct: torch.Tensor, n: int) -> None:
        """Add one batch to the device-side sums: in-place device ops, no `.item()`, no host sync."""
        acc.loss += loss_sum
        acc.correct += correct
        for k, blk in analog_blocks(self.module).items():
            if blk.last_residual is not None:
                acc.residual[k] += blk.last_residual.detach().to(torch.float64)
        acc.samples += n

    def _evaluate(self) -> tuple[float, float]:
        """Test loss and accuracy (summed over processes' shards; one host sync at the end)."""
        self.model.eval()
        sums = torch.zeros(3, dtype=torch.float64, device=self.device)
        self.test_loader.set_epoch(0)
        amp = (
            torch.autocast(self.device.type, dtype=torch.bfloat16)
            if self.cfg.amp == "bf16"
            else contextlib.nullcontext()
        )
        with torch.no_grad(), amp:
            for xb, yb in self.test_loader:
                x, y = D.shard(xb, self.ctx), D.shard(yb, self.ctx)
                out = self.module(x).float()
                sums[0] += F.cross_entropy(out, y, reduction="sum")
                sums[1] += (out.argmax(1) == y).sum()
                sums[2] += y.shape[0]
        D.all_reduce_sum(sums, self.ctx)
        loss, correct, n = sums.tolist()
        self.model.train()
        return loss / max(n, 1), correct / max(n, 1)

    # ---- main loop --------------------------------------------------------------------------------
    def run(self) -> TrainResult:
        """Train to `cfg.epochs`, checkpointing every epoch; a Ctrl-C stops after the current batch. The run
        directory is locked from start to end, whatever the way out."""
        claim = None
        if self.ctx.is_main:
            claim = claim_run_dir(self.run_dir, self.cfg, self.ckpt is not None, self.force)
            self.run_dir = claim.path
        failed = True
        try:
            result = self._run()
            failed = False
            return result
        finally:
            if claim is not None:
                claim.release(failed)

    def _run(self) -> TrainResult:
        self._setup()
        cfg = self.cfg
        n_batches = len(self.train_loader)
        self._in_step = False
        stop = StopFlag()
        interrupted = False
        t_run = self.t_run = time.perf_counter()
        self._print(run_header(self))
        if self.start_epoch >= cfg.epochs:
            self._print(
                f"[yellow]run already finished {self.start_epoch} epochs; nothing to train "
                "(extend it with --epochs N when it uses --schedule none)[/]"
            )
        progress = (
            progress_bars(self.console)
            if self.cfg.progress
            and self.ctx.is_main
            and self.console is not None
            and self.console.is_terminal
            else None
        )
        with stop.installed(), progress or contextlib.nullcontext():
            ep_task = (
                progress.add_task(
                    "epochs", total=cfg.epochs, completed=self.start_epoch, loss="", acc="", speed=""
                )
                if progress
                else None
            )
            b_task = (
                progress.add_task("batches", total=n_batches, loss="", acc="", speed="") if progress else None
            )
            for epoch in range(self.start_epoch, cfg.epochs):
                if self.partial is not None:
                    acc = EpochSums.from_state(self.partial, self.device, self.block_names)
                    self.partial = None
                else:
                    acc = EpochSums.zeros(self.device, self.block_names)
                    self.train_loader.set_epoch(epoch)
                if progress:
                    progress.reset(
                        b_task,
                        total=n_batches,
                        completed=acc.batches,
                        description=f"epoch {epoch + 1}/{cfg.epochs}",
                    )
                t0 = time.perf_counter() - acc.elapsed
                try:
                    for xb, yb in self.train_loader:
                        self._step(xb, yb, acc)
                        if self.on_batch_end is not None:
                            self.on_batch_end(epoch, acc.batches)
                        at_log = acc.batches % cfg.log_every == 0
                        if at_log and progress:
                            self._show(progress, b_task, acc, time.perf_counter() - t0)
                        elif progress:
                            progress.advance(b_task)
                        elif at_log and acc.batches < n_batches and self._plain_progress():
                            self._plain_line(epoch, acc, n_batches, time.perf_counter() - t0)
                        # One process: the flag is a Python bool (free). DDP: agree at log points.
                        want_stop = (
                            stop.requested
                            if not self.ctx.enabled
                            else (at_log and D.any_flag(stop.requested, self.device, self.ctx))
                        )
                        if want_stop and acc.batches < n_batches:
                            raise KeyboardInterrupt
                except KeyboardInterrupt:
                    interrupted = True
                    if self._in_step:
                        self._print(
                            "[red]interrupted inside an optimizer step: parameters may be half "
                            f"updated, so no checkpoint was written; the last one in {self.run_dir} "
                            "is intact[/]"
                        )
                    else:
                        acc.elapsed = time.perf_counter() - t0
                        self._save(epoch, acc.batches, acc.to_state())
                        self._print(
                            f"[yellow]interrupted at epoch {epoch + 1}, batch {acc.batches}/{n_batches}: "
                            f"checkpoint saved; continue with `hybridc train --resume {self.run_dir}`[/]"
                        )
                    break
                record = self._finish_epoch(epoch, acc, t0)
                if progress:
                    progress.update(
                        ep_task,
                        completed=epoch + 1,
                        loss=f"{record['test_loss']:.4f}",
                        acc=f"{100 * record['test_acc']:.2f}%",
                        speed="",
                    )
                if epoch + 1 < cfg.epochs and D.any_flag(stop.requested, self.device, self.ctx):
                    interrupted = True  # the end-of-epoch checkpoint is already written
                    self._print(
                        f"[yellow]interrupted after epoch {epoch + 1}: checkpoint saved; continue with "
                        f"`hybridc train --resume {self.run_dir}`[/]"
                    )
                    break
        wall = self.wall_before + time.perf_counter() - t_run  # over every session of the run
        summary = run_summary(self, wall, interrupted)
        trained = self.start_epoch < cfg.epochs  # False: a finished run resumed, nothing done
        if not trained and self.run_dir is not None and (self.run_dir / SUMMARY_NAME).is_file():
            with contextlib.suppress(OSError, ValueError):  # a finished run keeps (and shows) its summary
                summary = json.loads((self.run_dir / SUMMARY_NAME).read_text())
                trained = None  # nothing to write
        if self.ctx.is_main and not interrupted:
            if trained is not None:
                self._write(SUMMARY_NAME, json.dumps(summary, indent=2) + "\n")
            self._print(summary_table(summary))
        D.shutdown(self.ctx)
        return TrainResult(
            self.run_dir if self.ctx.is_main else None, list(self.log.records), summary, interrupted, cfg
        )

    def _finish_epoch(self, epoch: int, acc: EpochSums, t0: float) -> dict[str, Any]:
        """Close an epoch started at time `t0`: read the sums, evaluate, log, checkpoint, plot."""
        vals = torch.stack(
            [
                acc.loss,
                acc.correct,
                *acc.residual.values(),
                torch.tensor(float(acc.samples), dtype=torch.float64, device=self.device),
            ]
        )
        D.all_reduce_sum(vals, self.ctx)
        vals_l = vals.tolist()  # the epoch's one host read; it also waits for queued GPU work, so time after
        train_time = time.perf_counter() - t0
        self.sched.step()
        loss_sum, correct, *res, samples = vals_l
        world = self.ctx.world_size
        t_eval = time.perf_counter()
        test_loss, test_acc = self._evaluate()
        eval_time = time.perf_counter() - t_eval
        record = {
            "epoch": epoch + 1,
            "train_loss": loss_sum / max(samples, 1),
            "train_acc": correct / max(samples, 1),
            "test_loss": test_loss,
            "test_acc": test_acc,
            "lr": self.opt.param_groups[0]["lr"],
            # residuals summed over processes and batches: mean over both
            "residual": {k: r / max(acc.batches * world, 1) for k, r in zip(self.block_names, res)},
            "epoch_time_s": train_time,
            "samples_per_s": samples / max(train_time, 1e-9),
            "eval_time_s": eval_time,
        }
        if not all(math.isfinite(record[k]) for k in ("train_loss", "test_loss")):
            raise HybridcError(
                f"training diverged at epoch {epoch + 1} (loss is NaN/Inf); lower --lr or "
                "--beta, or use --init keep"
            )
        # Metrics before the checkpoint: after a crash between the two, resume cuts the metrics back to the
        # checkpoint's epoch and redoes it (the other order would lose the epoch's line).
        previous_best = self.log.best()
        self.log.append(record)
        self._save(epoch + 1, 0, None)
        if previous_best is None or record["test_acc"] > previous_best["test_acc"]:
            self._save_best(record)
        if self.ctx.is_main and self.run_dir is not None:
            try:
                plot_curves(
                    self.log.records,
                    self.run_dir / CURVES_NAME,
                    f"{self.cfg.model_label()} on {self.cfg.data} ({self.cfg.algorithm})",
                )
            except Exception as exc:  # a plotting problem must never cost a training run
                self._print(f"[yellow]warning: could not draw {CURVES_NAME}: {type(exc).__name__}: {exc}[/]")
        self._print(epoch_line(record, self.cfg.epochs))
        self.diagnosis.after_epoch(self.log.records)
        return record

    # ---- display ----------------------------------------------------------------------------------
    def _show(self, progress: Any, task: Any, acc: EpochSums, elapsed: float) -> None:
        loss, correct, *_ = acc.read()  # the one host read every `log_every` batches
        progress.update(
            task,
            advance=1,
            loss=f"{loss / max(acc.samples, 1):.4f}",
            acc=f"{100 * correct / max(acc.samples, 1):.2f}%",
            speed=f"{acc.samples * self.ctx.world_size / max(elapsed, 1e-9):,.0f} samples/s",
        )

    def _plain_progress(self) -> bool:
        """Plain intra-epoch lines instead of bars: progress wanted, but the console is not a terminal (a log
        file, CI), and PLAIN_PROGRESS_S have passed since the last line."""
        if not (
            self.cfg.progress
            and self.ctx.is_main
            and self.console is not None
            and not self.console.is_terminal
        ):
            return False
        return time.perf_counter() - self._last_plain >= PLAIN_PROGRESS_S

    def _plain_line(self, epoch: int, acc: EpochSums, n_batches: int, elapsed: float) -> None:
        loss, correct, *_ = acc.read()  # at a log point: the host read the bars make too
        n = max(acc.samples, 1)
        rate = acc.samples * self.ctx.world_size / max(elapsed, 1e-9)
        eta = (n_batches - acc.batches) * elapsed / max(acc.batches, 1)
        self._last_plain = time.perf_counter()
        self._print(
            f"epoch {epoch + 1}/{self.cfg.epochs} batch {acc.batches}/{n_batches}  train loss "
            f"{loss / n:.4f} acc {100 * correct / n:.2f}%  {rate:,.0f} samples/s  epoch ETA {eta:.0f}s"
        )


def train(
    cfg: ExperimentConfig | None = None,
    out: str | Path | None = None,
    resume: str | Path | None = None,
    resume_overrides: dict[str, Any] | None = None,
    console: Any = None,
    on_batch_end: BatchHook | None = None,
    force: bool = False,
) -> TrainResult:
    """Train `cfg` (default: the embedded default experiment) into run directory `out`, or continue the run
    in `resume` (with `resume_overrides`: flags given at resume time, checked against the saved config).
    `force`: train into a non-empty `out` that is not a run directory (its other files stay)."""
    if cfg is None:
        cfg = ExperimentConfig()
    return Trainer(cfg, out, resume, resume_overrides, console, on_batch_end, force).run()
