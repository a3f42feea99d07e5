"""Deep resistive network (DRN) block (Scellier, ICML 2024): a layered nonlinear resistive network.

Nodes are voltages. Layer 0 holds the input voltage sources γ·[x, −x] (the doubling lets non-negative
conductances act as signed weights). Hidden nodes are bounded by ideal diodes: the first half of every hidden
layer is ≥ 0, the second half ≤ 0. Output nodes are linear. Biases are current sources. The energy is the
power dissipated,

    E(v) = Σ_k Σ_ij ½ g^k_ij (v^{k+1}_i − v^k_j)² − Σ_k ⟨b^k, v^k⟩      (g ≥ 0),

and the equilibrium is found by exact block coordinate descent: nodes of one layer do not touch each other,
so all layers of one parity are set at once to their closed-form optimum
v^k ← clip((g^{k−1} v^{k−1} + g^{kᵀ} v^{k+1} + b^k − nudge) / (Σ_j g^{k−1}_ij + Σ_i g^k_ij)), odd layers then
even layers. EP's conductance gradient follows from ∂E/∂g_ij = ½ (v_i − v_j)².
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
import torch.fx as fx
from torch import nn
from torch.nn.utils import parametrize

from hybridc.energy.block import EnergyBlock, States
from hybridc.energy.settings import GradientConfig, SolverConfig
from hybridc.errors import UnsupportedOpError

if TYPE_CHECKING:
    from hybridc.cost.analog import AnalogLayout
    from hybridc.cost.constants import EnergyConstants
    from hybridc.plan import Block


def _linear_weights(synapses: fx.GraphModule) -> list[tuple[str, torch.Tensor, torch.Tensor | None]]:
    """The Linear layers of a synapse graph, in order: (name, weight, bias)."""
    out = []
    for node in synapses.graph.nodes:
        if node.op == "call_module" and isinstance(synapses.get_submodule(node.target), nn.Linear):
            mod = synapses.get_submodule(node.target)
            out.append((str(node.target), mod.weight, mod.bias))
        elif node.op == "call_function" and getattr(node.target, "__name__", "") in (
            "linear",
            "linear.default",
        ):
            ws = [a for a in node.all_input_nodes[1:] if a.op == "get_attr"]
            tensors = [synapses.get_parameter(str(a.target)) for a in ws]
            out.append((node.name, tensors[0], tensors[1] if len(tensors) > 1 else None))
        elif node.op in ("call_module", "call_function", "call_method") and _is_weight_op(node, synapses):
            raise UnsupportedOpError(
                f"drn blocks are chains of Linear layers; node {node.name} ({node.target}) is another weight op. "
                "Use eb_kind 'dhn' for this block."
            )
    return out


def _is_weight_op(node: fx.Node, gm: fx.GraphModule) -> bool:
    from hybridc.passes.ops import op_key

    return op_key(node, gm) in ("conv", "conv_transpose", "matmul", "addmm")


class DRNBlock(EnergyBlock):
    """An analog block as a deep resistive network (see module docstring)."""

    kind = "drn"

    def __init__(
        self,
        name: str,
        synapses: fx.GraphModule,
        n_inputs: int,
        neuron_names: list[str],
        neuron_shapes: list[list[int] | None],
        output_names: list[str],
        solver: SolverConfig,
        gradient: GradientConfig,
        gamma: float = 1.0,
        init: str = "from_weights",
    ):
        super().__init__(name, neuron_names, neuron_shapes, output_names, solver, gradient)
        if n_inputs != 1:
            raise UnsupportedOpError(
                f"drn block {name}: takes exactly one input tensor, got {n_inputs}; "
                "use eb_kind 'dhn' for blocks with skip inputs"
            )
        layers = _linear_weights(synapses)
        if len(layers) != len(neuron_names):
            raise UnsupportedOpError(
                f"drn block {name}: {len(layers)} Linear layers for {len(neuron_names)} neuron layers; a drn block "
                "must be a plain chain Linear → activation → … → Linear (use eb_kind 'dhn' otherwise)"
            )
        if self.output_idx != [len(neuron_names) - 1]:
            raise UnsupportedOpError(f"drn block {name}: only its last layer may feed other blocks")
        self.gamma = float(gamma)
        self.sizes = [2 * layers[0][1].shape[1]] + [w.shape[0] for _, w, _ in layers]
        for k in range(1, len(layers)):
            if layers[k][1].shape[1] != layers[k - 1][1].shape[0]:
                raise UnsupportedOpError(
                    f"drn block {name}: layer {layers[k][0]} does not read layer {layers[k - 1][0]}"
                )
        for shape, n in zip(self.neuron_shapes, self.sizes[1:]):
            if not shape or shape[-1] != n:
                raise UnsupportedOpError(f"drn block {name}: neuron shape {shape} does not end in {n}")
        self.in_features = layers[0][1].shape[1]
        self.conductances = nn.ParameterList()
        self.biases = nn.ParameterList()
        for (_, w, b), n_in in zip(layers, self.sizes[:-1]):
            g = torch.empty(w.shape[0], n_in, dtype=w.dtype, device=w.device)
            if init == "from_weights" and n_in == 2 * w.shape[1]:
                # the doubled input realises a signed weight w as g⁺ − g⁻ with g⁺ = relu(w), g⁻ = relu(−w)
                g.copy_(torch.cat([w.detach().clamp_min(0), (-w.detach()).clamp_min(0)], 1))
            elif init == "from_weights":
                g.copy_(w.detach().abs())
            else:
                nn.init.uniform_(g, 0.0, 1.0 / math.sqrt(n_in))
            self.conductances.append(nn.Parameter(g))
            self.biases.append(
                nn.Parameter(
                    torch.zeros(w.shape[0], dtype=w.dtype, device=w.device)
                    if b is None
                    else b.detach().clone()
                )
            )
        for k, n in enumerate(self.sizes[1:-1]):
            half = n // 2  # diode bounds: first n - half nodes ≥ 0, last half ≤ 0
            lo = torch.cat([torch.zeros(n - half), torch.full((half,), -math.inf)]).to(g.dtype)
            hi = torch.cat([torch.full((n - half,), math.inf), torch.zeros(half)]).to(g.dtype)
            self.register_buffer(f"_lo{k}", lo, persistent=False)
            self.register_buffer(f"_hi{k}", hi, persistent=False)
        self.project_()

    def raw_conductances(self) -> list[nn.Parameter]:
        """The conductance parameters themselves (under a device-effect parametrization, the originals)."""
        out = []
        for i in range(len(self.conductances)):
            if parametrize.is_parametrized(self.conductances, str(i)):
                out.append(self.conductances.parametrizations[str(i)].original)
            else:
                out.append(self.conductances._parameters[str(i)])
        return out

    @torch.no_grad()
    def project_(self) -> None:
        """Clamp conductances to ≥ 0."""
        for g in self.raw_conductances():
            g.clamp_(min=0.0)

    def constrain_(self) -> None:
        """A DRN relaxes by exact coordinate descent on a convex energy while its conductances are ≥ 0: its
        constraint is that projection (run after every optimizer step by `hybridc.energy.contraction`)."""
        self.project_()

    def _bounds(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        return getattr(self, f"_lo{k}"), getattr(self, f"_hi{k}")

    def _sources(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_features:
            x = x.flatten(1)
        return self.gamma * torch.cat([x, -x], -1)

    def prepare(self, inputs: Sequence[torch.Tensor]) -> Sequence[torch.Tensor]:
        """The sources and the current they drive into the first layer (constant over a phase's sweeps)."""
        sources = self._sources(inputs[0])
        return [sources, sources @ self.conductances[0].t() + self.biases[0]]

    def step_prepared(
        self,
        prepared: Sequence[torch.Tensor],
        states: States,
        nudge: States | None = None,
        differentiable: bool = False,
        cache: object = None,
    ) -> States:
        """One exact block-coordinate-descent sweep: odd layers, then even layers (closed form each, each layer
        computed once per sweep: `cache` is not needed)."""
        v = [prepared[0]] + list(states)
        n_layers = len(v) - 1
        for parity in (1, 0):
            for k in range(1, n_layers + 1):
                if k % 2 != parity:
                    continue
                g_in = self.conductances[k - 1]
                num = prepared[1] if k == 1 else v[k - 1] @ g_in.t() + self.biases[k - 1]
                den = g_in.sum(1)
                if k < n_layers:
                    g_out = self.conductances[k]
                    num = num + v[k + 1] @ g_out
                    den = den + g_out.sum(0)
                if nudge is not None and nudge[k - 1] is not None:
                    num = num - nudge[k - 1]
                new = self.read_noise(num / den.clamp_min(1e-12), differentiable)
                if k < n_layers:
                    lo, hi = self._bounds(k - 1)
                    new = torch.maximum(torch.minimum(new, hi), lo)
                v[k] = new
        return v[1:]

    def phi_per_sample(self, inputs: Sequence[torch.Tensor], states: States) -> torch.Tensor:
        """−E per sample (power dissipated in the conductances minus the current sources' work)."""
        v = [self._sources(inputs[0])] + list(states)
        power = 0
        for k, g in enumerate(self.conductances):
            a, b = v[k], v[k + 1]  # g: (n_{k+1}, n_k)
            # ½Σ g (b − a)² expanded. The squares are reduced over the batch in float64: their conductance
            # gradients Σ_n w_n a_n² are large terms that EP's ±β phases cancel (exactly, for the inputs), and
            # a float32 reduction leaves rounding noise larger than the gradient itself at realistic input
            # gains γ (cos(EP, ID) ≈ 0.2 for DRN-1H at γ = 100). These are matrix-vector products: cheap.
            wide = torch.promote_types(g.dtype, torch.float64)
            squares = (b * b).to(wide) @ g.sum(1).to(wide) + (a * a).to(wide) @ g.sum(0).to(wide)
            term = 0.5 * squares.to(g.dtype) - ((b @ g) * a).sum(-1)
            power = power + term - (b * self.biases[k]).sum(-1)
        power = power.reshape(power.shape[0], -1).sum(1) if power.dim() > 1 else power
        return -power

    def extra_repr(self) -> str:
        return f"name={self.name}, layers={self.sizes}, gamma={self.gamma:g}, grad={self.gradient.mode}"

    # ---- the block-kind contract (EnergyBlock) -------------------------------------------------------------
    # What a DRN leaves to EnergyBlock's answers: no feedback guard (its energy is convex while g ≥ 0, and
    # `constrain_` projects onto that), no synapse graph (closed-form updates over conductances), no export.

    #: conductances are physical, ≥ 0 (device effects clamp programmed values there too)
    non_negative_weights = True

    @classmethod
    def from_plan(
        cls,
        block: Block,
        synapses: fx.GraphModule,
        n_inputs: int,
        output_names: list[str],
        solver: SolverConfig,
        gradient: GradientConfig,
    ) -> DRNBlock:
        """A DRN whose conductances start from the synapse graph's Linear layers, with the plan block's kind
        parameters (`eb_params`: gamma, init); the neurons' activations are the diodes, not the plan's."""
        return cls(
            block.name,
            synapses,
            n_inputs,
            [nr.node for nr in block.neurons],
            [nr.shape for nr in block.neurons],
            output_names,
            solver,
            gradient,
            **block.eb_params,
        )

    def crossbar_layout(
        self,
        in_refs: list[tuple[list[int], str | None]],
        needs_grad: list[bool],
        weight_layers: list[str],
        tile: tuple[int, int],
        consts: EnergyConstants,
    ) -> AnalogLayout:
        """The conductance matrices between the layers of `sizes` (the doubled sources gamma*[x, -x] first),
        one device per weight, named by the plan's weight layers."""
        from hybridc.cost.analog import conductance_chain_layout

        return conductance_chain_layout(
            self.sizes, self.in_features, weight_layers, in_refs, needs_grad, tile
        )
