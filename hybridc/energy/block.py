"""What every energy-based (analog) block kind shares: relaxation phases, state bookkeeping, and the
autograd entry point. A kind (DHN, DRN) supplies the fixed-point map and the energy.

Contract used by `hybridc.energy.estimators`:
- `step_map(inputs, states, nudge=None, differentiable=False)`: one relaxation step; the free equilibrium
  is its fixed point; `nudge[j]` (for output neurons) adds ⟨nudge_j, s_j⟩ to the energy;
- `phi_per_sample(inputs, states)`: Φ = −(the θ- and x-dependent part of the energy), per sample, so that
  EP's ∂L/∂θ ≈ −[∂_θΦ(s^{+β}) − ∂_θΦ(s^{−β})]/(2β) holds for every kind;
- `initial_states(inputs)`, `output_idx`, `solver`, `gradient`.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.nn.utils import parametrize

from hybridc.analog.nonideal import quantize_ste
from hybridc.energy.settings import GradientConfig, SolverConfig
from hybridc.energy.solver import UnconvergedWarning, free_rule_text, free_schedule, free_step_cap, relax
from hybridc.energy.transpose.program import StepCache
from hybridc.errors import UnsupportedOpError
from hybridc.plan import AnalogSpec

if TYPE_CHECKING:
    import torch.fx as fx

    from hybridc.cost.analog import AnalogLayout
    from hybridc.cost.constants import EnergyConstants
    from hybridc.plan import Block

States = list[torch.Tensor]


class EnergyBlock(nn.Module):
    """Base class of analog blocks: neurons relaxing to an equilibrium of an energy."""

    kind = "energy"

    def __init__(
        self,
        name: str,
        neuron_names: list[str],
        neuron_shapes: list[list[int] | None],
        output_names: list[str],
        solver: SolverConfig,
        gradient: GradientConfig,
    ):
        super().__init__()
        self.name = name
        self.neuron_names = neuron_names
        self.neuron_shapes = [list(s[1:]) if s else None for s in neuron_shapes]
        self.output_idx = [neuron_names.index(o) for o in output_names]
        self.solver = solver
        self.gradient = gradient
        #: max|Δs| at the end of the last free phase (device tensor: read it per epoch, not per step)
        self.last_residual: torch.Tensor | None = None
        self.last_steps = 0
        #: whether the last free phase met its stopping criterion (None: fixed steps, which have none) and the
        #: step cap it ran under (`hybridc.energy.solver.free_schedule`)
        self.last_converged: bool | None = None
        self.last_cap = 0
        self.analog: AnalogSpec = AnalogSpec()

    def constrain_(self) -> None:
        """Project the block's parameters back into the set where its relaxation provably converges
        (`hybridc.energy.contraction`); device ops only. A kind without constraints does nothing."""

    def apply_layout_(self) -> None:
        """Store the parameters in the memory layout the relaxation runs in (a kind that has a choice, DHN,
        overrides it); called at the start of every phase, cheap when nothing changes."""

    def __setstate__(self, state: dict) -> None:
        """As nn.Module's; a copy (`copy.deepcopy`, unpickling) of a block kept within its constraints after
        optimizer steps is kept within them too (`hybridc.energy.post_step.register_block`)."""
        super().__setstate__(state)
        if state.get("keep_constrained"):
            from hybridc.energy.post_step import register_block

            register_block(self)

    def _norms(self) -> list[nn.Module]:
        """The block's normalisation layers with running statistics (an entry BatchNorm in an input synapse)."""
        return [m for m in self.modules() if isinstance(m, nn.modules.batchnorm._NormBase)]

    @contextlib.contextmanager
    def norm_stats_held(self) -> Iterator[None]:
        """Norms still normalise with batch statistics in training mode but do not update their running
        statistics: one training step updates them once (the free phase), not again in the nudged phases, Φ's
        evaluation or ID's map, which see the same batch (duplicated by centered EP)."""
        held = [m for m in self._norms() if m.training and m.track_running_stats]
        for m in held:
            m.track_running_stats = False
        try:
            yield
        finally:
            for m in held:
                m.track_running_stats = True

    @contextlib.contextmanager
    def norm_stats_frozen(self) -> Iterator[None]:
        """Norms in eval mode (running statistics, no update) for the duration: for probes on synthetic inputs
        (`hybridc.energy.contraction`'s ρ probe feeds zeros), which must neither move the statistics training
        accumulates nor normalise a degenerate batch."""
        frozen = [m for m in self._norms() if m.training]
        for m in frozen:
            m.train(False)
        try:
            yield
        finally:
            for m in frozen:
                m.train(True)

    def read_noise(self, value: torch.Tensor, differentiable: bool) -> torch.Tensor:
        """Add the device's read noise to a neuron update (not inside ID/BPTT's differentiable maps)."""
        if self.analog.read_noise and not differentiable:
            return value + self.analog.read_noise * torch.randn_like(value)
        return value

    def prepare(self, inputs: Sequence[torch.Tensor]) -> Sequence[torch.Tensor]:
        """What a relaxation phase needs from the inputs, computed once per phase (not per step)."""
        return inputs

    def step_prepared(
        self,
        prepared: Sequence[torch.Tensor],
        states: States,
        nudge: States | None = None,
        differentiable: bool = False,
        cache: StepCache | None = None,
    ) -> States:
        """One relaxation step from `prepare(inputs)`; `cache` (one per phase) lets a kind reuse values the
        previous step computed from states it has not changed since."""
        raise NotImplementedError

    def step_map(
        self,
        inputs: Sequence[torch.Tensor],
        states: States,
        nudge: States | None = None,
        differentiable: bool = False,
    ) -> States:
        """One relaxation step (the fixed-point map T, nudged by `nudge` on output neurons). A single
        evaluation (ID's map, probes): the block's norms do not update their running statistics."""
        with self.norm_stats_held():
            return self.step_prepared(self.prepare(inputs), states, nudge, differentiable)

    def phi_per_sample(self, inputs: Sequence[torch.Tensor], states: States) -> torch.Tensor:
        raise NotImplementedError

    #: full initial-state shapes from the inputs, set by the compiled model (`hybridc.runtime.ffebm.StateShapes`)
    #: where the neurons follow the token length or another batch layout than the first input
    state_shapes: Callable[[list[torch.Tensor]], list[list[int]]] | None = None

    def initial_states(self, inputs: Sequence[torch.Tensor]) -> States:
        ref = inputs[0]
        if self.state_shapes is not None:
            return [
                torch.zeros(s, dtype=ref.dtype, device=ref.device) for s in self.state_shapes(list(inputs))
            ]
        batch = ref.shape[0]
        if any(s is None for s in self.neuron_shapes):
            raise UnsupportedOpError(f"analog block {self.name}: neuron shapes unknown; re-run partition")
        return [
            torch.zeros(batch, *shape, dtype=ref.dtype, device=ref.device) for shape in self.neuron_shapes
        ]

    def relax(
        self,
        inputs: Sequence[torch.Tensor],
        states: States,
        steps: int,
        phase: str,
        nudge: States | None = None,
        rel_tol: float | None = None,
    ) -> States:
        """Run `steps` relaxation steps (or to `rel_tol`, relative, with `steps` as the cap; or to the
        solver's `tol`) from `states`; a free phase records its residual, steps and convergence. The inputs
        are prepared once per phase (the input synapse, e.g. the paper's conv → pool → BatchNorm entry, is not
        re-evaluated per step); only the free phase updates the norms' running statistics."""
        held = contextlib.nullcontext() if phase == "free" else self.norm_stats_held()
        self.apply_layout_()
        with torch.no_grad(), parametrize.cached(), held:
            prepared = self.prepare(inputs)
            cache = StepCache()
            out = relax(
                lambda s: self.step_prepared(prepared, s, nudge, cache=cache),
                states,
                steps,
                self.solver,
                self.name,
                phase,
                (lambda r, p: self._warn_unconverged(r, p, steps)) if phase == "free" else None,
                rel_tol=rel_tol,
            )
        if phase == "free":
            self.last_residual = out.residual
            self.last_steps = out.steps
            self.last_converged = out.converged
            self.last_cap = steps if self.solver.tol is None else self.solver.max_steps
        return out.states

    def feedback_bound(self) -> float | None:
        """The enforced bound on this block's feedback gain ρ (`hybridc.energy.contraction`), None if none."""
        constraint = getattr(self, "constraint", None)
        return getattr(constraint, "target", None)

    def free_cap(self) -> int:
        """The free phase's step cap in run-to-equilibrium mode (`hybridc.energy.solver.free_step_cap`), from
        the plan's neuron shapes; what an export's fixed-step relaxation runs by default."""
        neurons = sum(math.prod(s) for s in self.neuron_shapes if s is not None) or 1
        return free_step_cap(self.solver, self.feedback_bound(), neurons)

    def _warn_unconverged(self, residual: float, peak: float, cap: int) -> None:
        """Warn (once per block) that a free phase ended far from (or did not reach) its fixed point."""
        if getattr(self, "_warned_unconverged", False):
            return
        self._warned_unconverged = True
        warnings.warn(
            f"analog block {self.name!r}: the free phase ends {residual:.3g} away from a fixed point (last step's "
            f"max|Δs|, max|s| {peak:.3g}, {free_rule_text(self.solver, cap)}): its output is a transient and "
            "EP/ID gradients are estimated off equilibrium. Compile with constrain=True (the default) or a lower "
            "feedback_gain, raise the step cap (max_steps) or t1, or set a solver tolerance.",
            UnconvergedWarning,
            stacklevel=2,
        )

    def free_phase(self, inputs: Sequence[torch.Tensor]) -> States:
        """The free phase from the zero state, under the solver's stopping rule (`free_schedule`: by default
        to the fixed point, capped from the block's feedback-gain bound)."""
        states = self.initial_states(inputs)
        neurons = sum(s[0].numel() for s in states) if states and states[0].shape[0] else 1
        steps, rel_tol = free_schedule(self.solver, self.feedback_bound(), neurons)
        return self.relax(inputs, states, steps, "free", rel_tol=rel_tol)

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        from hybridc.energy.estimators import run_block

        spec = self.analog
        device_type = inputs[0].device.type
        if torch.is_autocast_enabled(device_type):
            # mixed precision is for the digital blocks: an analog block relaxes in its parameters' dtype
            # (EP's finite differences of nudged states need more than bf16's 8 bits of mantissa)
            dtype = next((p.dtype for p in self.parameters()), torch.float32)
            with torch.autocast(device_type, enabled=False):
                return self.forward(*(x.to(dtype) if x.is_floating_point() else x for x in inputs))
        if spec.dac_bits:
            inputs = tuple(quantize_ste(x, spec.dac_bits, spec.io_range) for x in inputs)
        outputs = run_block(self, inputs)
        if spec.adc_bits:
            outputs = tuple(quantize_ste(y, spec.adc_bits, spec.io_range) for y in outputs)
        return outputs

    # ---- what block kinds differ in ---------------------------------------------------------------------
    # The compiler's other stages (the feedback guard, the cost model, the exporter, the compiled model's
    # construction) ask a block these questions instead of testing its class. The answers here are those of
    # a kind that provides none of it; a kind overrides what it has (DHNBlock, DRNBlock).

    #: whether the block's weights are physical conductances (≥ 0; device effects keep them there,
    #: `hybridc.analog.nonideal`) rather than signed values
    non_negative_weights: bool = False

    @classmethod
    def from_plan(
        cls,
        block: Block,
        synapses: fx.GraphModule,
        n_inputs: int,
        output_names: list[str],
        solver: SolverConfig,
        gradient: GradientConfig,
    ) -> EnergyBlock:
        """The block of this kind for the plan's analog block `block`, over its lowered synapse graph
        (`n_inputs` block inputs first, then one state per neuron) with outputs `output_names` (neurons):
        what `hybridc.runtime.ffebm.FFEBM` builds, each kind reading the plan fields it needs."""
        raise NotImplementedError(f"{cls.__name__} cannot be built from a plan block")

    @property
    def needs_feedback_guard(self) -> bool:
        """Whether the relaxation's convergence rests on a bound on the feedback gain ρ that the guard
        (`hybridc.energy.contraction.constrain_model`) enforces by rescaling `feedback_layers` and that
        `feedback_norms` measures. False for a kind whose relaxation converges by construction (a DRN:
        exact coordinate descent on a convex energy, kept convex by `constrain_`'s projection)."""
        return False

    def feedback_layers(self) -> list[tuple[str, torch.Tensor]]:
        """The weights through which neuron states feed back into the pre-activations, with their names: what
        the feedback guard rescales and what no other block may share with the downstream compensation
        (`hybridc.energy.compensation`). Empty for a kind without a guarded feedback path."""
        return []

    @property
    def synapse_graph(self) -> fx.GraphModule | None:
        """The fx graph (inputs..., states...) -> one pre-activation per neuron layer, through which a value
        the block reads reaches its neurons by ordinary ops: what analyses that follow a value through the
        block walk (the guard's downstream compensation). None for a kind whose relaxation is not expressed
        over such a graph (a DRN: closed-form updates over conductances)."""
        return None

    def export_unsupported_reason(self) -> str | None:
        """Why `hybridc export` cannot write this block (a sentence, shown after the block's name and kind),
        or None if it can. The export format is a step ONNX file of the autograd-free fixed-point map over
        the synapse graph, the weights and the energy specification: a DHN's."""
        return "export handles digital blocks and DHN analog blocks (eb_kind dhn)"

    def crossbar_layout(
        self,
        in_refs: list[tuple[list[int], str | None]],
        needs_grad: list[bool],
        weight_layers: list[str],
        tile: tuple[int, int],
        consts: EnergyConstants,
    ) -> AnalogLayout:
        """The block's weight layers on ROWSxCOLS crossbar `tile`s and the pass sizes a relaxation step
        costs (`hybridc.cost.analog`), for the cost report: `in_refs` are the inputs' (shape with batch,
        dtype), `needs_grad` whether each needs a gradient, `weight_layers` the plan's weight-layer names.
        A kind says which of the cost model's layouts describes it."""
        raise NotImplementedError(f"{type(self).__name__}: no crossbar layout for the cost model")
