"""Equilibrium by construction: bound every analog block's feedback gain so that its relaxation converges
from any start, at compile time and after every optimizer step (one mechanism, `constrain_`, for every kind).

Why. EP's gradient is the gradient of the loss at a fixed point. A block compiled from arbitrary weights (a
Kaiming-initialised ResNet, a trained MLP with large weights) need not have one the relaxation reaches:
measured on a timm-style ResNet-18 at its default T1, blocks end 0.2-4.5 away from a fixed point, and
`gradient="id"` then returns NaN. The network's function becomes its T1-step transient instead of an
equilibrium.

The sufficient condition (DHN blocks). Let the block's synapses be linear in the states (Linear, Conv,
affine norms, adds, identity skips; pooling absorbed into the synapses is not linear: see below). Then
u(s) = M s + c(x) and Φ(s) = ⟨s, u(s)⟩ = ½ sᵀA s + ⟨s, c⟩ with A = M + Mᵀ the symmetric coupling of the
neuron layers: blocks W_ij and W_ijᵀ, identity skips inside the block included. The sync fixed-point map is
F(s) = σ(A s + c), σ monotone with slopes in [0, a_i] on layer i (`slope_bound`). By the mean-value theorem
F(s) − F(s') = Λ A (s − s') with Λ diagonal, entries in [0, a_i]. In coordinates z = D_a^{-1/2} s
(D_a = diag(a_i)):

    z_F − z'_F = (D_a^{-1/2} Λ D_a^{-1/2}) (D_a^{1/2} A D_a^{1/2}) (z − z'),   ‖D_a^{-1/2} Λ D_a^{-1/2}‖ ≤ 1,

so F is Lipschitz in that weighted norm with constant ρ := ‖D_a^{1/2} A D_a^{1/2}‖₂. ρ < 1 makes the sync map
a contraction: a unique fixed point, reached from any start at rate ρ per step.

Async (even/odd) schedule. σ_j = ∇G_j* with G_j − ‖s_j‖²/(2a_j) convex (for the hard sigmoid
G_j = ‖s_j‖²/(2a_j) on [0, 1]), so E(s) = Σ G_j(s_j) − ½ sᵀA s − ⟨s, c⟩ has Hessian ⪰ D_a^{-1} − A, and
ρ < 1 gives D_a^{-1} ∓ A ≻ 0. The first makes E strongly convex (its unique minimiser is F's fixed point).
Updating any subset P of layers by s_P ← σ_P((A s + c)_P) (one parity of the even/odd sweep; P may even hold
coupled layers, e.g. a skip between depths 0 and 2) minimises G_P(s_P) − ⟨(A s_old + c)_P, s_P⟩, which is
D_a^{-1}-strongly convex; with δ = s_new − s_old this gives E(s_new) ≤ E(s_old) − ½ δᵀ(D_a^{-1} + A_PP) δ
≤ E(s_old) − ½(1 − ρ) ‖δ‖²_{D_a^{-1}}: sufficient decrease of a strongly convex energy, so the async
iterates converge to the same fixed point.

Measuring ρ, kind-agnostically and without host syncs: power iteration on the symmetric operator
v ↦ D_a^{1/2} A D_a^{1/2} v, where A v is the block's own ∂Φ/∂s at states v minus ∂Φ/∂s at states 0, both with
the inputs held at zero (inputs and biases cancel). It uses the block's `phi_grad` (fast transposed path or
autograd), from a fixed start (deterministic, nothing to checkpoint, identical on every DDP process), so the
estimate is a lower bound that tightens with the iterations; the gain is chosen with room below 1 for that.

Bounding ρ. The weights that read neuron states (the block's core Linear/Conv layers; layers that read only
the block's inputs cannot feed back) are all multiplied by one factor t ∈ (0, 1]. Where every state-to-
pre-activation path holds one such layer, A(t) = t·A_W + A_I, with A_I the identity skips inside the block
(e.g. a ResNet residual add whose source is a neuron of the same block), which cannot be rescaled. ρ(t) is
convex with ρ(0) = ρ_I := ‖D_a^{1/2} A_I D_a^{1/2}‖, so the secant t = (gain − ρ_I)/(ρ(1) − ρ_I) guarantees
ρ(t) ≤ gain. ρ_I is measured once at compile time (weights set to zero, restored exactly). If ρ_I ≥ gain
the gain cannot be reached by rescaling: the target becomes (1 + ρ_I)/2 when ρ_I < 1 (still a contraction)
and the block is left unconstrained when ρ_I ≥ 1 (e.g. kept ReLU neurons, slope 1, on both ends of a skip);
both are recorded in the plan's decisions and warned about (lower the hard-sigmoid slope, or a smaller
`max_block_size` so residual adds cross block boundaries).

Limits, stated: pooling absorbed into the synapses (`pool=absorb`) makes u piecewise linear in s; ρ is then
the coupling at the zero state's routing, a heuristic. Device effects that are not linear in the weight
(quantisation, clipping) are measured through, rescaled through their ideal weights.

DRN blocks: their relaxation is exact block coordinate descent on a convex energy as long as every
conductance is ≥ 0, so their `constrain_` is that projection.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize
from torch.optim.optimizer import register_optimizer_step_post_hook

from hybridc.plan import ActivationSpec

#: Default bound on a DHN block's feedback gain ρ, chosen by measurement: the free phase must reach a fixed
#: point in the default T1 = 20 steps (a contraction's residual after T1 steps is ≤ ρ^T1 of its first: 0.8^20 = 0.012,
#: 0.9^20 = 0.12).
#: At 0.8 the timm-style ResNet-18's blocks end at max|Δs| ≤ 2e-5 (at 0.9: 6e-4); on Fashion-MNIST the conv
#: ff-EBM at 0.9 still trains 0.04 from its fixed point at T1 = 20 (benchmarks/equilibrium_guard.py).
DEFAULT_FEEDBACK_GAIN = 0.8
#: Power-iteration steps and start vectors of the per-optimizer-step measurement. Power iteration from a
#: fixed start underestimates ρ by its unconverged part (≈1-3 % after 25 steps on the conv and ResNet blocks
#: measured: the gain leaves room below 1 for it); 25 steps at batch 2 cost ≈ 5 % of an EP training step of
#: the Fashion-MNIST conv ff-EBM at batch 128 and ≈ 17 % of the (cheap, overhead-bound) 784-256-256-10 MLP's (CPU).
STEP_ITERS, STEP_STARTS = 25, 2
#: ... and of the one-off compile-time calibration (host syncs allowed there).
COMPILE_ITERS, COMPILE_STARTS = 100, 4

_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)

# Largest slope of each neuron activation (a Lipschitz constant of σ); None = read from params.
_SLOPES: dict[str, float] = {
    "identity": 1.0, "relu": 1.0, "relu6": 1.0, "elu": 1.0, "celu": 1.0, "sigmoid": 0.25, "tanh": 1.0,
    "hardtanh": 1.0, "torch_hardsigmoid": 1.0 / 6.0, "softplus": 1.0, "softsign": 1.0, "logsigmoid": 1.0,
    "tanhshrink": 1.0, "selu": 1.0507009873554805 * 1.6732632423543772,
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
    ∂Φ/∂s (see the module docstring), and its norm ρ by power iteration.

    Probe layout: k independent samples (rows) of the block's per-sample input and state shapes. A block that
    runs only at its example's batch (`settle`) is probed at exactly the example's shapes instead, its states
    laid out as the block lays them out (`initial_states`: e.g. [B·T, H] token rows), as one vector: B is then
    block-diagonal over whatever the samples are, and its norm is still the largest sample's."""

    def __init__(self, block: nn.Module, input_shapes: Sequence[Sequence[int]], example_batch: int | None = None
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
            self._starts[key] = [(v / norm.reshape(-1, *[1] * (v.dim() - 1))).to(ref.device, ref.dtype)
                                 for v in vs]
        return self._starts[key]

    def _probe(self, k: int) -> tuple[Sequence[torch.Tensor], list[torch.Tensor]]:
        """The prepared zero inputs of a probe and ∂Φ/∂s at states 0 (computed once per measurement)."""
        _, zeros_in, shapes = self._layout(k)
        prepared = self.block.prepare(zeros_in)
        zero_states = [zeros_in[0].new_zeros(s) for s in shapes]
        return prepared, self.block.phi_grad(prepared, zero_states)

    def apply(self, v: list[torch.Tensor], probe: tuple[Sequence[torch.Tensor], list[torch.Tensor]] | None = None
              ) -> list[torch.Tensor]:
        """B v for a batch of state vectors v (one per row)."""
        prepared, off = probe if probe is not None else self._probe(v[0].shape[0])
        on = self.block.phi_grad(prepared, [vi * a for vi, a in zip(v, self.sqrt_a)])
        return [(g1 - g0) * a for g1, g0, a in zip(on, off, self.sqrt_a)]

    @torch.no_grad()
    def norm(self, iters: int, k: int) -> torch.Tensor:
        """ρ = ‖B‖₂ estimated from below by `iters` power-iteration steps from k fixed starts (0-d device
        tensor: no host sync); one start at the example's shapes for a block that runs only there."""
        if self.batch is not None:
            k = 1
        rows = self._layout(k)[0]
        with parametrize.cached():
            u = self.starts(k)
            probe = self._probe(k)
            rho = u[0].new_zeros(())
            for _ in range(iters):
                bu = self.apply(u, probe)
                norms = torch.sqrt(sum(b.reshape(rows, -1).pow(2).sum(1) for b in bu))
                rho = norms.amax()
                inv = 1.0 / norms.clamp_min(1e-30)
                u = [b * inv.reshape(-1, *[1] * (b.dim() - 1)) for b in bu]
        return rho


class DHNConstraint:
    """Keeps one DHN block's feedback gain ρ ≤ target by rescaling its state-reading weights (see module doc).

    `calibrate` runs once, at compile time (host syncs allowed): it measures the identity-skip part ρ_I, picks
    the target, rescales and returns what it did. `apply_` runs after every optimizer step: device ops only.
    """

    def __init__(self, block: nn.Module, input_shapes: Sequence[Sequence[int]], gain: float,
                 example_batch: int | None = None) -> None:
        if not gain > 0:
            raise ValueError(f"feedback gain must be positive, got {gain}")
        self.gain = float(gain)
        self.coupling = Coupling(block, input_shapes, example_batch)
        self.layers = feedback_layers(block)
        self.rho_skip = 0.0
        self.target: float | None = self.gain

    def _weights(self) -> list[torch.Tensor]:
        return [w for _, w in self.layers]

    @torch.no_grad()
    def _skip_norm(self) -> torch.Tensor:
        """ρ_I: the coupling left with every state-reading weight at zero (restored bit for bit)."""
        saved = [w.detach().clone() for w in self._weights()]
        try:
            for w in self._weights():
                w.zero_()
            return self.coupling.norm(COMPILE_ITERS // 2, COMPILE_STARTS)
        finally:
            for w, s in zip(self._weights(), saved):
                w.copy_(s)

    @staticmethod
    def _factor(rho: torch.Tensor, target: float | torch.Tensor, rho_skip: float | torch.Tensor) -> torch.Tensor:
        """The secant factor t with ρ(t) ≤ target (1 where ρ is already within it; target ∞ = unconstrained)."""
        t = (target - rho_skip) / (rho - rho_skip).clamp_min(1e-30)
        return torch.where(rho > target, t.clamp(0.0, 1.0), torch.ones_like(rho))

    @torch.no_grad()
    def _scale_(self, rho: torch.Tensor, target: float | torch.Tensor, rho_skip: float | torch.Tensor
                ) -> torch.Tensor:
        t = self._factor(rho, target, rho_skip)
        for w in self._weights():
            w.mul_(t.to(w.dtype))
        return t

    @torch.no_grad()
    def apply_(self, iters: int = STEP_ITERS, starts: int = STEP_STARTS) -> torch.Tensor:
        """Measure ρ and rescale the state-reading weights if it exceeds the target; returns the factor.
        Device ops only (no host sync)."""
        if self.target is None or not self.layers:
            return torch.ones(())
        return self._scale_(self.coupling.norm(iters, starts), self.target, self.rho_skip)

    @torch.no_grad()
    def calibrate(self, rounds: int = 2) -> dict[str, Any]:
        """Compile-time: measure ρ_I and ρ, set the target, rescale (the secant, `rounds` times: once is exact
        where ρ(t) is affine-convex; the second absorbs power-iteration slack) - all on the device, read to
        the host once. Returns a record: rho_before, rho_after, rho_skip, target, factor, layers (names)."""
        rec: dict[str, Any] = {"layers": [n for n, _ in self.layers], "gain": self.gain}
        self.coupling.settle()
        rho0 = self.coupling.norm(COMPILE_ITERS, COMPILE_STARTS)
        if not self.layers:
            self.target = None
            value = float(rho0)
            rec.update(rho_before=value, rho_after=value, rho_skip=None, target=None, factor=1.0)
            return rec
        rs = self._skip_norm()
        gain = torch.full_like(rs, self.gain)
        target = torch.where(rs < 0.95 * self.gain, gain,
                             torch.where(rs < 1.0, torch.maximum(gain, 0.5 * (1.0 + rs)), torch.full_like(rs, math.inf)))
        factor, rho = torch.ones_like(rs), rho0
        for _ in range(rounds):
            factor = factor * self._scale_(rho, target * (1 - 1e-4), rs)
            rho = self.coupling.norm(COMPILE_ITERS, COMPILE_STARTS)
        rho_skip, tgt, before, after, fac = torch.stack([rs, target, rho0, rho, factor]).tolist()
        self.rho_skip = rho_skip
        self.target = None if math.isinf(tgt) else tgt
        rec.update(rho_before=before, rho_after=after, rho_skip=rho_skip, target=self.target, factor=fac)
        return rec


# ---- the one post-step mechanism for every compiled model ------------------------------------------------
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


# ---- compile time ------------------------------------------------------------------------------------------
_RECORDED = ("rescaled", "unconstrained")


def _shapes(model: nn.Module) -> dict[str, list[int] | None]:
    """Example shape of every value crossing a block boundary, by node name (from the plan)."""
    plan = model.plan
    out: dict[str, list[int] | None] = {r.node: r.shape for r in plan.graph_inputs}
    for b in plan.blocks:
        out.update({r.node: r.shape for r in [*b.inputs, *b.outputs]})
    return out


def _why_unbounded(rec: dict[str, Any]) -> str:
    if not rec["layers"]:
        return "no weight op of the block reads its neuron states, so there is nothing to rescale"
    return (f"identity skips inside the block alone give ρ_I={rec['rho_skip']:.3g} ≥ 1; lower hardsigmoid_slope "
            "or max_block_size (so residual adds cross block boundaries)")


def _decisions(block: str, rec: dict[str, Any]) -> list[Any]:
    """The plan decisions recording what calibration did to one block (none when nothing changed)."""
    from hybridc.plan import Decision

    if rec["target"] is None:
        if rec["rho_before"] <= rec["gain"]:
            return []
        return [Decision(node=layer, action="unconstrained", block=block, reason=(
            f"feedback gain ρ={rec['rho_before']:.3g} > {rec['gain']:g} cannot be bounded by rescaling weights: "
            f"{_why_unbounded(rec)}; the free phase may not reach a fixed point"))
            for layer in rec["layers"] or [block]]
    if rec["factor"] >= 1.0:
        return []
    note = "" if math.isclose(rec["target"], rec["gain"], rel_tol=1e-6) else (
        f" (the gain {rec['gain']:g} is out of reach: identity skips give ρ_I={rec['rho_skip']:.3g}; target "
        f"{rec['target']:.3g})")
    return [Decision(node=layer, action="rescaled", block=block, reason=(
        f"weight ×{rec['factor']:.4g}: feedback gain ρ={rec['rho_before']:.3g} → {rec['rho_after']:.3g} ≤ "
        f"{rec['target']:.3g}{note}, so the free phase is a contraction; the compiled forward differs from the "
        "original model's (init=keep keeps the weights up to this factor)")) for layer in rec["layers"]]


def constrain_model(model: nn.Module, gain: float | None) -> list[dict[str, Any]]:
    """Compile-time half of equilibrium by construction: give every multi-layer DHN block of `model` (an
    FFEBM) a `DHNConstraint` with bound `gain`, calibrate it (rescaling weights where ρ > gain), record every
    rescaling in a copy of `model.plan`'s decisions (replacing those of an earlier compile of the same plan),
    warn about blocks that cannot be bounded, and register `model` for the post-optimizer-step hook.
    Single-layer blocks have no feedback and are untouched (their compiled forward stays exact). `gain` None
    or 0: DHN blocks stay unconstrained (DRN blocks keep their conductance projection). Returns one record
    per calibrated block (see `DHNConstraint.calibrate`)."""
    import warnings

    from hybridc.targets.dhn import DHNBlock

    plan = model.plan.model_copy(deep=True)
    plan.decisions = [d for d in plan.decisions if d.action not in _RECORDED]
    shapes = _shapes(model)
    records: list[dict[str, Any]] = []
    for name, blk in model.analog_blocks.items():
        if not gain or not isinstance(blk, DHNBlock) or len(blk.neuron_names) < 2:
            continue
        in_shapes = [shapes.get(n) for n in model._io[name][0]]
        if any(s is None for s in in_shapes):
            from hybridc.errors import PlanMismatchError

            raise PlanMismatchError(f"analog block {name}: the plan records no shape for one of its inputs, so its "
                                    "feedback gain cannot be measured; re-create the plan with `hybridc partition`")
        blk.constraint = DHNConstraint(blk, [s[1:] for s in in_shapes], gain, example_batch=in_shapes[0][0])
        rec = blk.constraint.calibrate() | {"block": name}
        records.append(rec)
        decisions = _decisions(name, rec)
        plan.decisions.extend(decisions)
        if decisions and decisions[0].action == "unconstrained":
            warnings.warn(f"analog block {name!r}: its feedback gain ρ={rec['rho_before']:.3g} cannot be bounded "
                          f"by rescaling weights ({_why_unbounded(rec)}): its free phase may not reach a fixed "
                          "point.", stacklevel=3)
    model.plan = plan
    model.feedback_gain = gain or None
    register(model)
    return records


def feedback_norms(model: nn.Module, iters: int = COMPILE_ITERS, starts: int = COMPILE_STARTS
                   ) -> dict[str, float]:
    """ρ = ‖D_a^{1/2} A D_a^{1/2}‖ of every multi-layer DHN block of an FFEBM, constrained or not (reads the
    values to the host: for diagnostics and tests, not the training loop)."""
    from hybridc.targets.dhn import DHNBlock

    shapes = _shapes(model)
    out: dict[str, float] = {}
    for name, blk in model.analog_blocks.items():
        if isinstance(blk, DHNBlock) and len(blk.neuron_names) >= 2:
            if blk.constraint is not None:
                coupling = blk.constraint.coupling
            else:
                in_shapes = [shapes[n] for n in model._io[name][0]]
                coupling = Coupling(blk, [s[1:] for s in in_shapes], example_batch=in_shapes[0][0])
                coupling.settle()
            out[name] = float(coupling.norm(iters, starts))
    return out
