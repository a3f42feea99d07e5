"""Use a trained run: `load_run` (the model with its input preprocessing) and `evaluate_run` (`hybridc eval`).

    import hybridc
    model = hybridc.load_run("runs/mlp")          # raw images in [0, 1] -> logits, the trained accuracy
    logits = model(images)                          # (N, C, H, W) as the dataset stores them
    result = hybridc.evaluate.evaluate_run("runs/mlp", analog={"read_noise": 0.02})

`load_run` returns a `TrainedModel`: the run's compiled ff-EBM (or, for algorithm=bp, its original model)
behind the exact input transform the trainer applied — resize to the fitted input size where the run had
one, then the dataset's per-channel normalisation — so raw pixels give the trained accuracy (a compiled
model fed raw pixels does not: the default digits run scores several points lower).

`evaluate_run` measures a run on a dataset split: accuracy and loss, each analog block's equilibrium
residual (mean max|Δs| of the free phase's last step), and, with `analog`, the same under simulated device
effects (`hybridc.plan.AnalogSpec`: programming noise, weight range and levels, read noise, DAC/ADC bits),
repeated over `seeds` programming-noise draws.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import ValidationError
from torch import nn

from hybridc.data.preprocess import InputTransform, Preprocess
from hybridc.errors import DataError, HybridcError

__all__ = ["EvalResult", "TrainedModel", "evaluate_run", "load_run"]


class EvalError(HybridcError):
    """An evaluation request that cannot be met (a dataset the run's model does not take, bad device effects)."""


class TrainedModel(nn.Module):
    """A trained run as one module: raw images (N, C, H, W) in [0, 1] -> logits.

    `preprocess` is the run's input transform (`transform`), `net` the trained model it feeds (an FFEBM for
    ep/id/bptt runs: `ffebm`). `config` is the run's ExperimentConfig, `checkpoint` the file the weights came
    from, `epoch` the epochs it had finished. Loaded on the CPU in eval mode; `.to(device)` moves it."""

    def __init__(
        self,
        net: nn.Module,
        transform: InputTransform,
        *,
        config: Any = None,
        run_dir: Path | None = None,
        checkpoint: Path | None = None,
        epoch: int | None = None,
    ):
        super().__init__()
        self.preprocess = Preprocess(transform)
        self.net = net
        self.transform = transform
        self.config = config
        self.run_dir = run_dir
        self.checkpoint = checkpoint
        self.epoch = epoch

    @property
    def ffebm(self) -> nn.Module | None:
        """The compiled ff-EBM (None for a backprop run)."""
        from hybridc.runtime.ffebm import FFEBM

        return self.net if isinstance(self.net, FFEBM) else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.preprocess(x))


def load_run(
    run_dir: str | Path, checkpoint: str | Path | None = None, device: str | torch.device | None = None
) -> TrainedModel:
    """The trained model of a `hybridc train` run directory, with its input preprocessing.

    `checkpoint`: None or "last" (the last epoch, RUN_DIR/checkpoint.pt), "best" (the epoch with the best
    test accuracy, RUN_DIR/best.pt) or a checkpoint path. `device`: where to put it (default CPU). Raises
    CheckpointError (a HybridcError) saying what is wrong with the directory."""
    from hybridc.train.saved_run import read_run

    run = read_run(run_dir, checkpoint)
    model = TrainedModel(
        run.module,
        run.transform,
        config=run.config,
        run_dir=run.run_dir,
        checkpoint=run.checkpoint,
        epoch=run.epoch,
    ).eval()
    return model.to(device) if device is not None else model


@dataclass
class EvalResult:
    """What `evaluate_run` measured (accuracies are fractions in [0, 1])."""

    run_dir: str
    checkpoint: str
    data: str
    split: str
    samples: int
    accuracy: float
    loss: float
    accuracies: list[float] = field(default_factory=list)  # one per seed of the device effects
    residual: dict[str, float] = field(default_factory=dict)  # block -> mean max|Δs| of the last free step
    analog: dict[str, Any] | None = None  # the device effects evaluated under (None: as trained)
    device: str = "cpu"
    time_s: float = 0.0

    @property
    def accuracy_std(self) -> float:
        a = self.accuracies
        if len(a) < 2:
            return 0.0
        m = sum(a) / len(a)
        return math.sqrt(sum((v - m) ** 2 for v in a) / (len(a) - 1))

    def to_json(self) -> dict[str, Any]:
        return asdict(self) | {"accuracy_std": self.accuracy_std}

    def table(self) -> Any:
        """A rich table of the result (what `hybridc eval` prints)."""
        from rich.table import Table
        from rich.text import Text

        t = Table(title=f"eval {self.run_dir}", title_justify="left", show_header=False)
        t.add_column("key", style="bold")
        t.add_column("value")
        acc = f"{100 * self.accuracy:.2f} %"
        if len(self.accuracies) > 1:
            acc += f" ± {100 * self.accuracy_std:.2f} (std over {len(self.accuracies)} device draws)"
        rows = [
            ("checkpoint", self.checkpoint),
            ("data", f"{self.data} {self.split}, {self.samples:,} samples"),
            (
                "device effects",
                "as trained"
                if self.analog is None
                else (", ".join(f"{k}={v}" for k, v in self.analog.items()) or "none (ideal device)"),
            ),
            ("accuracy", acc),
            ("loss", f"{self.loss:.4f}"),
        ]
        rows += [(f"residual {k}", f"{v:.2e}") for k, v in self.residual.items()]
        rows += [("time", f"{self.time_s:.1f} s on {self.device}")]
        for k, v in rows:
            t.add_row(k, Text(str(v)))
        return t


def _analog_spec(analog: Any) -> Any:
    from hybridc.plan import AnalogSpec

    if analog is None or isinstance(analog, AnalogSpec):
        return analog
    if not isinstance(analog, dict):
        raise EvalError(f"analog must be a mapping of AnalogSpec fields, not {type(analog).__name__}")
    try:
        return AnalogSpec(**analog)
    except ValidationError as exc:
        reasons = "; ".join(
            f"{'.'.join(map(str, e['loc']))}: "
            + (
                "unknown key (valid keys: " + ", ".join(AnalogSpec.model_fields) + ")"
                if e["type"] == "extra_forbidden"
                else e["msg"]
            )
            for e in exc.errors()
        )
        raise EvalError(f"invalid device effects (analog): {reasons}") from None


def _resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise EvalError("device cuda requested, but no CUDA device is available; use --device cpu")
    return dev


@torch.no_grad()
def evaluate_run(
    run_dir: str | Path,
    data: str | None = None,
    analog: dict[str, Any] | Any = None,
    *,
    checkpoint: str | Path | None = None,
    split: str = "test",
    data_dir: str | Path | None = None,
    subset: int | None = None,
    batch_size: int = 500,
    seeds: int = 1,
    seed: int = 0,
    device: str | torch.device | None = "auto",
) -> EvalResult:
    """Accuracy, loss and per-block equilibrium residuals of a trained run on a dataset split.

    `data`: a dataset whose images have the run's data shape and classes (default: the run's dataset);
    `analog`: device effects to evaluate under (AnalogSpec fields; {} = the ideal device; None = as trained);
    `seeds`: how many programming-noise draws to average over (seeded from `seed`); `subset`: the first N
    samples only; `checkpoint`: "last" (default), "best" or a path. Raw images go through the run's input
    transform (`load_run`), as in training."""
    from hybridc.data import load_dataset
    from hybridc.data.datasets import DATASETS, canonical_name

    if seeds < 1 or batch_size < 1 or (subset is not None and subset < 1):
        raise EvalError("seeds, batch_size and subset must be positive")
    spec = _analog_spec(analog)
    dev = _resolve_device(device)
    model = load_run(run_dir, checkpoint)
    cfg = model.config
    name = canonical_name(data) if data is not None else cfg.data
    info, run_info = DATASETS[name], DATASETS[cfg.data]
    if (
        tuple(info.input_shape) != tuple(model.transform.raw_shape)
        or info.num_classes != run_info.num_classes
    ):
        raise EvalError(
            f"{name} ({'x'.join(map(str, info.input_shape))}, {info.num_classes} classes) does not fit "
            f"the run's model, trained on {cfg.data} ({'x'.join(map(str, model.transform.raw_shape))}, "
            f"{run_info.num_classes} classes)"
        )
    ds = load_dataset(name, data_dir if data_dir is not None else cfg.data_dir, split, download=cfg.download)
    if subset is not None:
        ds.x, ds.y = ds.x[:subset], ds.y[:subset]
    if len(ds.y) == 0:
        raise DataError(f"{name} {split} has no samples to evaluate on")
    ff = model.ffebm
    if spec is not None and ff is None:
        raise EvalError(
            "this run trained the original model by backprop (algorithm=bp): it has no analog blocks "
            "to simulate device effects on"
        )
    model = model.to(dev).eval()
    loader = ds.loader(batch_size, shuffle=False, device=dev, normalize=False)  # raw: the model normalises
    t0 = time.perf_counter()
    accs, losses = [], []
    residual_sum: dict[str, float] = {}
    n_batches = 0
    for i in range(seeds):
        if spec is not None:
            torch.manual_seed(seed + i)  # read noise draws from the global RNG
            ff.set_analog(spec, seed=seed + i)
        correct = loss = 0.0
        n = 0
        res = torch.zeros(len(ff.analog_blocks) if ff is not None else 0, dtype=torch.float64, device=dev)
        loader.set_epoch(0)
        for xb, yb in loader:
            out = model(xb).float()
            loss += float(F.cross_entropy(out, yb, reduction="sum"))
            correct += float((out.argmax(1) == yb).sum())
            n += yb.shape[0]
            if ff is not None:
                for j, blk in enumerate(ff.analog_blocks.values()):
                    if blk.last_residual is not None:
                        res[j] += blk.last_residual.detach().to(torch.float64)
                n_batches += 1
        accs.append(correct / n)
        losses.append(loss / n)
        if ff is not None:
            for name_j, v in zip(ff.analog_blocks, res.tolist()):
                residual_sum[name_j] = residual_sum.get(name_j, 0.0) + v
    residual = {k: v / max(n_batches, 1) for k, v in residual_sum.items()}
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    return EvalResult(
        run_dir=str(run_dir),
        checkpoint=str(model.checkpoint),
        data=name,
        split=split,
        samples=len(ds.y),
        accuracy=sum(accs) / len(accs),
        loss=sum(losses) / len(losses),
        accuracies=accs,
        residual=residual,
        analog=spec.model_dump(exclude_defaults=True) if spec is not None else None,
        device=str(dev),
        time_s=time.perf_counter() - t0,
    )
