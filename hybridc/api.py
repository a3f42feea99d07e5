"""Public Python API: trace, partition, compile (and, through other modules, export)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from hybridc.energy.goe import goe_init
from hybridc.energy.settings import GradientConfig, SolverConfig
from hybridc.errors import PartitionError
from hybridc.passes.partition import partition_graph
from hybridc.passes.plan_builder import validate_plan
from hybridc.passes.trace import TracedGraph, trace_model
from hybridc.plan import AnalogSpec, PartitionConfig, Plan
from hybridc.runtime.ffebm import FFEBM


def _as_tuple(example_inputs: Any) -> tuple[torch.Tensor, ...]:
    """The positional arguments of an example (a tensor is one); a dict of keyword arguments stays whole."""
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,)
    if isinstance(example_inputs, dict):
        return (example_inputs,)
    return tuple(example_inputs)


def trace(model: nn.Module, example_inputs: Any) -> TracedGraph:
    """Capture `model`'s graph (torch.fx, falling back to torch.export) with shapes recorded.

    `example_inputs`: a tensor, a tuple of positional arguments, or a dict of keyword arguments (HF style
    `{"input_ids": ids, "attention_mask": mask}`). Tensors become graph inputs; None and Python constants
    (`attn_mask=None`, `is_causal=False`) and the defaults of arguments not given are folded into the graph:
    the compiled model is called like the original, with those constants unchanged."""
    return trace_model(model, example_inputs)


def _partition(traced: TracedGraph, cfg: PartitionConfig, model: nn.Module) -> Plan:
    """The plan of a traced model, with what tracing changed (in-place ops, assertions) among its decisions."""
    from hybridc.plan import Decision

    plan = partition_graph(traced, cfg, _example_shapes(traced))
    plan.model.model_class = type(model).__name__
    owner = {n: b.name for b in plan.blocks for n in b.nodes}
    plan.decisions = [
        Decision(node=node, action=action, reason=reason, block=owner.get(node))  # type: ignore[arg-type]
        for node, action, reason in traced.decisions
    ] + plan.decisions
    return plan


def _example_shapes(traced: TracedGraph) -> list[list[int]]:
    """Shapes of the graph inputs of the example call, in placeholder order."""
    return [list(n.meta.get("hybridc_shape") or []) for n in traced.gm.graph.nodes if n.op == "placeholder"]


def make_config(max_block_size: int | None = None, **policies: Any) -> PartitionConfig:
    """A PartitionConfig from keyword policies; invalid values raise PartitionError with the field."""
    from pydantic import ValidationError

    fields = {k: v for k, v in policies.items() if v is not None}
    if max_block_size is not None:
        fields["max_block_size"] = max_block_size
    try:
        return PartitionConfig(**fields)
    except ValidationError as exc:
        msgs = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise PartitionError(f"invalid partition settings: {msgs}") from None


def partition(
    model: nn.Module, example_inputs: Any, max_block_size: int | None = None, **policies: Any
) -> Plan:
    """Partition `model` into analog (energy-based) and digital blocks and return the plan.

    Policies: norm=split|entry|drop, pool=digital|absorb, attention=digital|analog,
    activation=hardsigmoid|keep, hardsigmoid_slope=float, non_monotone=substitute|refuse, eb_kind=dhn|drn.
    """
    cfg = make_config(max_block_size, **policies)
    return _partition(trace(model, example_inputs), cfg, model)


def compile(
    model: nn.Module,
    example_inputs: Any,
    plan: Plan | None = None,
    max_block_size: int | None = None,
    gradient: str = "ep",
    solver: dict | SolverConfig | None = None,
    init: str = "keep",
    beta: float | None = None,
    goe_variance: float = 5e-5,
    analog: dict | AnalogSpec | None = None,
    constrain: bool = True,
    feedback_gain: float | None = None,
    **policies: Any,
) -> FFEBM:
    """Compile `model` into a trainable ff-EBM (an nn.Module).

    `plan`: a Plan to build exactly (validated against the model); else one is made with
    `max_block_size` and `policies` (see `partition`). `gradient`: "ep", "id" or "bptt".
    `solver`: SolverConfig fields (t1, t2, mode, tol, anderson, ...); by default every analog block's free
    phase runs to its fixed point (max|Δs| ≤ free_tol·max(1, max|s|), capped from its enforced feedback-gain
    bound; a block hitting its cap warns and reports `last_converged = False`), while giving `t1` runs exactly
    t1 free steps (the paper's fixed-iteration version). `init`: "keep" (the model's own
    weights), "goe" (GOE init of every analog weight, variance `goe_variance`) or "goe-conv" (the reference
    code's: analog convs only, `hybridc.energy.goe.goe_reference_`). `analog`: device
    effects (AnalogSpec fields) written into the plan for every analog block.
    The compiled module owns deep copies of the model's layers: training it never changes `model`.
    `constrain` (on by default): equilibrium by construction (`hybridc.energy.contraction`): every
    multi-layer DHN block's feedback gain is bounded by `feedback_gain` (None = DEFAULT_FEEDBACK_GAIN, 0 =
    off), here and after every optimizer step; rescaled layers are recorded in `plan.decisions` (the compiled
    forward then differs from `model`'s; single-layer blocks stay exact). DRN conductances are kept ≥ 0.
    """
    from pydantic import ValidationError

    traced = trace(model, example_inputs)
    if plan is None:
        plan = _partition(traced, make_config(max_block_size, **policies), model)
    else:
        if max_block_size is not None or policies:
            raise PartitionError(
                "give either a plan or partition settings (max_block_size, policies), not both"
            )
        validate_plan(plan, traced)
    if analog is not None:
        plan = plan.model_copy(deep=True)
        plan.analog = analog if isinstance(analog, AnalogSpec) else AnalogSpec(**analog)
    try:
        solver_cfg = solver if isinstance(solver, SolverConfig) else SolverConfig(**(solver or {}))
        grad_fields: dict[str, Any] = {"mode": gradient}
        if beta is not None:
            grad_fields["beta"] = beta
        grad_cfg = GradientConfig(**grad_fields)
    except ValidationError as exc:
        msgs = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise PartitionError(f"invalid compile settings: {msgs}") from None
    compiled = FFEBM(plan, traced, solver_cfg, grad_cfg)
    if init in ("goe", "goe-conv"):
        goe_init(compiled, goe_variance, scope="conv" if init == "goe-conv" else "all")
    elif init != "keep":
        raise PartitionError(f"init must be 'keep', 'goe' or 'goe-conv', not {init!r}")
    if constrain:
        from hybridc.energy.contraction import DEFAULT_FEEDBACK_GAIN, constrain_model

        if feedback_gain is not None and feedback_gain < 0:
            raise PartitionError(f"feedback_gain must be ≥ 0 (0 = off), got {feedback_gain}")
        constrain_model(compiled, DEFAULT_FEEDBACK_GAIN if feedback_gain is None else feedback_gain)
    for block in compiled.analog_blocks.values():
        block.apply_layout_()  # now, before any optimizer exists: its state then takes the same layout
    compiled.train(model.training)
    return compiled
