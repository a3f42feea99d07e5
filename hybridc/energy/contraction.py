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
autograd). Each estimate is ‖B u‖ for a unit u, so it is a lower bound that tightens with the iterations; the
gain is chosen with room below 1 for that. At compile time it starts from fixed vectors; after optimizer steps
it continues from the previous step's vectors (a few iterations: the weights moved little), with a cold
estimate from the fixed starts on the first steps and periodically (`DHNConstraint`). Deterministic and
identical on every DDP process; the vectors travel through the trainer's checkpoints (`guard_state`).

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

Where it lives (this module keeps the argument and every name it defined; the code is in four modules):
`hybridc.energy.coupling` (slope bounds, the coupling operator and ρ by power iteration),
`hybridc.energy.homogeneity` (which ops carry the factor t exactly), `hybridc.energy.compensation` (moving
the rescale downstream) and `hybridc.energy.feedback_guard` (the per-block constraint, the post-step hook and
the compile-time `constrain_model`). Which blocks are guarded, and through which weights, each block kind
says itself (`EnergyBlock.needs_feedback_guard`, `feedback_layers`, `synapse_graph`).
"""

from __future__ import annotations

from hybridc.energy.compensation import Compensation, plan_compensation
from hybridc.energy.coupling import (
    COMPILE_ITERS,
    COMPILE_STARTS,
    STEP_ITERS,
    STEP_STARTS,
    Coupling,
    feedback_layers,
    slope_bound,
    spectral_norm,
)
from hybridc.energy.feedback_guard import (
    DEFAULT_FEEDBACK_GAIN,
    DHNConstraint,
    compensation_text,
    constrain_model,
    feedback_norms,
)
from hybridc.energy.post_step import register, register_block, unregister

__all__ = [
    "COMPILE_ITERS",
    "COMPILE_STARTS",
    "DEFAULT_FEEDBACK_GAIN",
    "STEP_ITERS",
    "STEP_STARTS",
    "Compensation",
    "Coupling",
    "DHNConstraint",
    "compensation_text",
    "constrain_model",
    "feedback_layers",
    "feedback_norms",
    "plan_compensation",
    "register",
    "register_block",
    "slope_bound",
    "spectral_norm",
    "unregister",
]
