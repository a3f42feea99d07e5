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

from hybridc.energy.activations import Activation, make_activation
from hybridc.energy.block import EnergyBlock
from hybridc.energy.settings import GradientConfig, SolverConfig
from hybridc.errors import UnsupportedOpError
from hybridc.passes.lower import split_synapses
from hybridc.plan import ActivationSpec

States = list[torch.Tensor]


if TYPE_CHECKING:
    from hybridc.cost.analog import AnalogLayout
    from hybridc.cost.constants import EnergyConstants
    from hybridc.plan import Block


def _neuron_depths(gm: fx.GraphModule, n_inputs: int) -> list[int]:
    """Layer index of each neuron: 1 + the deepest neuron its pre-activation reads (inputs are depth 0)."""
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    states = placeholders[n_inputs:]
    out_node = next(n for n in gm.graph.nodes if n.op == "output")
    pre = list(out_node.args[0])
    reads: list[set[int]] = []
    for p in pre:
        found: set[int] = set()
        stack, seen = [p], set()
        while stack:
            n = stack.pop()
            if n in seen:
                continue
            seen.add(n)
            if n in states:
                found.add(states.index(n))
            stack.extend(n.all_input_nodes)
        reads.append(found)
    depth = [0] * len(pre)
    for _ in range(len(pre)):
        for j, r in enumerate(reads):
            depth[j] = 1 + max((depth[i] for i in r), default=0)
    return depth


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
        self.parity = [d % 2 for d in depths]
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
        return self._split[0](*inputs)

    def phi_grad(
        self, inputs: Sequence[torch.Tensor], states: States, differentiable: bool = False
    ) -> States:
        """∂Φ/∂s for every neuron, from the prepared (cut) inputs. `differentiable`: build an autograd graph
        through it (id/bptt)."""
        if self.fast is not None:
            return list(self.fast.phi_grad(inputs, states))
        with torch.enable_grad():
            if differentiable:
                s = [t if t.requires_grad else t.detach().requires_grad_(True) for t in states]
            else:
                s = [t.detach().requires_grad_(True) for t in states]
                inputs = [x.detach() for x in inputs]
            u = self._split[1](*inputs, *s)
            phi = sum((si * ui).sum() for si, ui in zip(s, u))
            grads = torch.autograd.grad(phi, s, create_graph=differentiable)
        return list(grads)

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
    ) -> States:
        """One relaxation step (synchronous, or even layers then odd layers)."""
        inputs = prepared
        if self.solver.mode == "sync" or differentiable:
            g = self.phi_grad(inputs, states, differentiable)
            return [self._update(j, g[j], nudge, differentiable) for j in range(len(states))]
        new = list(states)
        for parity in (0, 1):
            g = self.phi_grad(inputs, new)
            new = [
                self._update(j, g[j], nudge) if self.parity[j] == parity else new[j] for j in range(len(new))
            ]
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
