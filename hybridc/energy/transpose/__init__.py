"""Autograd-free evaluation of an analog block's synapse graph and of its transpose.

An analog block's synapse graph ``gm`` maps ``(x_1..x_m, s_1..s_n)`` to pre-activations
``(u_1..u_n)``, every ``u_j`` affine in the placeholders.  The relaxation of the block needs, at
every step, ``u`` and the gradient of the primitive ``Phi(s) = sum_j <s_j, u_j(x, s)>``::

    g_k = dPhi/ds_k = u_k + sum_j (du_j/ds_k)^T s_j        h_i = sum_j (du_j/dx_i)^T s_j

Because each ``u_j`` is affine, the second terms are one *reverse sweep* of the graph's linear part
seeded with ``s_j`` at output ``j``: the same thing ``torch.autograd.grad`` would compute, but written
out op by op (linear -> matmul with the weight, conv -> transposed conv, max-pool -> scatter into the
arg-max positions, reshape -> reshape back, cat -> split, ...).  This avoids autograd's tape, so it
runs under ``torch.no_grad()``; and since every step is an ordinary differentiable torch op, running
it under ``torch.enable_grad()`` lets implicit differentiation differentiate ``g`` by autograd with
respect to states, weights and inputs.

:class:`TransposeProgram` analyses the graph once.  A node is *constant* when it does not depend on a
placeholder (weights, ``w.t()``, ...) or depends on one only through shape queries (``x.size(0)``);
constant nodes are re-evaluated on every call, as they may read parameters that training changes.
Every other node is *data* and must be found in :data:`table.TABLE`, which maps an op's spelling (module
class, function, ATen overload, or ``"Tensor.<method>"``) to its identity (the name
:mod:`hybridc.passes.ops` gives it) and a :class:`Rule`: how to run it forward (and keep what the
transpose needs, e.g. max-pool indices) and how to transpose it.
"""

from hybridc.energy.transpose.program import TransposeProgram, unsupported_reason
from hybridc.energy.transpose.rules import Rule

__all__ = ["Rule", "TransposeProgram", "unsupported_reason"]
