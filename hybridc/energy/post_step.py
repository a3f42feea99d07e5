"""The one post-step mechanism for every compiled model: after any torch.optim optimizer step, every registered
analog block whose parameters that optimizer holds runs its `constrain_()` — a DHN block's feedback-guard rescale
(`hybridc.energy.feedback_guard.DHNConstraint`), a DRN block's conductance projection g ≥ 0 — so a plain
`torch.optim` loop keeps the same invariants as `hybridc train`. Device ops only: no host synchronisation."""

from __future__ import annotations

import weakref

import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook

#: the analog blocks kept within their constraints (weak references: a block that is garbage is dropped). The
#: registry holds blocks, not models, and a block re-registers itself when it is copied or unpickled
#: (`EnergyBlock.__setstate__`), so `copy.deepcopy(model)` or `torch.load` of a whole model keeps its guard.
_LIVE: weakref.WeakSet[nn.Module] = weakref.WeakSet()
_HOOK: torch.utils.hooks.RemovableHandle | None = None


def _constrain_after_step(optimizer: torch.optim.Optimizer, args: object, kwargs: object) -> None:
    """After any optimizer step: `constrain_` every registered analog block whose parameters this optimizer
    holds. Device ops only: no host synchronisation."""
    if not _LIVE:
        return
    held = {id(p) for g in optimizer.param_groups for p in g["params"]}
    for blk in list(_LIVE):
        if getattr(blk, "keep_constrained", False) and any(id(p) in held for p in blk.parameters()):
            blk.constrain_()


def register_block(block: nn.Module) -> None:
    """Keep `block` (anything with `constrain_()`) within its constraints after every step of any torch.optim
    optimizer holding its parameters; copies and unpickled copies of it are kept too."""
    global _HOOK
    block.keep_constrained = True
    _LIVE.add(block)
    if _HOOK is None:
        _HOOK = register_optimizer_step_post_hook(_constrain_after_step)


def register(model: nn.Module) -> None:
    """`register_block` every analog block of `model` (an FFEBM)."""
    for blk in model.analog_blocks.values():
        register_block(blk)


def unregister(model: nn.Module) -> None:
    """Stop keeping `model`'s analog blocks within their constraints after optimizer steps."""
    for blk in model.analog_blocks.values():
        blk.keep_constrained = False
        _LIVE.discard(blk)
