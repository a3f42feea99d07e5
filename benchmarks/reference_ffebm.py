"""Glue to time one EP training step of the ff-EBM paper's reference implementation beside hybridc's.

The reference implementation is T. Nest and M. Ernoult's public code for "Towards training digitally-tied
analog blocks via hybrid gradient computation" (NeurIPS 2024), github.com/rain-neuromorphics/
hybrid_bp_ep_official. **It is not part of hybridc and none of its code is copied here**: this module imports
it at run time from a directory the user gives (a checkout of that repository, which needs `omegaconf`,
installed separately: hybridc does not depend on it), builds the model of its config
`hydra_conf/model/splitting_small_2block.yaml` (the paper's 6-layer VGG split into two blocks of 3 layers)
and runs its EP training step exactly as its training loop does (`src/experiment/utils.py: train`):
`EP.run(model, x, y, criterion)` (free phase of T1 steps block after block, then per block two nudged phases of
T2 steps at ±β, then the parameter gradients from the Phi difference), then the optimizer's step.

It also measures the multiply-accumulates of one feedforward pass of each network (from the layer shapes, by
forward hooks on a plain pass through the reference's synapses and through hybridc's source model) so the
benchmark can show that the two sides do the same work, and where they differ.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

#: the reference config timed (its 2-block split of the 6-layer VGG)
REFERENCE_CONFIG = "hydra_conf/model/splitting_small_2block.yaml"


@dataclass
class LayerWork:
    """The weight layers of one network as (kind, in → out description, MACs per sample), in forward order."""

    layers: list[tuple[str, str, int]] = field(default_factory=list)

    @property
    def macs(self) -> int:
        """Multiply-accumulates of one feedforward pass per sample."""
        return sum(m for _, _, m in self.layers)

    def describe(self) -> list[str]:
        """One line per layer: kind, shapes, MACs."""
        return [f"{kind} {shape} ({m / 1e6:.2f} M MAC)" for kind, shape, m in self.layers]


def _hooked_work(modules: list[nn.Module], run: Callable[[], Any]) -> LayerWork:
    """Run `run()` with forward hooks on `modules` (Conv2d / Linear) and record each call's shapes and MACs."""
    work = LayerWork()

    def hook(mod: nn.Module, args: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        x = args[0]
        if isinstance(mod, nn.Conv2d):
            k = mod.kernel_size[0] * mod.kernel_size[1] * (mod.in_channels // mod.groups)
            macs = out[0].numel() * k
            shape = f"{mod.in_channels}×{x.shape[-2]}×{x.shape[-1]} → {mod.out_channels}×{out.shape[-2]}×{out.shape[-1]}"
            work.layers.append(("conv", shape, macs))
        else:
            work.layers.append(
                ("linear", f"{mod.in_features} → {mod.out_features}", mod.in_features * mod.out_features)
            )

    handles = [m.register_forward_hook(hook) for m in modules]
    try:
        with torch.no_grad():
            run()
    finally:
        for h in handles:
            h.remove()
    return work


def model_work(model: nn.Module, x: torch.Tensor) -> LayerWork:
    """The weight layers of a plain PyTorch model (hybridc's source model) as run by `model(x)` on one sample."""
    mods = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    return _hooked_work(mods, lambda: model(x[:1]))


class ReferenceEP:
    """The reference implementation's `splitting_small_2block` model with its EP algorithm and an optimizer.

    Args:
        ref_dir: a checkout of rain-neuromorphics/hybrid_bp_ep_official (imported from there via sys.path).
        t1, t2: free-phase and nudged-phase steps (the config's `T1` and the EP algorithm's `T2`).
        asynchronous: the reference's even/odd schedule (its configs' default, `asynchronous: true`) or
            synchronous updates.
        beta: nudging strength (the reference's default 0.2, centered: phases at +β and −β).
        device: torch device.
        lr: Adam learning rate (the reference trainer's default 5e-5, weight decay 3e-4).
    """

    def __init__(
        self,
        ref_dir: str | Path,
        t1: int,
        t2: int,
        asynchronous: bool = True,
        beta: float = 0.2,
        device: torch.device | str = "cpu",
        lr: float = 5e-5,
    ) -> None:
        ref_dir = Path(ref_dir).resolve()
        if not (ref_dir / REFERENCE_CONFIG).is_file() or not (ref_dir / "src" / "models").is_dir():
            raise FileNotFoundError(
                f"{ref_dir} is not a checkout of rain-neuromorphics/hybrid_bp_ep_official "
                f"(no {REFERENCE_CONFIG} or src/models)"
            )
        try:
            from omegaconf import OmegaConf
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ImportError("the reference implementation needs omegaconf: pip install omegaconf") from exc
        if str(ref_dir) not in sys.path:
            sys.path.insert(0, str(ref_dir))
        from src.algorithms import getAlgorithm  # the reference's own modules
        from src.models import getModel

        self.device = torch.device(device)
        cfg = OmegaConf.load(ref_dir / REFERENCE_CONFIG)
        cfg.config.T1 = t1
        cfg.config.asynchronous = asynchronous
        self.cfg = cfg
        self.model = getModel(cfg.name, cfg, self.device, input_size=32, num_classes=10).to(self.device)
        self.algorithm = getAlgorithm("ep", {"T2": t2, "beta": beta})
        self.criterion = nn.CrossEntropyLoss(
            reduction="none"
        )  # the reference's getCriterion("cross_entropy")
        self.lr = lr
        self.optimizer: torch.optim.Optimizer | None = None
        self.model.train()

    def _ensure_optimizer(self, x: torch.Tensor) -> None:
        """The readout is a LazyLinear: materialise it with one forward before building the optimizer."""
        if self.optimizer is None:
            with torch.no_grad():
                neurons = self.model.initialize_neurons(x[:1])
                self.model(x[:1], neurons, 1)
            self.optimizer = torch.optim.Adam(self.model.parameters(), lr=self.lr, weight_decay=3e-4)

    def step(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """One EP training step as the reference's training loop runs it; returns the loss."""
        self._ensure_optimizer(x)
        _, loss = self.algorithm.run(self.model, x, y, self.criterion)
        assert self.optimizer is not None
        self.optimizer.step()
        return loss

    def work(self, x: torch.Tensor) -> LayerWork:
        """The weight layers of one feedforward pass through the reference's synapses (pool after each conv
        as its blocks apply them, the entry BatchNorm, the fc layers, the readout)."""
        self._ensure_optimizer(x)
        blocks = self.model.blocks
        mods = [m for b in blocks for m in b.synapses] + [
            m for m in self.model.readout.modules() if isinstance(m, nn.Linear)
        ]

        def run() -> None:
            h = x[:1]
            for b in blocks:
                h = b.feedforward(h)
                n_conv = len(b.kernels)
                for idx in range(1, n_conv):
                    h = b.pools[idx](b.synapses[idx](h))
                for idx in range(n_conv, len(b.synapses)):
                    h = b.synapses[idx](h.reshape(h.size(0), -1))
            self.model.readout(h)

        return _hooked_work(mods, run)

    def state_shapes(self) -> list[list[tuple[int, ...]]]:
        """Per block, the shape (per sample) of each neuron layer the reference relaxes."""
        return [[tuple(t.shape[1:]) for t in b.initialize_neurons(1)] for b in self.model.blocks]
