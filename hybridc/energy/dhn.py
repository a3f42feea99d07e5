"""Deep Hopfield energy-based block: E(s) = Σ_j G_j(s_j) − Φ(s; θ, x), Φ = Σ_j ⟨s_j, u_j(s, x; θ)⟩.

The synapse graph (lowered from the plan) computes the pre-activations u_j. The fixed-point map is
T(s)_j = σ_j(∂Φ/∂s_j − nudge_j); ∂Φ/∂s_j = u_j + Σ_k (∂u_k/∂s_j)^T s_k (bottom-up plus top-down).
It is computed either by explicit transposed ops (fast path, `hybridc.energy.transpose`) or by autograd
(generic path); both are tested to agree. Gradients come from `hybridc.energy.estimators`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from hybridc.energy.activations import Activation, make_activation
from hybridc.energy.block import EnergyBlock
from hybridc.energy.settings import GradientConfig, SolverConfig
from hybridc.energy.transpose.program import StepCache
from hybridc.errors import UnsupportedOpError
from hybridc.passes.lower import split_synapses
from hybridc.passes.reach import ancestors, users, walk
from hybridc.plan import ActivationSpec

if TYPE_CHECKING:
    from hybridc.cost.analog import AnalogLayout
    from hybridc.cost.constants import EnergyConstants
    from hybridc.plan import Block

States = list[torch.Tensor]


def _neuron_depths(gm: fx.GraphModule, n_inputs: int) -> list[int]:
    """Layer index of each neuron: 1 + the deepest neuron its pre-activation reads (inputs are depth 0)."""
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    states = placeholders[n_inputs:]
    out_node = next(n for n in gm.graph.nodes if n.op == "output")
    pre = list(out_node.args[0])
    reads = [{states.index(n) for n in ancestors([p]) if n in states} for p in pre]
    depth = [0] * len(pre)
    for _ in range(len(pre)):
        for j, r in enumerate(reads):
            depth[j] = 1 + max((depth[i] for i in r), default=0)
    return depth


_aten = torch.ops.aten
#: the 2-d max-pools (modules, functions, ATen ops) whose cost the memory layout decides
_MAX_POOL_MODULES = (nn.MaxPool2d, nn.AdaptiveMaxPool2d)
_MAX_POOL_FUNCTIONS = (
    F.max_pool2d,
    F.max_pool2d_with_indices,
    F.adaptive_max_pool2d,
    torch.max_pool2d,
    _aten.max_pool2d.default,
    _aten.max_pool2d_with_indices.default,
    _aten.adaptive_max_pool2d.default,
)


def _pools_a_state(gm: fx.GraphModule, n_inputs: int) -> bool:
    """Whether some 2-d max-pool of the synapse graph reads a neuron state (runs on every relaxation step)."""
    states = [n for n in gm.graph.nodes if n.op == "placeholder"][n_inputs:]
    for node in walk(states, users):
        if node.op == "call_module" and isinstance(gm.get_submodule(node.target), _MAX_POOL_MODULES):
            return True
        if node.op == "call_function" and any(node.target is f for f in _MAX_POOL_FUNCTIONS):
            return True
    return False


class DHNBlock(EnergyBlock):
    """An analog block as a Deep Hopfield network over its synapse graph."""

    kind = "dhn"

    def __init__(
        self,
        name: str,
        synapses: fx.GraphModule,
        n_inputs: int,
        neuron_names: list[str],
        activations: list[ActivationSpec],
        neuron_shapes: list[list[int] | None],
        output_names: list[str],
        solver: SolverConfig,
        gradient: GradientConfig,
    ):
        super().__init__(name, neuron_names, neuron_shapes, output_names, solver, gradient)
        self.synapses = synapses
        self.n_inputs = n_inputs
        self.activation_specs = activations
        self.sigmas: list[Activation] = [make_activation(a) for a in activations]
        depths = _neuron_depths(synapses, n_inputs)
        self._pools_a_state = _pools_a_state(synapses, n_inputs)
        self.parity = [d % 2 for d in depths]
        #: the neurons each half of an even/odd sweep updates, even layers first
        self.parity_groups = tuple(
            tuple(j for j, p in enumerate(self.parity) if p == parity) for parity in (0, 1)
        )
        # the input-only part of the synapses (e.g. W_1 x) is computed once per phase, not every step
        prefix, core, self.n_cut = split_synapses(synapses, n_inputs)
        # a plain tuple: prefix and core share the synapses' layers, which must appear once in state_dict
        self._split = (prefix, core)
        #: the feedback-gain bound (`hybridc.energy.contraction.DHNConstraint`), None = unconstrained
        self.constraint = None
        self.fast = None
        self.fast_reason = "fast path disabled"
        if solver.fast_path != "off":
            try:
                from hybridc.energy.transpose import TransposeProgram

                self.fast = TransposeProgram(core, self.n_cut)
                self.fast_reason = ""
            except UnsupportedOpError as exc:
                self.fast_reason = str(exc)
                if solver.fast_path == "on":
                    raise

    @property
    def channels_last(self) -> bool:
        """Whether this block relaxes with channels-last conv states and weights (`SolverConfig.layout`). Auto
        picks it for blocks that max-pool a state: measured on CPU (paper VGG, batch 16, 1 thread), the pool
        with indices runs ~8x faster channels-last and the block's step 1.19x faster, while a block of convs
        over 2x2 maps alone runs 2.7x slower channels-last."""
        if self.solver.layout == "auto":
            return self._pools_a_state
        return self.solver.layout == "channels_last"

    def apply_layout_(self) -> None:
        """Store the block's 4-d weights in the memory layout it relaxes in (in place: the parameters stay the
        same objects, so optimizers and parametrizations keep them). Cheap when already so: relax calls it."""
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        for p in self.parameters():
            if p.dim() == 4 and not p.is_contiguous(memory_format=fmt):
                p.data = p.data.contiguous(memory_format=fmt)

    def initial_states(self, inputs: Sequence[torch.Tensor]) -> States:
        return [self._in_layout(s) for s in super().initial_states(inputs)]

    @property
    def core(self) -> fx.GraphModule:
        """The per-step part of the synapses (fed by `prepare`'s once-per-phase prefix, `n_cut` inputs): what
        every relaxation step, and so ∂Φ/∂s and its export, reads."""
        return self._split[1]

    # ---- equilibrium by construction ---------------------------------------------------------------
    def constrain_(self) -> None:
        """Keep the feedback gain ρ within its bound (set up by `hybridc.energy.contraction` at compile)."""
        if self.constraint is not None:
            self.constraint.apply_()

    # ---- the fixed-point map ----------------------------------------------------------------------
    def prepare(self, inputs: Sequence[torch.Tensor]) -> Sequence[torch.Tensor]:
        """The input-only synapses, once per phase, in the block's layout: a layout arrives with the inputs
        (a channels-last block upstream makes the digital ops between them channels-last), and convs whose
        inputs and weights disagree convert on every call."""
        return [self._in_layout(p) for p in self._split[0](*inputs)]

    def _in_layout(self, t: torch.Tensor) -> torch.Tensor:
        if t.dim() != 4:
            return t
        return t.contiguous(
            memory_format=torch.channels_last if self.channels_last else torch.contiguous_format
        )

    def phi_grad(
        self,
        inputs: Sequence[torch.Tensor],
        states: States,
        differentiable: bool = False,
        wanted: Sequence[int] | None = None,
        cache: StepCache | None = None,
    ) -> list[torch.Tensor | None]:
        """∂Φ/∂s for every neuron (or only those in `wanted`, None elsewhere), from the prepared (cut) inputs.
        `differentiable`: build an autograd graph through it (id/bptt). `cache` (fast path, with `wanted`):
        reuse the node values of earlier calls whose states are unchanged (`TransposeProgram.phi_grad_of`)."""
        if self.fast is not None:
            if wanted is None:
                return list(self.fast.phi_grad(inputs, states))
            return self.fast.phi_grad_of(inputs, states, wanted, cache)
        with torch.enable_grad():
            if differentiable:
                s = [t if t.requires_grad else t.detach().requires_grad_(True) for t in states]
            else:
                s = [t.detach().requires_grad_(True) for t in states]
                inputs = [x.detach() for x in inputs]
            u = self._split[1](*inputs, *s)
            phi = sum((si * ui).sum() for si, ui in zip(s, u))
            which = range(len(s)) if wanted is None else wanted
            grads = torch.autograd.grad(phi, [s[j] for j in which], create_graph=differentiable)
        out: list[torch.Tensor | None] = [None] * len(s)
        for j, g in zip(which, grads):
            out[j] = g
        return out

    def phi_per_sample(self, inputs: Sequence[torch.Tensor], states: States) -> torch.Tensor:
        """Φ for every sample of the batch (differentiable w.r.t. parameters and inputs). An entry norm uses
        the batch's statistics, as in the phases, without updating its running statistics again."""
        with self.norm_stats_held():
            u = self.synapses(*inputs, *states)
        return sum((si * ui).reshape(si.shape[0], -1).sum(1) for si, ui in zip(states, u))

    def step_prepared(
        self,
        prepared: Sequence[torch.Tensor],
        states: States,
        nudge: States | None = None,
        differentiable: bool = False,
        cache: StepCache | None = None,
    ) -> States:
        """One relaxation step: synchronous, or even layers then odd layers. Each half computes ∂Φ/∂s of its
        own layers only, and with the phase's `cache` reuses the ops whose inputs the other half left
        unchanged, so an even/odd sweep costs about one synchronous step."""
        inputs = prepared
        if self.solver.mode == "sync" or differentiable:
            g = self.phi_grad(inputs, states, differentiable)
            return [self._update(j, g[j], nudge, differentiable) for j in range(len(states))]
        new = list(states)
        for half in self.parity_groups:
            g = self.phi_grad(inputs, new, wanted=half, cache=cache)
            for j in half:
                new[j] = self._update(j, g[j], nudge)
        return new

    def _update(
        self, j: int, g: torch.Tensor, nudge: States | None, differentiable: bool = False
    ) -> torch.Tensor:
        if nudge is not None and nudge[j] is not None:
            g = g - nudge[j]
        return self.sigmas[j](self.read_noise(g, differentiable))

    def extra_repr(self) -> str:
        acts = ", ".join(f"{n}:{a}" for n, a in zip(self.neuron_names, self.activation_specs))
        path = "fast" if self.fast is not None else "generic"
        return f"name={self.name}, neurons=[{acts}], grad={self.gradient.mode}, path={path}"

    # ---- the block-kind contract (EnergyBlock) -------------------------------------------------------------
    @classmethod
    def from_plan(
        cls,
        block: Block,
        synapses: fx.GraphModule,
        n_inputs: int,
        output_names: list[str],
        solver: SolverConfig,
        gradient: GradientConfig,
    ) -> DHNBlock:
        """A DHN over the lowered synapse graph, each neuron's σ_j the plan's activation (a DHN takes no
        kind parameters: `eb_params` are a DRN's)."""
        return cls(
            block.name,
            synapses,
            n_inputs,
            [nr.node for nr in block.neurons],
            [nr.activation for nr in block.neurons],
            [nr.shape for nr in block.neurons],
            output_names,
            solver,
            gradient,
        )

    @property
    def needs_feedback_guard(self) -> bool:
        """With two or more neuron layers the top-down terms couple them: the relaxation reaches its fixed
        point from any start when ρ < 1, which the guard enforces. A single layer has no feedback, and is left
        untouched (its compiled forward stays the original model's)."""
        return len(self.neuron_names) >= 2

    def feedback_layers(self) -> list[tuple[str, torch.Tensor]]:
        """The weight ops of the per-step `core` synapse graph (`hybridc.energy.coupling.feedback_layers`):
        layers that read only the block's inputs are in the once-per-phase prefix and cannot feed back."""
        from hybridc.energy.coupling import feedback_layers

        return feedback_layers(self)

    @property
    def synapse_graph(self) -> fx.GraphModule:
        """The full synapse graph `synapses` (prefix and core): u_j(s, x; θ) for every neuron layer."""
        return self.synapses

    def export_unsupported_reason(self) -> str | None:
        """None: the export format is a DHN's (an op of the synapses without an explicit transpose is reported
        when the export builds the autograd-free step, `hybridc.export.full.ensure_fast_path`)."""
        return None

    def crossbar_layout(
        self,
        in_refs: list[tuple[list[int], str | None]],
        needs_grad: list[bool],
        weight_layers: list[str],
        tile: tuple[int, int],
        consts: EnergyConstants,
    ) -> AnalogLayout:
        """The weight ops of the synapse graph, counted by one batch-1 pass of it; DHN weights are signed,
        each a differential pair G+ - G- (`dhn_devices_per_weight` devices). The plan's layer names are not
        needed: each layer is named by its op."""
        from hybridc.cost.analog import synapse_graph_layout

        return synapse_graph_layout(
            self.synapses,
            self.n_inputs,
            self.neuron_shapes,
            self.name,
            in_refs,
            needs_grad,
            tile,
            int(consts.dhn_devices_per_weight.value),
        )
