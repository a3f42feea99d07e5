"""The compiled feedforward-tied energy-based model (ff-EBM): blocks in topological order, digital
blocks as fx GraphModules, analog blocks as energy-based modules with their own gradient rule."""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.fx as fx
import torch.utils._pytree as pytree
from torch import nn

from hybridc.analog.nonideal import apply_device_effects
from hybridc.energy.block import EnergyBlock
from hybridc.energy.dhn import DHNBlock
from hybridc.energy.drn import DRNBlock
from hybridc.energy.settings import GradientConfig, SolverConfig
from hybridc.errors import PlanMismatchError
from hybridc.passes.classify import free_nodes
from hybridc.passes.lower import block_io, lower_digital, lower_synapses
from hybridc.passes.trace import TracedGraph
from hybridc.plan import AnalogSpec, Plan

#: the class of each energy-based block kind (`PartitionConfig.eb_kind`, per block `Block.eb_kind`; blocks of
#: plans that predate the field are DHNs); each builds itself from its plan block (`EnergyBlock.from_plan`)
BLOCK_KINDS: dict[str, type[EnergyBlock]] = {"dhn": DHNBlock, "drn": DRNBlock}


class FFEBM(nn.Module):
    """A compiled hybrid model. Runs Alg. 1 forward; `loss.backward()` runs Alg. 2 (BP-EP chaining).

    The module owns deep copies of the original model's layers (the original is never modified).
    """

    def __init__(self, plan: Plan, traced: TracedGraph, solver: SolverConfig, gradient: GradientConfig):
        super().__init__()
        self.plan = plan
        gm = traced.gm
        free = free_nodes(gm)
        io = block_io(gm, {b.name: b.nodes for b in plan.blocks}, free)
        self.blocks = nn.ModuleDict()
        self._io: dict[str, tuple[list[str], list[str]]] = {}
        for b in plan.blocks:
            ins, outs = io[b.name]
            in_names = [n.name for n in ins]
            if b.kind == "digital":
                lowered = lower_digital(gm, b, in_names, [n.name for n in outs])
                self.blocks[b.name] = lowered.gm
                self._io[b.name] = (in_names, [n.name for n in outs])
            else:
                neuron_names = [nr.node for nr in b.neurons]
                missing = [o.name for o in outs if o.name not in neuron_names]
                if missing:
                    raise PlanMismatchError(
                        f"{b.name}: outputs {missing} are not neurons of the block; "
                        "every value an analog block hands on must be a neuron"
                    )
                lowered = lower_synapses(gm, b, in_names)
                block = BLOCK_KINDS[b.eb_kind or "dhn"].from_plan(
                    b,
                    lowered.gm,
                    len(in_names),
                    [o.name for o in outs],
                    solver.model_copy(),
                    gradient.model_copy(),
                )
                apply_device_effects(block, b.analog or plan.analog)
                self.blocks[b.name] = block
                self._io[b.name] = (in_names, [o.name for o in outs])
        _check_coverage(plan, gm, free)
        #: per analog block, its neurons' per-sample shapes as a function of its inputs' shapes (token
        #: models run at any sequence length); blocks whose shapes are fixed have none
        self._state_shapes = state_shape_rules(
            gm,
            {k: v[0] for k, v in self._io.items() if k in self.analog_blocks},
            {k: b.neuron_names for k, b in self.analog_blocks.items()},
        )
        for name, rule in self._state_shapes.items():
            self.blocks[name].state_shapes = rule
        self._inputs = [n.name for n in gm.graph.nodes if n.op == "placeholder"]
        out_node = next(n for n in gm.graph.nodes if n.op == "output")
        self._output_template = out_node.args[0]
        # how the original model is called and what it returns around the graph's flat tensors
        self._input_spec = traced.inputs
        self._output_spec = traced.outputs
        # a graph made by torch.export without an OutputSpec returns a flat tuple its codegen unflattens
        info = getattr(gm.graph._codegen, "pytree_info", None)
        self._out_spec = getattr(info, "out_spec", None) if traced.outputs is None else None
        #: DHN feedback-gain bound set by `hybridc.energy.contraction.constrain_model` (None = unconstrained)
        self.feedback_gain: float | None = None
        #: per guarded DHN block, whether its guard's factor is moved downstream and why not (`constrain_model`)
        self.guard_compensation: dict[str, dict[str, Any]] = {}

    @property
    def analog_blocks(self) -> dict[str, EnergyBlock]:
        return {k: v for k, v in self.blocks.items() if isinstance(v, EnergyBlock)}

    def set_gradient(self, mode: Literal["ep", "id", "bptt"] | None = None, **settings: Any) -> FFEBM:
        """Switch every analog block's gradient rule (e.g. `set_gradient("id")`, `set_gradient(beta=0.01)`)."""
        for blk in self.analog_blocks.values():
            fields = blk.gradient.model_dump() | settings | ({"mode": mode} if mode else {})
            blk.gradient = GradientConfig(**fields)
        return self

    def set_solver(self, **settings: Any) -> FFEBM:
        """Change every analog block's solver settings (t1, t2, tol, mode, anderson, ...). A `t1` given without
        `free` asks for that many free steps (`free="fixed"`), as it does when compiling."""
        for blk in self.analog_blocks.values():
            blk.solver = blk.solver.updated(**settings)
        return self

    def set_analog(self, spec: AnalogSpec | dict | None, seed: int | None = None) -> FFEBM:
        """Replace the device effects of every analog block by `spec` (AnalogSpec or its fields; None or {} =
        ideal devices), e.g. to evaluate a trained model under programming noise or fewer weight levels.

        Earlier weight parametrizations are removed first, so the ideal weights stay the parameters (the same
        Parameter objects: an optimizer built before keeps training them). `plan.analog` becomes `spec` and
        per-block overrides are cleared (the module's plan is copied first: a plan object given to `compile`
        is not changed). `seed`: draw programming noise from private generators seeded from it (reproducible
        whatever else consumes the global RNG); None = the global RNG. Read noise always uses the global RNG.
        """
        if spec is None:
            spec = AnalogSpec()
        elif not isinstance(spec, AnalogSpec):
            spec = AnalogSpec(**spec)
        for i, blk in enumerate(self.analog_blocks.values()):
            apply_device_effects(blk, spec, seed=None if seed is None else seed + 1009 * i)
        plan = self.plan.model_copy(deep=True)
        plan.analog = spec
        for b in plan.analog_blocks:
            b.analog = None
        self.plan = plan
        return self

    def load_state_dict(
        self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False
    ) -> Any:
        """As nn.Module's, but a state dict saved with other device effects loads too: weight keys with and
        without a device parametrization (`w` / `parametrizations.w.original`) are matched to this module's."""
        own = set(self.state_dict().keys())
        mapped: dict[str, Any] = {}
        for key, value in state_dict.items():
            if key not in own:
                alt = _toggle_parametrized_key(key)
                if alt in own and alt not in state_dict:
                    key = alt
            mapped[key] = value
        return super().load_state_dict(mapped, strict=strict, assign=assign)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """Called like the original model's forward (the same positional and keyword arguments); returns
        the same structure (tuples, dicts, dataclass outputs such as transformers' ModelOutput)."""
        spec = getattr(self, "_input_spec", None)
        if spec is not None:
            tensors = spec.tensors(args, kwargs)
        elif kwargs:
            raise TypeError(f"this compiled model takes its inputs positionally ({', '.join(self._inputs)})")
        else:
            tensors = list(args)
        if len(tensors) != len(self._inputs):
            raise TypeError(
                f"expected {len(self._inputs)} input(s) ({', '.join(self._inputs)}), got {len(tensors)}"
            )
        env = self.run(tensors)
        out = fx.node.map_arg(self._output_template, lambda n: env[n.name])
        out_spec = getattr(self, "_output_spec", None)
        if out_spec is not None:
            return out_spec.unflatten(list(out))
        if self._out_spec is not None:
            out = pytree.tree_unflatten(list(out), self._out_spec)
        return _plain(out)

    def constrain_(self, only: set[int] | None = None) -> FFEBM:
        """Project every analog block back into the set where its relaxation provably converges (DHN: feedback
        gain ρ ≤ `feedback_gain`, DRN: conductances ≥ 0; see `hybridc.energy.contraction`). Runs at compile
        time and, by a global optimizer post-step hook, after every step of any torch.optim optimizer holding
        the parameters (`only`: ids of the parameters that optimizer holds). Device ops only, no host sync."""
        for blk in self.analog_blocks.values():
            if only is None or any(id(p) in only for p in blk.parameters()):
                blk.constrain_()
        return self

    @property
    def input_names(self) -> list[str]:
        """The graph inputs, in the order `run` takes them (the tensors of the original call, flattened)."""
        return list(self._inputs)

    def io(self, name: str) -> tuple[list[str], list[str]]:
        """Block `name`'s input and output tensor names (graph inputs or other blocks' outputs)."""
        ins, outs = self._io[name]
        return list(ins), list(outs)

    def run(self, inputs: Sequence[torch.Tensor], call: BlockCall | None = None) -> dict[str, torch.Tensor]:
        """One pass over the blocks in plan order: every graph input and block output by tensor name.
        `call(name, block, inputs)` runs a block (default `run_block`): export and the cost model run the
        same loop with their own block execution."""
        return run_blocks(
            self.blocks,
            self._io,
            dict(zip(self._inputs, inputs)),
            call or (lambda name, _block, xs: self.run_block(name, xs)),
        )

    def run_block(self, name: str, inputs: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        """Run block `name` on its inputs (an analog block's initial states follow their shapes)."""
        block = self.blocks[name]
        return block(*inputs)

    def equilibrium_residuals(self) -> dict[str, float]:
        """Last free phase's max|Δs| per analog block (host sync: call once per epoch, not per step)."""
        return {
            k: float(v.last_residual) for k, v in self.analog_blocks.items() if v.last_residual is not None
        }


#: one dimension of a state shape: a constant, (input, dim), or ("prod", input, k): the product of the
#: input's first k+1 dims (a [B*T, H] neuron of a [B, T] token input)
Dim = int | tuple[int, int] | tuple[str, int, int]


@dataclass
class StateShapes:
    """An analog block's neuron shapes (batch included) from its inputs' shapes, for blocks whose neurons
    do not simply take the first input's batch size and fixed per-sample shapes: token-wise neurons [B, T, H]
    whose T follows the sequence length, or neurons of another batch layout than the first input."""

    dims: list[list[Dim]]

    def __call__(self, inputs: list[torch.Tensor]) -> list[list[int]]:
        return [[_dim(d, inputs) for d in nd] for nd in self.dims]


#: How `run_blocks` runs one block: (name, block, its inputs) -> its outputs.
BlockCall = Callable[[str, nn.Module, list[torch.Tensor]], Sequence[Any]]


def run_blocks(
    blocks: Mapping[str, nn.Module],
    io: Mapping[str, tuple[list[str], list[str]]],
    env: dict[str, Any],
    call: BlockCall,
) -> dict[str, Any]:
    """The ff-EBM's block loop, written once: each block, in order, reads its inputs from `env` (tensor name
    -> value, the graph inputs first) and adds its outputs. Used by the compiled model, export's full ONNX
    model and the exporter's reference run."""
    for name, block in blocks.items():
        ins, outs = io[name]
        env.update(zip(outs, call(name, block, [env[i] for i in ins])))
    return env


def _dim(d: Dim, inputs: list[torch.Tensor]) -> int:
    if isinstance(d, int):
        return d
    if len(d) == 2:
        return int(inputs[d[0]].shape[d[1]])
    return int(math.prod(inputs[d[1]].shape[: d[2] + 1]))


def _shapes_grown(gm: fx.GraphModule) -> dict[str, list[int]] | None:
    """Every node's shape when the graph runs on inputs like the example's with one more sample and the
    non-batch dimensions of integer (token) inputs two longer; None when the graph does not run so."""
    inputs = []
    for n in gm.graph.nodes:
        if n.op != "placeholder":
            continue
        shape, dtype = n.meta.get("hybridc_shape"), n.meta.get("hybridc_dtype") or "float32"
        if not shape:
            return None
        dt = getattr(torch, dtype, torch.float32)
        if dt.is_floating_point or dt.is_complex:
            inputs.append(torch.zeros([shape[0] + 1, *shape[1:]], dtype=dt))
        else:
            inputs.append(torch.ones([shape[0] + 1, *(s + 2 for s in shape[1:])], dtype=dt))
    found: dict[str, list[int]] = {}

    class _Recorder(fx.Interpreter):
        def run_node(self, node: fx.Node) -> Any:
            out = super().run_node(node)
            if isinstance(out, torch.Tensor):
                found[node.name] = list(out.shape)
            return out

    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _Recorder(gm).run(*inputs)
    except Exception:  # noqa: BLE001 - specialised to the example's sizes: shapes stay as they are
        return None
    return found


def _find_dim(
    a: int, b: int, ins: list[str], sa: dict[str, list[int]], sb: dict[str, list[int]]
) -> Dim | None:
    """A dimension of size a at the example and b at the grown size, as a function of the block inputs."""
    if a == b:
        return a
    for i, x in enumerate(ins):
        for k in range(len(sa.get(x) or [])):
            if sa[x][k] == a and sb.get(x, [None] * (k + 1))[k] == b:
                return (i, k)
    for i, x in enumerate(ins):
        for k in range(1, len(sa.get(x) or [])):
            if math.prod(sa[x][: k + 1]) == a and x in sb and math.prod(sb[x][: k + 1]) == b:
                return ("prod", i, k)
    return None


def state_shape_rules(
    gm: fx.GraphModule, inputs: dict[str, list[str]], neurons: dict[str, list[str]]
) -> dict[str, StateShapes]:
    """How the neuron shapes of each analog block follow its inputs' shapes, found by running the graph once
    more at a larger batch and token length. Only blocks where that differs from the default (the first
    input's batch size, fixed per-sample shapes) get a rule."""
    if not neurons:
        return {}
    sa = {
        n.name: list(n.meta["hybridc_shape"])
        for n in gm.graph.nodes
        if n.meta.get("hybridc_shape") is not None
    }
    sb = _shapes_grown(gm)
    if sb is None:
        return {}
    rules: dict[str, StateShapes] = {}
    for block, names in neurons.items():
        ins = inputs[block]
        dims = [[_find_dim(a, b, ins, sa, sb) for a, b in zip(sa.get(n, []), sb.get(n, []))] for n in names]
        if any(not nd or None in nd for nd in dims):
            continue
        default = [[(0, 0), *sa[n][1:]] for n in names]
        if dims != default:
            rules[block] = StateShapes(dims)
    return rules


def _plain(out: Any) -> Any:
    """fx's immutable containers as the plain ones a model returns."""
    if isinstance(out, dict):
        return {k: _plain(v) for k, v in out.items()}
    if isinstance(out, list):
        return [_plain(v) for v in out]
    if isinstance(out, tuple) and not hasattr(out, "_fields"):
        return tuple(_plain(v) for v in out)
    return out


def _check_coverage(plan: Plan, gm: fx.GraphModule, free: set[fx.Node]) -> None:
    """Every node that carries data to the output must be computed by some block (free nodes - parameter
    expressions, shape queries - are recomputed by each block that reads them); a node in no block would
    be silently dropped from the compiled model."""
    members = {n for b in plan.blocks for n in b.nodes}
    missing = [
        n.name
        for n in gm.graph.nodes
        if n.op not in ("placeholder", "output", "get_attr") and n not in free and n.name not in members
    ]
    if missing:
        raise PlanMismatchError(
            f"nodes {missing[:8]} compute values of the model but are in no block of the "
            "plan; re-create the plan with `hybridc partition`"
        )


_PARAMETRIZED_KEY = re.compile(r"^(?:(.*)\.)?parametrizations\.([^.]+)\.original$")


def _toggle_parametrized_key(key: str) -> str:
    """`a.weight` <-> `a.parametrizations.weight.original` (state-dict keys of a plain/parametrized tensor)."""
    m = _PARAMETRIZED_KEY.match(key)
    if m:
        return f"{m.group(1)}.{m.group(2)}" if m.group(1) else m.group(2)
    prefix, _, name = key.rpartition(".")
    return f"{prefix}.parametrizations.{name}.original" if prefix else f"parametrizations.{name}.original"
