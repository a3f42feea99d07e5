"""The optimizers of a training run: one for the digital parameters (Adam/SGD) and, with
`analog_optimizer`, a second one for the weights that live on analog crossbars (ideal SGD, Analog SGD or
Tiki-Taka on a soft-bounds device, see `hybridc.analog.optimizers`).

Analog weights are the ≥2-D parameters of analog blocks (weight matrices, conv kernels, DRN conductances);
their biases stay digital (peripheral current sources). For `algorithm="bp"` the original model has no
analog blocks, so the weight matrices/kernels of its Linear and Conv layers are the analog weights: the
setting of Wu et al. (NeurIPS 2024), whose analog training runs backprop on crossbars.

`OptimizerSet`/`SchedulerSet` make the pair look like one optimizer/scheduler to the training loop and
to checkpoints (a list of state dicts).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from hybridc.analog.optimizers import AnalogSGD, TikiTaka
from hybridc.train.experiment import ConfigError, ExperimentConfig

_ANALOG_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def analog_weights(module: nn.Module) -> list[nn.Parameter]:
    """The parameters that an analog optimizer updates (see the module docstring)."""
    blocks = getattr(module, "analog_blocks", None)
    owners = (
        list(blocks.values()) if blocks else [m for m in module.modules() if isinstance(m, _ANALOG_LAYERS)]
    )
    seen: dict[int, nn.Parameter] = {}
    for owner in owners:
        for p in owner.parameters():
            if p.requires_grad and p.dim() >= 2:
                seen.setdefault(id(p), p)
    return list(seen.values())


def _digital_optimizer(cfg: ExperimentConfig, params: list[nn.Parameter]) -> torch.optim.Optimizer:
    """Adam or SGD; weight decay only on weights (≥2-D), never on biases or norm scales."""
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    groups = [g for g in groups if g["params"]]
    if cfg.optimizer == "adam":
        opt_cls = torch.optim.AdamW if cfg.weight_decay > 0 else torch.optim.Adam
        return opt_cls(groups, lr=cfg.lr)
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)


def _analog_optimizer(cfg: ExperimentConfig, params: list[nn.Parameter]) -> torch.optim.Optimizer:
    lr = cfg.analog_lr if cfg.analog_lr is not None else cfg.lr
    if cfg.analog_optimizer == "sgd":  # the ideal device: the reference the analog rules are compared with
        return torch.optim.SGD(params, lr=lr, weight_decay=cfg.weight_decay)
    if cfg.analog_optimizer == "analog-sgd":
        return AnalogSGD(params, lr=lr, tau=cfg.analog_tau, weight_decay=cfg.weight_decay)
    transfer_lr = cfg.transfer_lr if cfg.transfer_lr is not None else lr
    return TikiTaka(
        params,
        lr=lr,
        tau=cfg.analog_tau,
        transfer_lr=transfer_lr,
        transfer_every=cfg.transfer_every,
        weight_decay=cfg.weight_decay,
    )


class OptimizerSet:
    """Several optimizers over disjoint parameters, stepped together."""

    def __init__(self, optimizers: list[torch.optim.Optimizer]) -> None:
        self.optimizers = optimizers

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return [g for opt in self.optimizers for g in opt.param_groups]

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        for opt in self.optimizers:
            opt.step()

    def state_dict(self) -> dict[str, Any]:
        return {"optimizers": [opt.state_dict() for opt in self.optimizers]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        # a checkpoint written before optimizer sets existed holds one optimizer's state dict
        states = state["optimizers"] if "optimizers" in state else [state]
        if len(states) != len(self.optimizers):
            raise ValueError(
                f"the checkpoint has {len(states)} optimizer(s), this run {len(self.optimizers)}"
            )
        for opt, st in zip(self.optimizers, states):
            opt.load_state_dict(st)


class SchedulerSet:
    """One learning-rate scheduler per optimizer of an `OptimizerSet`, stepped together."""

    def __init__(self, schedulers: list[torch.optim.lr_scheduler.LRScheduler]) -> None:
        self.schedulers = schedulers

    def step(self) -> None:
        for s in self.schedulers:
            s.step()

    def state_dict(self) -> dict[str, Any]:
        return {"schedulers": [s.state_dict() for s in self.schedulers]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        states = state["schedulers"] if "schedulers" in state else [state]
        for s, st in zip(self.schedulers, states, strict=True):
            s.load_state_dict(st)


def make_optimizer(cfg: ExperimentConfig, module: nn.Module) -> OptimizerSet:
    """The run's optimizers: `cfg.optimizer` for everything, or for everything but the analog weights when
    `cfg.analog_optimizer` is set."""
    params = [p for p in module.parameters() if p.requires_grad]
    if cfg.analog_optimizer is None:
        return OptimizerSet([_digital_optimizer(cfg, params)])
    analog = analog_weights(module)
    if not analog:
        raise ConfigError(
            "analog_optimizer: this model has no analog weights (no analog block or Linear/Conv layer)"
        )
    ids = {id(p) for p in analog}
    digital = [p for p in params if id(p) not in ids]
    opts = [_digital_optimizer(cfg, digital)] if digital else []
    return OptimizerSet(opts + [_analog_optimizer(cfg, analog)])


def make_scheduler(cfg: ExperimentConfig, opt: OptimizerSet) -> SchedulerSet:
    """Per-epoch schedule of every optimizer: cosine annealing to 0 over `epochs`, or constant."""

    def one(o: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler:
        if cfg.schedule == "cosine":
            return torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=cfg.epochs)
        return torch.optim.lr_scheduler.LambdaLR(o, lambda _epoch: 1.0)

    return SchedulerSet([one(o) for o in opt.optimizers])
