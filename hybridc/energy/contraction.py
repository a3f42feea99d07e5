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

Moving the factor downstream (the default where it is exact). Rescaling by t also shrinks the block's forward
output: its top neuron s_L = W_L s_{L-1} + b_L (linear) becomes t·W_L s_{L-1} + b_L, and the digital ReLU →
max-pool → classifier after it sees a smaller, differently biased signal after every step (measured: that, not
the bound on ρ, is what the guard cost in accuracy). Where it is exact, the guard therefore scales the top
layer's bias by t with its weight and the weight of every layer that reads the block's output by 1/t:

* in the block: the top neuron is read by no other neuron of the block, its activation is positively
  homogeneous (identity, ReLU, leaky ReLU: σ(t u) = t σ(u) for t > 0; the hard sigmoid clamp(a u, 0, 1) is not),
  and its pre-activation is t-homogeneous in the scaled parameters (every term passes through exactly one
  rescaled weight op, whose bias is scaled with it; an identity skip or an unscaled term breaks it). Then at
  any state of the lower neurons the new top state is exactly t·ŝ_L, ŝ_L = W_L s_{L-1} + b_L the value the
  unscaled layer computes. The energy's other terms see s_L only through the top layer's synapse: the
  top-down input of s_{L-1} is t·W_Lᵀ (t·ŝ_L) = t²·W_Lᵀ ŝ_L - the bias's share included (the plain rescale
  gave t²·W_LᵀW_L s + t·W_Lᵀ b_L). So the compensated block is exactly the original one with its top-down
  feedback (weight and bias parts) multiplied by t²: ρ, a property of the weights alone, is the plain
  rescale's (the same t bounds it), and what leaves the block is t·ŝ_L;
* downstream, up to every weight op that reads the block's output, only positively homogeneous ops (ReLU,
  leaky ReLU, PReLU, max/avg pooling, flatten/view/permute, dropout, identity, zero padding, multiplication by
  values that do not carry the factor, adds and concatenations whose every operand carries it); each such
  weight is multiplied by 1/t, so (W/t)(t·y) + b = W y + b and everything after is unchanged. A BatchNorm, a
  bounded or saturating activation (hard sigmoid, ReLU6, sigmoid, GELU, ...), an add of a bias or another
  branch, the model's output itself (it would need a digital output gain), a DRN consumer, DAC/ADC
  quantisation or read noise on the way (they do not scale) all break it: the block then falls back to the
  plain rescale, and the reason is recorded (`constraint.compensation`, the model's `guard_compensation`).

The factor t is > 0 (the secant is clamped to (0, 1] and the target always exceeds ρ_I); the consumer factor
is 1/t where t > 0. Only the top layer is compensated: rescaled weights between hidden neurons of a deeper
block (the MLP's W_2) still change the forward function (the hidden neurons' hard sigmoids do not commute with
a factor).

DRN blocks: their relaxation is exact block coordinate descent on a convex energy as long as every
conductance is ≥ 0, so their `constrain_` is that projection.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize
from torch.optim.optimizer import register_optimizer_step_post_hook

from hybridc.passes.ops import PURE_SHAPE_OPS
from hybridc.plan import ActivationSpec

#: Default bound on a DHN block's feedback gain ρ, chosen by measurement: the free phase must reach a fixed
#: point in the default T1 = 20 steps (a contraction's residual after T1 steps is ≤ ρ^T1 of its first: 0.8^20 = 0.012,
#: 0.9^20 = 0.12). Since the default free phase runs to its tolerance (`hybridc.energy.solver`), the bound also
#: sets each block's step cap (`free_step_cap`: ≈ 60-70 steps at 0.8); blocks converge well before it.
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
    ∂Φ/∂s (see the module docstring), and its norm ρ by power iteration.

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


# ---- moving the rescale downstream (see the module docstring) ---------------------------------------------
#: activations of a top neuron that commute with a positive factor: σ(t u) = t σ(u) for t > 0
_HOMOGENEOUS_NEURONS = frozenset({"identity", "relu", "leaky_relu"})
#: ops whose value carries the factor of their (single) data operand
_UNARY_HOMOGENEOUS = PURE_SHAPE_OPS | frozenset(
    {
        "adaptive_avg_pool",
        "adaptive_max_pool",
        "avg_pool",
        "contiguous",
        "dropout",
        "getitem",
        "leaky_relu",
        "max_pool",
        "mean",
        "neg",
        "pad",
        "pos",
        "prelu",
        "relu",
        "sum",
    }
)
_WHY_NOT: dict[str, str] = {
    "batch_norm": "a BatchNorm (affine with running or batch statistics: BN(t·y) ≠ t·BN(y))",
    "hardsigmoid": "a hard sigmoid clamp(a·u, 0, 1) (bounded: not positively homogeneous)",
    "relu6": "a ReLU6 (bounded: not positively homogeneous)",
    "hardtanh": "a hardtanh (bounded: not positively homogeneous)",
}


class _Broken(Exception):
    """The factor does not pass exactly (the message says where and why)."""


@dataclass
class Compensation:
    """How one DHN block's guard keeps its feedforward function: scale the top neurons' biases with their
    weights and the weights reading the block's output by 1/t (`applies`), or why it falls back to the plain
    rescale (`reason`). Holds module references (owner, attribute), resolved at every step, so a copy or an
    unpickled model compensates its own tensors."""

    outputs: list[str] = field(default_factory=list)
    #: the rescaled weights that compute those outputs (the top layers)
    layers: list[str] = field(default_factory=list)
    #: (label, owner module, attribute) of the top layers' biases, scaled by t with the weights
    biases: list[tuple[str, nn.Module, str]] = field(default_factory=list)
    #: (block, label, owner module, attribute) of every weight reading the block's output, scaled by 1/t
    consumers: list[tuple[str, str, nn.Module, str]] = field(default_factory=list)
    #: the ops the factor crosses between the block and the consumers (op names, first occurrence order)
    path: list[str] = field(default_factory=list)
    reason: str | None = None
    #: output neurons of a multi-output block left uncompensated, with why
    notes: list[str] = field(default_factory=list)

    @property
    def applies(self) -> bool:
        return self.reason is None and bool(self.consumers)

    def record(self) -> dict[str, Any]:
        """JSON-able summary: mode ("downstream" or "none"), outputs, biases, consumers (block:layer), path,
        reason (why not; None when it applies)."""
        return {
            "mode": "downstream" if self.applies else "none",
            "outputs": list(self.outputs),
            "layers": list(self.layers),
            "biases": [b[0] for b in self.biases],
            "consumers": [f"{c[0]}:{c[1]}" for c in self.consumers],
            "path": list(self.path),
            "reason": self.reason,
            "notes": list(self.notes),
        }

    @torch.no_grad()
    def apply_(self, t: torch.Tensor) -> None:
        """Biases ×t, consumer weights ×1/t (t > 0; where t = 0 the consumers are left alone)."""
        if not self.applies:
            return
        for _, owner, attr in self.biases:
            b = _trainable(owner, attr)
            b.mul_(t.to(b.dtype))
        inv = torch.where(t > 0, 1.0 / t.clamp_min(torch.finfo(t.dtype).tiny), torch.ones_like(t))
        for _, _, owner, attr in self.consumers:
            w = _trainable(owner, attr)
            w.mul_(inv.to(w.dtype))


def _param_of(node: Any, gm: fx.GraphModule) -> tuple[str, nn.Module, str] | None:
    """(label, owner, attribute) of the parameter a weight operand reads, through transposes/views."""
    from hybridc.passes.ops import op_key

    while isinstance(node, fx.Node):
        if node.op == "get_attr":
            owner_name, _, attr = str(node.target).rpartition(".")
            owner = gm.get_submodule(owner_name) if owner_name else gm
            if not isinstance(_trainable(owner, attr), nn.Parameter):
                return None
            return str(node.target), owner, attr
        if node.op in ("call_function", "call_method") and op_key(node, gm) in PURE_SHAPE_OPS and node.args:
            node = node.args[0]
            continue
        return None
    return None


def _weight_operands(node: fx.Node, gm: fx.GraphModule) -> tuple[Any, tuple[str, nn.Module, str] | None, Any]:
    """(data operand, weight parameter or None, bias operand or None) of a weight op."""
    from hybridc.passes.ops import module_of, op_key

    mod = module_of(node, gm)
    if mod is not None:
        if isinstance(mod, (*_LAYERS, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
            return node.args[0], (str(node.target), mod, "weight"), (mod, "bias")
        return node.args[0], None, None
    args = list(node.args)
    key = op_key(node, gm)

    def layer(
        operand: Any,
    ) -> tuple[str, nn.Module, str] | None:  # labelled as its layer, like feedback_layers
        found = _param_of(operand, gm)
        return None if found is None else (found[0].removesuffix(".weight"), found[1], found[2])

    if key in ("linear", "conv", "conv_transpose"):
        bias = args[2] if len(args) > 2 else node.kwargs.get("bias")
        return args[0], layer(args[1] if len(args) > 1 else node.kwargs.get("weight")), bias
    if key == "matmul" and len(args) >= 2:
        right = layer(args[1])
        return (args[0], right, None) if right is not None else (args[1], layer(args[0]), None)
    if key == "addmm" and len(args) >= 3:
        right = layer(args[2])
        return (args[1], right, args[0]) if right is not None else (args[2], layer(args[1]), args[0])
    return None, None, None


def _degree(node: fx.Node, gm: fx.GraphModule, deg: dict[fx.Node, int], where: str) -> int:
    """1 if `node`'s value carries the factor t exactly (positively homogeneous in the values that carry it),
    0 if it does not depend on them; raises _Broken otherwise. Weight ops are the caller's."""
    from hybridc.passes.ops import op_key, value_inputs

    key = op_key(node, gm)
    ins = value_inputs(node)
    carried = [deg.get(a, 0) for a in ins]
    if not any(carried):
        return 0
    if key == "meta":  # shape queries: independent of the values
        return 0
    if key == "getitem":
        src = node.args[0]
        if isinstance(src, fx.Node) and op_key(src, gm) == "max_pool" and node.args[1] == 1:
            return 0  # argmax indices of a max-pool: scale invariant
        if sum(carried) != 1 or deg.get(src, 0) != 1:
            raise _Broken(f"{where}: an index of {node.name} carries the factor")
        return 1
    if key == "pad":
        value = node.kwargs.get("value", node.args[3] if len(node.args) > 3 else None)
        mod = gm.get_submodule(str(node.target)) if node.op == "call_module" else None
        value = getattr(mod, "value", value)
        if value not in (None, 0, 0.0):
            raise _Broken(f"{where}: {node.name} pads with {value} (a constant, not a factor of the input)")
    if key in _UNARY_HOMOGENEOUS:
        if sum(carried) != 1 or not ins or deg.get(ins[0], 0) != 1:
            raise _Broken(f"{where}: {node.name} ({key}) reads the factor through a non-data operand")
        return 1
    if key == "mul":
        if sum(carried) != 1:
            raise _Broken(f"{where}: {node.name} multiplies two values that carry the factor (degree 2)")
        return 1
    if key == "div":
        if deg.get(node.args[0], 0) != 1 or sum(carried) != 1:
            raise _Broken(f"{where}: {node.name} divides by a value that carries the factor")
        return 1
    if key in ("add", "sub", "cat", "stack"):
        scalars = [a for a in node.args if isinstance(a, (int, float)) and not isinstance(a, bool)]
        if key in ("add", "sub") and any(a != 0 for a in scalars):
            raise _Broken(f"{where}: {node.name} adds a constant to a value that carries the factor")
        if not all(deg.get(a, 0) == 1 for a in value_inputs(node)):
            raise _Broken(
                f"{where}: {node.name} ({key}) combines a value that carries the factor with one that "
                "does not (a skip, a bias, a parameter or another branch)"
            )
        return 1
    what = _WHY_NOT.get(key, f"{node.name} ({key}: not positively homogeneous)")
    raise _Broken(f"{where}: the path crosses {what}")


def _top_terms(
    blk: nn.Module, j: int, scaled: dict[int, str]
) -> tuple[list[str], list[tuple[str, nn.Module, str]]]:
    """In-block half: the rescaled weights computing neuron j and the biases to scale with them so that its
    state becomes exactly t× what the unscaled layer computes; raises _Broken with the reason where not."""
    from hybridc.passes.ops import WEIGHT_OPS, op_key

    name, spec = blk.neuron_names[j], blk.activation_specs[j]
    if spec.kind not in _HOMOGENEOUS_NEURONS:
        what = (
            "a hard sigmoid clamp(a·u, 0, 1), not positively homogeneous"
            if spec.kind == "hardsigmoid"
            else f"{spec.kind}, not positively homogeneous"
        )
        raise _Broken(f"output neuron {name} has activation {what}")
    core = blk._split[1]
    states = [n for n in core.graph.nodes if n.op == "placeholder"][blk.n_cut :]
    if states[j].users:
        raise _Broken(
            f"output neuron {name} is read by other neurons of the block (it feeds back through them)"
        )
    out = next(n for n in core.graph.nodes if n.op == "output")
    pre = list(out.args[0])
    target = pre[j]
    # the cone of u_j: the nodes it is computed from
    cone: set[fx.Node] = set()
    stack = [target] if isinstance(target, fx.Node) else []
    while stack:
        n = stack.pop()
        if n not in cone:
            cone.add(n)
            stack.extend(n.all_input_nodes)
    deg: dict[fx.Node, int] = {}
    biases: list[tuple[str, nn.Module, str]] = []
    layers: list[str] = []
    sources: list[fx.Node] = []
    where = f"the pre-activation of output neuron {name}"
    for node in core.graph.nodes:
        if node not in cone or node.op in ("placeholder", "get_attr", "output"):
            continue
        is_weight = (
            node.op == "call_module" and isinstance(core.get_submodule(str(node.target)), _LAYERS)
        ) or (node.op == "call_function" and op_key(node, core) in WEIGHT_OPS)
        if is_weight:
            data, param, bias = _weight_operands(node, core)
            w = _trainable(param[1], param[2]) if param is not None else None
            if w is not None and id(w) in scaled:
                if deg.get(data, 0) if isinstance(data, fx.Node) else 0:
                    raise _Broken(f"{where}: two rescaled layers in series ({node.name})")
                sources.append(node)
                layers.append(param[0])
                deg[node] = 1
                if isinstance(bias, tuple) and getattr(bias[0], bias[1], None) is not None:
                    biases.append((f"{param[0]}.bias", bias[0], bias[1]))
                elif isinstance(bias, fx.Node):
                    bp = _param_of(bias, core)
                    if bp is None:
                        raise _Broken(f"{where}: the bias of {node.name} is not a parameter")
                    biases.append((bp[0], bp[1], bp[2]))
                continue
            if any(deg.get(a, 0) for a in node.all_input_nodes):
                raise _Broken(f"{where}: {node.name} applies an unscaled weight to a rescaled value")
            deg[node] = 0
            continue
        deg[node] = _degree(node, core, deg, where)
    if not isinstance(target, fx.Node) or deg.get(target, 0) != 1:
        raise _Broken(
            f"{where} has a term that the rescale does not scale (an identity skip, an input term or "
            "an unscaled bias)"
        )
    # the scaled biases must reach no other neuron
    reach: set[fx.Node] = set()
    stack = list(sources)
    while stack:
        n = stack.pop()
        if n not in reach:
            reach.add(n)
            stack.extend(n.users)
    others = [blk.neuron_names[k] for k, p in enumerate(pre) if k != j and p in reach]
    if others:
        raise _Broken(f"the layer of output neuron {name} also feeds neuron(s) {others} of the block")
    return layers, biases


def _block_graph(model: nn.Module, name: str) -> fx.GraphModule | None:
    """The graph a block computes its outputs (digital) or pre-activations (DHN synapses) with; None for a
    kind without one (DRN)."""
    blk = model.blocks[name]
    if isinstance(blk, fx.GraphModule):
        return blk
    return getattr(blk, "synapses", None)


def plan_compensation(
    model: nn.Module, name: str, scaled: Sequence[tuple[str, torch.Tensor]]
) -> Compensation:
    """Decide, at compile time, whether analog block `name` of `model` (an FFEBM) can move its guard's factor
    downstream (module docstring): which top neurons and biases scale with t, which weights of later blocks
    scale by 1/t, and the ops in between; or why not (`reason`). `scaled`: the block's rescaled weights."""
    from hybridc.energy.dhn import DHNBlock
    from hybridc.passes.ops import WEIGHT_OPS, op_key

    blk = model.blocks[name]
    comp = Compensation()
    scaled_ids = {id(w): n for n, w in scaled}
    try:
        if blk.analog.read_noise:
            raise _Broken("the block's neurons have read noise, which does not scale with the factor")
        if blk.analog.adc_bits:
            raise _Broken("the block's outputs are ADC-quantised, which does not commute with the factor")
        for j in blk.output_idx:
            try:
                layers, biases = _top_terms(blk, j, scaled_ids)
                comp.layers += layers
                comp.biases += biases
                comp.outputs.append(blk.neuron_names[j])
            except _Broken as exc:
                if len(blk.output_idx) == 1:
                    raise
                comp.notes.append(f"{blk.neuron_names[j]}: {exc}")
        if not comp.outputs:
            raise _Broken(
                "no output neuron of the block carries the factor exactly: " + "; ".join(comp.notes)
            )
        carried: dict[str, int] = dict.fromkeys(comp.outputs, 1)
        uses: dict[int, list[int]] = {}  # weight id -> degrees of the data it is applied to
        feedback_ids = {
            id(w)
            for b in model.analog_blocks.values()
            if isinstance(b, DHNBlock)
            for _, w in feedback_layers(b)
        }
        for bname in model.blocks:  # topological order; the guarded block's own weights count as uses too
            ins, outs = model.io(bname)
            gm = _block_graph(model, bname)
            analog = bname in model.analog_blocks
            reads = any(carried.get(x, 0) for x in ins)
            if reads and (gm is None or (analog and not isinstance(model.blocks[bname], DHNBlock))):
                raise _Broken(f"block {bname}, a {model.blocks[bname].kind.upper()} block, reads the output")
            if reads and analog and model.blocks[bname].analog.dac_bits:
                raise _Broken(
                    f"block {bname} DAC-quantises its inputs, which does not commute with the factor"
                )
            if gm is None:
                continue
            placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
            deg: dict[fx.Node, int] = {placeholders[i]: carried.get(x, 0) for i, x in enumerate(ins)}
            where = f"block {bname}"
            for node in gm.graph.nodes:
                if node.op in ("placeholder", "get_attr", "output"):
                    continue
                is_weight = (
                    node.op == "call_module" and isinstance(gm.get_submodule(str(node.target)), _LAYERS)
                ) or (node.op in ("call_function", "call_method") and op_key(node, gm) in WEIGHT_OPS)
                if is_weight:
                    data, param, _ = _weight_operands(node, gm)
                    d = deg.get(data, 0) if isinstance(data, fx.Node) else 0
                    others = [a for a in node.all_input_nodes if a is not data and deg.get(a, 0)]
                    if param is not None:
                        uses.setdefault(id(_trainable(param[1], param[2])), []).append(d)
                    if d and (param is None or others):
                        raise _Broken(
                            f"{where}: {node.name} reads the factor through an operand that is not "
                            "its data input"
                        )
                    if d:
                        w = _trainable(param[1], param[2])
                        if id(w) in feedback_ids or id(w) in scaled_ids:
                            raise _Broken(f"{where}: the weight of {node.name} also reads neuron states")
                        if all(w is not _trainable(c[2], c[3]) for c in comp.consumers):
                            comp.consumers.append((bname, param[0], param[1], param[2]))
                    deg[node] = 0
                    continue
                deg[node] = _degree(node, gm, deg, where)
                if deg[node]:
                    key = op_key(node, gm)
                    if key not in comp.path:
                        comp.path.append(key)
            out = next(n for n in gm.graph.nodes if n.op == "output")
            values = list(out.args[0]) if isinstance(out.args[0], (tuple, list)) else [out.args[0]]
            if analog:
                hit = [
                    blk2
                    for blk2, v in zip(model.blocks[bname].neuron_names, values)
                    if isinstance(v, fx.Node) and deg.get(v, 0)
                ]
                if hit:
                    raise _Broken(f"{where}: neuron(s) {hit} read the output without a weight in between")
            else:
                for o, v in zip(outs, values):
                    if isinstance(v, fx.Node) and deg.get(v, 0):
                        carried[o] = 1
        graph_out: list[str] = []
        fx.node.map_arg(model._output_template, lambda n: graph_out.append(n.name))
        reaching = [o for o in graph_out if carried.get(o)]
        if reaching:
            raise _Broken(
                f"the output reaches the model's output {reaching} (compensating it would need a "
                "digital output gain)"
            )
        shared = [
            c[1] for c in comp.consumers if any(d == 0 for d in uses.get(id(_trainable(c[2], c[3])), []))
        ]
        if shared:
            raise _Broken(f"weight(s) {shared} are also applied to values that do not carry the factor")
        if not comp.consumers:
            raise _Broken("no weight reads the block's output")
    except _Broken as exc:
        return Compensation(outputs=comp.outputs, layers=comp.layers, reason=str(exc), notes=comp.notes)
    return comp


class DHNConstraint:
    """Keeps one DHN block's feedback gain ρ ≤ target by rescaling its state-reading weights (see module doc).

    `calibrate` runs once, at compile time (host syncs allowed): it measures the identity-skip part ρ_I, picks
    the target, rescales and returns what it did. `apply_` runs after every optimizer step: device ops only.
    `compensation` (set by `constrain_model` from `plan_compensation`): every rescale by t also scales the top
    layers' biases by t and the weights reading the block's output by 1/t, where that is exact.
    """

    def __init__(
        self,
        block: nn.Module,
        input_shapes: Sequence[Sequence[int]],
        gain: float,
        example_batch: int | None = None,
        compensation: Compensation | None = None,
    ) -> None:
        if not gain > 0:
            raise ValueError(f"feedback gain must be positive, got {gain}")
        self.gain = float(gain)
        self.coupling = Coupling(block, input_shapes, example_batch)
        self.layers = feedback_layers(block)
        self.rho_skip = 0.0
        self.target: float | None = self.gain
        self.compensation = compensation or Compensation(reason="not planned")

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
    def _factor(
        rho: torch.Tensor, target: float | torch.Tensor, rho_skip: float | torch.Tensor
    ) -> torch.Tensor:
        """The secant factor t with ρ(t) ≤ target (1 where ρ is already within it; target ∞ = unconstrained)."""
        t = (target - rho_skip) / (rho - rho_skip).clamp_min(1e-30)
        return torch.where(rho > target, t.clamp(0.0, 1.0), torch.ones_like(rho))

    @torch.no_grad()
    def _scale_(
        self, rho: torch.Tensor, target: float | torch.Tensor, rho_skip: float | torch.Tensor
    ) -> torch.Tensor:
        t = self._factor(rho, target, rho_skip)
        for w in self._weights():
            w.mul_(t.to(w.dtype))
        self.compensation.apply_(t)
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
        rec: dict[str, Any] = {
            "layers": [n for n, _ in self.layers],
            "gain": self.gain,
            "compensation": self.compensation.record(),
        }
        self.coupling.settle()
        rho0 = self.coupling.norm(COMPILE_ITERS, COMPILE_STARTS)
        if not self.layers:
            self.target = None
            value = float(rho0)
            rec.update(rho_before=value, rho_after=value, rho_skip=None, target=None, factor=1.0)
            return rec
        rs = self._skip_norm()
        gain = torch.full_like(rs, self.gain)
        target = torch.where(
            rs < 0.95 * self.gain,
            gain,
            torch.where(rs < 1.0, torch.maximum(gain, 0.5 * (1.0 + rs)), torch.full_like(rs, math.inf)),
        )
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
    return (
        f"identity skips inside the block alone give ρ_I={rec['rho_skip']:.3g} ≥ 1; lower hardsigmoid_slope "
        "or max_block_size (so residual adds cross block boundaries)"
    )


def compensation_text(rec: dict[str, Any], layer: str | None = None) -> str:
    """One sentence on what a block's guard does to the feedforward path (for decisions and reports); `layer`:
    said of one rescaled layer (one between hidden neurons is not compensated)."""
    comp = rec.get("compensation") or {}
    if comp.get("mode") == "downstream" and layer is not None and layer not in comp.get("layers", []):
        return (
            "a layer between hidden neurons: its rescale changes the forward function (only the top layer's "
            f"factor, of {', '.join(comp['layers'])}, is moved downstream)"
        )
    if comp.get("mode") == "downstream":
        path = " → ".join(comp["path"]) or "nothing"
        return (
            f"the factor is moved downstream: {', '.join(comp['biases']) or 'no bias'} ×t with the weights and "
            f"{', '.join(comp['consumers'])} ×1/t (path {path}: positively homogeneous), so the feedforward "
            f"function is kept and only the top-down feedback of {', '.join(comp['outputs'])} shrinks (×t²)"
        )
    return (
        f"not compensated downstream ({comp.get('reason') or 'not planned'}): the block's output shrinks with "
        "its weights"
    )


def _decisions(block: str, rec: dict[str, Any]) -> list[Any]:
    """The plan decisions recording what calibration did to one block (none when nothing changed): its
    rescaled layers and, where the factor is moved downstream, the weights compensating it."""
    from hybridc.plan import Decision

    if rec["target"] is None:
        if rec["rho_before"] <= rec["gain"]:
            return []
        return [
            Decision(
                node=layer,
                action="unconstrained",
                block=block,
                reason=(
                    f"feedback gain ρ={rec['rho_before']:.3g} > {rec['gain']:g} cannot be bounded by rescaling weights: "
                    f"{_why_unbounded(rec)}; the free phase may not reach a fixed point"
                ),
            )
            for layer in rec["layers"] or [block]
        ]
    if rec["factor"] >= 1.0:
        return []
    note = (
        ""
        if math.isclose(rec["target"], rec["gain"], rel_tol=1e-6)
        else (
            f" (the gain {rec['gain']:g} is out of reach: identity skips give ρ_I={rec['rho_skip']:.3g}; target "
            f"{rec['target']:.3g})"
        )
    )
    comp = rec.get("compensation") or {}
    out = [
        Decision(
            node=layer,
            action="rescaled",
            block=block,
            reason=(
                f"weight ×{rec['factor']:.4g}: feedback gain ρ={rec['rho_before']:.3g} → {rec['rho_after']:.3g} ≤ "
                f"{rec['target']:.3g}{note}, so the free phase is a contraction; {compensation_text(rec, layer)}; the compiled "
                "forward differs from the original model's (init=keep keeps the weights up to this factor)"
            ),
        )
        for layer in rec["layers"]
    ]
    if comp.get("mode") == "downstream":
        for consumer in comp["consumers"]:
            cblock, _, layer = consumer.partition(":")
            out.append(
                Decision(
                    node=layer,
                    action="rescaled",
                    block=cblock,
                    reason=(
                        f"weight ×{1 / rec['factor']:.4g} = 1/t: compensates the feedback guard's rescale of {block} (its "
                        f"output {', '.join(comp['outputs'])} is ×{rec['factor']:.4g}; path "
                        f"{' → '.join(comp['path']) or 'direct'} is positively homogeneous), so this layer's output is "
                        "unchanged"
                    ),
                )
            )
    return out


def constrain_model(model: nn.Module, gain: float | None, compensate: bool = True) -> list[dict[str, Any]]:
    """Compile-time half of equilibrium by construction: give every multi-layer DHN block of `model` (an
    FFEBM) a `DHNConstraint` with bound `gain`, calibrate it (rescaling weights where ρ > gain), record every
    rescaling in a copy of `model.plan`'s decisions (replacing those of an earlier compile of the same plan),
    warn about blocks that cannot be bounded, and register `model` for the post-optimizer-step hook.
    Single-layer blocks have no feedback and are untouched (their compiled forward stays exact). `gain` None
    or 0: DHN blocks stay unconstrained (DRN blocks keep their conductance projection). `compensate` (default):
    move each block's factor downstream where that is exact (`plan_compensation`); what applies per block is
    kept in `model.guard_compensation` (block -> `Compensation.record()`) and in the rescaled decisions.
    Returns one record per calibrated block (see `DHNConstraint.calibrate`)."""
    import warnings

    from hybridc.energy.dhn import DHNBlock

    plan = model.plan.model_copy(deep=True)
    plan.decisions = [d for d in plan.decisions if d.action not in _RECORDED]
    shapes = _shapes(model)
    records: list[dict[str, Any]] = []
    guarded = [
        name
        for name, blk in model.analog_blocks.items()
        if gain and isinstance(blk, DHNBlock) and len(blk.neuron_names) >= 2
    ]
    # planned before any calibration: structural, and every block's compensation sees the model as compiled
    plans: dict[str, Compensation] = {}
    for name in guarded:
        if not compensate:
            plans[name] = Compensation(reason="turned off (compensate=False)")
            continue
        try:
            plans[name] = plan_compensation(model, name, feedback_layers(model.blocks[name]))
        except Exception as exc:  # noqa: BLE001 - an optional exact reparametrisation: never fail a compile over it
            plans[name] = Compensation(reason=f"the path could not be analysed ({type(exc).__name__}: {exc})")
    for name in guarded:
        blk = model.blocks[name]
        in_shapes = [shapes.get(n) for n in model.io(name)[0]]
        if any(s is None for s in in_shapes):
            from hybridc.errors import PlanMismatchError

            raise PlanMismatchError(
                f"analog block {name}: the plan records no shape for one of its inputs, so its "
                "feedback gain cannot be measured; re-create the plan with `hybridc partition`"
            )
        blk.constraint = DHNConstraint(
            blk, [s[1:] for s in in_shapes], gain, example_batch=in_shapes[0][0], compensation=plans[name]
        )
        rec = blk.constraint.calibrate() | {"block": name}
        records.append(rec)
        decisions = _decisions(name, rec)
        plan.decisions.extend(decisions)
        if decisions and decisions[0].action == "unconstrained":
            warnings.warn(
                f"analog block {name!r}: its feedback gain ρ={rec['rho_before']:.3g} cannot be bounded "
                f"by rescaling weights ({_why_unbounded(rec)}): its free phase may not reach a fixed "
                "point.",
                stacklevel=3,
            )
    model.plan = plan
    model.feedback_gain = gain or None
    #: per guarded block, what its guard does to the feedforward path (`Compensation.record()`)
    model.guard_compensation = {r["block"]: r["compensation"] for r in records}
    register(model)
    return records


def feedback_norms(
    model: nn.Module, iters: int = COMPILE_ITERS, starts: int = COMPILE_STARTS
) -> dict[str, float]:
    """ρ = ‖D_a^{1/2} A D_a^{1/2}‖ of every multi-layer DHN block of an FFEBM, constrained or not (reads the
    values to the host: for diagnostics and tests, not the training loop)."""
    from hybridc.energy.dhn import DHNBlock

    shapes = _shapes(model)
    out: dict[str, float] = {}
    for name, blk in model.analog_blocks.items():
        if isinstance(blk, DHNBlock) and len(blk.neuron_names) >= 2:
            if blk.constraint is not None:
                coupling = blk.constraint.coupling
            else:
                in_shapes = [shapes[n] for n in model.io(name)[0]]
                coupling = Coupling(blk, [s[1:] for s in in_shapes], example_batch=in_shapes[0][0])
                coupling.settle()
            out[name] = float(coupling.norm(iters, starts))
    return out
