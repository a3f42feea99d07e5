"""A DHN block's coupling operator and its norm ρ: the measurement half of the feedback guard.

B = D_a^{1/2} A D_a^{1/2}, A the symmetric coupling of the block's neuron layers and D_a their activations'
slope bounds, is applied through the block's own ∂Φ/∂s (fast transposed path or autograd), and ρ = ‖B‖₂ is
estimated by power iteration (device ops only): from fixed starts (`norm`: compile time, diagnostics, the
guard's periodic cold estimate) or from given vectors (`power`: the guard's per-step warm start from the
previous step's vectors). Why ρ < 1 makes the relaxation converge, and how the guard uses it:
`hybridc.energy.contraction`'s docstring; the warm start: `hybridc.energy.feedback_guard.DHNConstraint`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from hybridc.plan import ActivationSpec

#: Power-iteration steps and start vectors of the per-optimizer-step measurement. Power iteration from a
#: fixed start underestimates ρ by its unconverged part (≈1-3 % after 25 steps on the conv and ResNet blocks
#: measured: the gain leaves room below 1 for it); 25 steps at batch 2 cost ≈ 5 % of an EP training step of
#: the Fashion-MNIST conv ff-EBM at batch 128 and ≈ 17 % of the (cheap, overhead-bound) 784-256-256-10 MLP's (CPU).
STEP_ITERS, STEP_STARTS = 25, 2
#: ... and of the one-off compile-time calibration (host syncs allowed there).
COMPILE_ITERS, COMPILE_STARTS = 100, 4
#: Power-iteration steps of the per-optimizer-step measurement when it continues from the previous step's
#: vectors (the default, `DHNConstraint.warm_start`): an optimizer step moves the weights little, so the
#: previous vectors are already close to B's top singular vectors and a few steps keep them there, at
#: (1 + 3)/(1 + 25) of the cold measurement's cost (one ∂Φ/∂s at the zero state, then one per step).
#: Measured over 50 Adam steps (lr 5e-5, random data) against a 200-step, 4-start reference, vgg-paper width
#: 0.25: the warm estimate's median is within 0.13 % of it (one block's even exceeds that reference, itself
#: short of ρ, by up to 0.6 %), 25 cold steps' 0.8-1.1 % below it; at no step is it less tight than those.
WARM_ITERS = 3
#: Measurements that also run the cold one (STEP_ITERS from the fixed starts) and keep the larger estimate and
#: its vectors: the first COLD_FIRST after a reset (the first steps of a run move the weights most: Adam's
#: bias-corrected first steps are ≈ lr on every weight; measured on the MLP at lr 1e-3, ρ rises 7-16 % a
#: step there and 3 warm iterations lag up to 2 %), and every COLD_EVERY-th: the warm rows can only track
#: directions they hold, the fixed starts hold every direction, so a direction whose gain overtakes the
#: tracked ones is caught within COLD_EVERY steps at worst.
COLD_FIRST, COLD_EVERY = 10, 100

_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)

# Largest slope of each neuron activation (a Lipschitz constant of σ); None = read from params.
_SLOPES: dict[str, float] = {
    "identity": 1.0,
    "relu": 1.0,
    "relu6": 1.0,
    "elu": 1.0,
    "celu": 1.0,
    "sigmoid": 0.25,
    "tanh": 1.0,
    "hardtanh": 1.0,
    "torch_hardsigmoid": 1.0 / 6.0,
    "softplus": 1.0,
    "softsign": 1.0,
    "logsigmoid": 1.0,
    "tanhshrink": 1.0,
    "selu": 1.0507009873554805 * 1.6732632423543772,
}


def slope_bound(spec: ActivationSpec) -> float:
    """The largest slope a_i of a neuron activation σ (σ' ∈ [0, a_i] everywhere)."""
    if spec.kind == "hardsigmoid":
        return float(spec.params.get("slope", 1.0))
    if spec.kind == "leaky_relu":
        return max(1.0, abs(float(spec.params.get("negative_slope", 0.01))))
    if spec.kind == "elu":  # α·eˣ below 0
        return max(1.0, float(spec.params.get("alpha", 1.0)))
    return _SLOPES.get(spec.kind, 1.0)


def _trainable(owner: nn.Module, attr: str) -> torch.Tensor:
    """`owner.attr` as the tensor training updates (the original under a device-effect parametrization)."""
    if parametrize.is_parametrized(owner, attr):
        return owner.parametrizations[attr].original
    return getattr(owner, attr)


def feedback_layers(block: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """The weights of a DHN block that read neuron states, with their names: those of the weight ops (Linear,
    Conv, matmul, addmm: modules or functional ops on parameters) of its core synapse graph. Weights of
    layers that read only the block's inputs are in the prefix: they cannot feed back."""
    from hybridc.passes.ops import WEIGHT_OPS, op_key

    split = getattr(block, "_split", None)
    if split is None:
        return []
    core = split[1]
    out: list[tuple[str, torch.Tensor]] = []

    def add(name: str, w: torch.Tensor) -> None:
        if all(w is not t for _, t in out):
            out.append((name, w))

    for node in core.graph.nodes:
        if node.op == "call_module" and isinstance(core.get_submodule(str(node.target)), _LAYERS):
            add(str(node.target), _trainable(core.get_submodule(str(node.target)), "weight"))
        elif node.op == "call_function" and op_key(node, core) in WEIGHT_OPS:
            for arg in node.all_input_nodes:
                if arg.op != "get_attr":
                    continue
                owner_name, _, attr = str(arg.target).rpartition(".")
                w = _trainable(core.get_submodule(owner_name) if owner_name else core, attr)
                if isinstance(w, torch.Tensor) and w.dim() >= 2:
                    add(str(arg.target).removesuffix(".weight"), w)
    return out


def _weight(mod: nn.Module) -> torch.Tensor:
    """The trainable weight tensor (the ideal one under device-effect parametrizations)."""
    if parametrize.is_parametrized(mod, "weight"):
        return mod.parametrizations.weight.original
    return mod.weight


def _operator(mod: nn.Module, w: torch.Tensor):  # noqa: ANN202
    if isinstance(mod, nn.Linear):
        return lambda u: F.linear(u, w)
    return lambda u: mod._conv_forward(u, w, None)


@torch.no_grad()
def spectral_norm(mod: nn.Module, in_shape: tuple[int, ...], iters: int = 30) -> torch.Tensor:
    """σ_max of one layer's linear map (no bias) on inputs of per-sample shape `in_shape`, by power iteration
    from a fixed start (a 0-d device tensor, no host sync). Used for the block-Gershgorin upper bound."""
    w = _weight(mod).detach()
    op = _operator(mod, w)
    gen = torch.Generator(device="cpu").manual_seed(0)
    u = torch.randn((1, *in_shape), generator=gen, dtype=torch.float64).to(dtype=w.dtype, device=w.device)
    u = u / u.norm()
    sigma = u.new_zeros(())
    for _ in range(iters):
        with torch.enable_grad():
            x = u.detach().requires_grad_(True)
            y = op(x)
            sigma = y.norm()
            (v,) = torch.autograd.grad(y, x, y / sigma.clamp_min(1e-30))  # Aᵀ (A u / ‖A u‖)
        u = v / v.norm().clamp_min(1e-30)
    return sigma.detach()


class Coupling:
    """The symmetric operator B = D_a^{1/2} A D_a^{1/2} of a DHN block, applied through the block's own
    ∂Φ/∂s (see `hybridc.energy.contraction`'s docstring), and its norm ρ by power iteration.

    Probe layout: k independent samples (rows) of the block's per-sample input and state shapes. A block that
    runs only at its example's batch (`settle`) is probed at exactly the example's shapes instead, its states
    laid out as the block lays them out (`initial_states`: e.g. [B·T, H] token rows), as one vector: B is then
    block-diagonal over whatever the samples are, and its norm is still the largest sample's."""

    def __init__(
        self, block: nn.Module, input_shapes: Sequence[Sequence[int]], example_batch: int | None = None
    ) -> None:
        self.block = block
        self.input_shapes = [tuple(s) for s in input_shapes]
        self.sqrt_a = [math.sqrt(slope_bound(spec)) for spec in block.activation_specs]
        self._starts: dict[tuple[Any, ...], list[torch.Tensor]] = {}
        #: the batch of the example the model was traced with, and the probe batch when the block runs only
        #: at that batch (a forward that hard-codes its batch in a view: `settle` finds out); None = any batch
        self.example_batch = example_batch
        self.batch: int | None = None

    def settle(self) -> None:
        """Compile time: find out whether the block runs at the probe batches; if one fails with a shape error,
        probe at the example's own shapes from now on (a trace can specialise a view to its batch: torch.export
        does so for a batch of 1, and a forward may write `x.view(4, 8, -1)`)."""
        if self.example_batch is None:
            return
        try:
            for k in sorted({STEP_STARTS, COMPILE_STARTS}):
                self.norm(1, k)
        except RuntimeError:
            self.batch = self.example_batch
            self._starts.clear()
            self.norm(1, 1)  # a failure at the example's own shapes is a genuine error: it propagates

    def _ref(self) -> torch.Tensor:
        return next(p for p in self.block.parameters())

    def _layout(self, k: int) -> tuple[int, list[torch.Tensor], list[tuple[int, ...]]]:
        """(rows, zero inputs, state shapes) of a probe with k starts."""
        ref = self._ref()
        batch = self.batch or k
        zeros_in = [torch.zeros((batch, *s), dtype=ref.dtype, device=ref.device) for s in self.input_shapes]
        if self.batch is None:
            return k, zeros_in, [(k, *s) for s in self.block.neuron_shapes]
        return 1, zeros_in, [tuple(t.shape) for t in self.block.initial_states(zeros_in)]

    def starts(self, k: int) -> list[torch.Tensor]:
        """k fixed, unit-norm start vectors (per row over all states), cached per device and dtype."""
        ref = self._ref()
        key = (k, ref.device, ref.dtype)
        if key not in self._starts:
            rows, _, shapes = self._layout(k)
            gen = torch.Generator(device="cpu").manual_seed(0)
            vs = [torch.randn(shape, generator=gen, dtype=torch.float64) for shape in shapes]
            norm = torch.sqrt(sum(v.reshape(rows, -1).pow(2).sum(1) for v in vs))
            self._starts[key] = [
                (v / norm.reshape(-1, *[1] * (v.dim() - 1))).to(ref.device, ref.dtype) for v in vs
            ]
        return self._starts[key]

    def _probe(self, k: int) -> tuple[Sequence[torch.Tensor], list[torch.Tensor]]:
        """The prepared zero inputs of a probe and ∂Φ/∂s at states 0 (computed once per measurement)."""
        _, zeros_in, shapes = self._layout(k)
        with self.block.norm_stats_frozen():  # zero inputs must not reach an entry norm's running statistics
            prepared = self.block.prepare(zeros_in)
        zero_states = [zeros_in[0].new_zeros(s) for s in shapes]
        return prepared, self.block.phi_grad(prepared, zero_states)

    def apply(
        self, v: list[torch.Tensor], probe: tuple[Sequence[torch.Tensor], list[torch.Tensor]] | None = None
    ) -> list[torch.Tensor]:
        """B v for a batch of state vectors v (one per row)."""
        prepared, off = probe if probe is not None else self._probe(v[0].shape[0])
        on = self.block.phi_grad(prepared, [vi * a for vi, a in zip(v, self.sqrt_a)])
        return [(g1 - g0) * a for g1, g0, a in zip(on, off, self.sqrt_a)]

    def rows(self, k: int) -> int:
        """How many independent vectors (rows) a probe with k starts holds: k, or 1 at the example's shapes."""
        return 1 if self.batch is not None else k

    def _iterate(
        self,
        u: list[torch.Tensor],
        iters: int,
        probe: tuple[Sequence[torch.Tensor], list[torch.Tensor]],
        rows: int,
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """`iters` power-iteration steps from the unit rows u: (max_row ‖B u_row‖ of the last step, the
        normalised B u). Each ‖B u‖ with ‖u‖ = 1 is ≤ ‖B‖₂, so the estimate is a lower bound from any start."""
        rho = u[0].new_zeros(())
        for _ in range(iters):
            bu = self.apply(u, probe)
            norms = torch.sqrt(sum(b.reshape(rows, -1).pow(2).sum(1) for b in bu))
            rho = norms.amax()
            inv = 1.0 / norms.clamp_min(1e-30)
            u = [b * inv.reshape(-1, *[1] * (b.dim() - 1)) for b in bu]
        return rho, u

    @torch.no_grad()
    def norm(self, iters: int, k: int) -> torch.Tensor:
        """ρ = ‖B‖₂ estimated from below by `iters` power-iteration steps from k fixed starts (0-d device
        tensor: no host sync); one start at the example's shapes for a block that runs only there."""
        return self.norm_and_vectors(iters, k)[0]

    @torch.no_grad()
    def norm_and_vectors(self, iters: int, k: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """`norm(iters, k)` and the vectors its last step reached (unit rows: a warm start for `power`)."""
        k = self.rows(k)
        with parametrize.cached():
            return self._iterate(self.starts(k), iters, self._probe(k), k)

    @torch.no_grad()
    def power(self, u: Sequence[torch.Tensor], iters: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """ρ estimated from below by `iters` power-iteration steps from the given vectors (e.g. an earlier
        measurement's, laid out as `starts`), made orthonormal across rows first (Gram-Schmidt: so a second row
        tracks the next singular direction instead of collapsing onto the first, and is there when that
        direction's gain overtakes). Returns (ρ, the vectors reached). Device ops only."""
        rows = u[0].shape[0] if self.batch is None else 1
        with parametrize.cached():
            return self._iterate(_orthonormal_rows(list(u), rows), iters, self._probe(rows), rows)


def _orthonormal_rows(vs: list[torch.Tensor], rows: int) -> list[torch.Tensor]:
    """The rows of the state vectors vs (row i = the i-th slice of every state, concatenated) made orthonormal
    by modified Gram-Schmidt, in order; a row that is (numerically) in the span of the earlier ones comes out
    ≈ 0 and then only contributes ‖B·0‖ = 0 to the estimate. Device ops only."""
    flat = torch.cat([v.reshape(rows, -1) for v in vs], dim=1)
    out: list[torch.Tensor] = []
    for i in range(rows):
        x = flat[i]
        for q in out:
            x = x - (q @ x) * q
        out.append(x / x.norm().clamp_min(1e-30))
    q_rows = torch.stack(out)
    parts = torch.split(q_rows, [v.numel() // rows for v in vs], dim=1)
    return [p.reshape(v.shape) for p, v in zip(parts, vs)]
