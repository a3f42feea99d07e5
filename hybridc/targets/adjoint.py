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

:class:`AdjointProgram` analyses the graph once.  A node is *constant* when it does not depend on a
placeholder (weights, ``w.t()``, ...) or depends on one only through shape queries (``x.size(0)``);
constant nodes are re-evaluated on every call, as they may read parameters that training changes.
Every other node is *data* and must be found in :data:`_TABLE`, which maps an op's identity (module
class, function, ATen overload, or ``"Tensor.<method>"``) to a :class:`Rule`: how to run it forward
(and keep what the transpose needs, e.g. max-pool indices) and how to transpose it.
"""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.fx import GraphModule, Node
from torch.fx.node import map_arg

from hybridc.errors import UnsupportedOpError

__all__ = ["AdjointProgram", "Rule", "unsupported_reason"]

aten = torch.ops.aten


# --------------------------------------------------------------------------------------------------
# Argument binding: every spelling of an op (module call, torch function, tensor method, ATen overload)
# is bound to named parameters so that one rule can read e.g. ``stride`` whatever the spelling.
# --------------------------------------------------------------------------------------------------

_REQUIRED = object()
# ATen / torch parameter names that mean the same thing as a name the rules use.
_ALIASES = {"self": "input", "train": "training", "axis0": "dim0", "axis1": "dim1"}


@dataclass(frozen=True)
class _Sig:
    """Parameter names (with defaults) of one spelling of an op, used to bind a node's args/kwargs."""

    params: tuple[tuple[str, Any], ...]
    varargs: str | None = None  # collects extra positionals (``x.permute(0, 2, 1)``, ``x.view(b, -1)``)
    varkw: bool = False  # accept unknown keyword arguments (kept under their own names)

    @staticmethod
    def parse(text: str) -> _Sig:
        """``"input, kernel_size, stride=None, *rest, **kw"`` -> _Sig (defaults are Python literals)."""
        params: list[tuple[str, Any]] = []
        varargs, varkw = None, False
        for item in (p.strip() for p in text.split(",") if p.strip()):
            if item.startswith("**"):
                varkw = True
            elif item.startswith("*"):
                varargs = item[1:]
            elif "=" in item:
                name, default = item.split("=", 1)
                params.append((name.strip(), ast.literal_eval(default.strip())))
            else:
                params.append((item, _REQUIRED))
        return _Sig(tuple(params), varargs, varkw)

    @staticmethod
    def of_op(op: torch._ops.OpOverload) -> _Sig:
        """Signature of an ATen overload, read from its schema (``self`` renamed ``input``)."""
        return _Sig(
            tuple(
                (_ALIASES.get(a.name, a.name), a.default_value if a.has_default_value() else _REQUIRED)
                for a in op._schema.arguments
            )
        )

    def bind(self, args: Sequence[Any], kwargs: Mapping[str, Any]) -> dict[str, Any]:
        """Map positional and keyword arguments to parameter names; ValueError if they do not fit."""
        names = [name for name, _ in self.params]
        bound: dict[str, Any] = dict(zip(names, args))
        extra = list(args[len(names) :])
        if self.varargs is not None:
            unwrap = len(extra) == 1 and isinstance(extra[0], (list, tuple))
            bound[self.varargs] = tuple(extra[0]) if unwrap else tuple(extra)
        elif extra:
            raise ValueError(f"{len(args)} positional arguments, at most {len(names)} expected")
        for key, value in kwargs.items():
            key = _ALIASES.get(key, key)
            if key in bound and key != self.varargs:
                raise ValueError(f"argument '{key}' given twice")
            if key not in names and key != self.varargs and not self.varkw:
                raise ValueError(f"unexpected keyword argument '{key}'")
            bound[key] = tuple(value) if key == self.varargs else value
        for name, default in self.params:
            if name not in bound:
                if default is _REQUIRED:
                    raise ValueError(f"missing argument '{name}'")
                bound[name] = default
        return bound


_MODULE_SIG = _Sig.parse("input")


# --------------------------------------------------------------------------------------------------
# Rules
# --------------------------------------------------------------------------------------------------


class _Record(NamedTuple):
    """What the forward pass of one data node leaves for its transpose."""

    step: _Step
    a: Mapping[str, Any]  # bound, resolved arguments (tensors, ints, ...)
    aux: Any  # rule-specific extra (max-pool indices, dropout mask, gather positions) or None


ForwardFn = Callable[["_Step", Mapping[str, Any]], tuple[Any, Any]]
AdjointFn = Callable[[_Record, Tensor, frozenset], dict[str, Any]]
CheckFn = Callable[["_Step", "AdjointProgram"], "str | None"]


@dataclass(frozen=True)
class Rule:
    """How to run and transpose one affine op.

    ``adjoint(rec, grad, need)`` returns ``{param name: adjoint}`` for (at least) the parameters named
    in ``need`` (those that carry a placeholder dependency someone wants); a tensor-list parameter
    (``cat``) gets a list.  ``forward(step, a)`` returns ``(value, aux)``; ``None`` runs the node as fx
    would.  Only parameters in ``data_args`` may depend on placeholders, and at most one of
    ``exclusive`` may (a product of two such operands is not affine).  ``check`` rejects spellings the
    adjoint cannot honour (e.g. ``padding_mode='reflect'``) at analysis time.
    """

    adjoint: AdjointFn
    forward: ForwardFn | None = None
    data_args: tuple[str, ...] = ("input",)
    exclusive: tuple[str, ...] = ()
    check: CheckFn | None = None
    tuple_out: bool = False  # the op returns (values, indices) whatever its arguments say
    meta_args: tuple[str, ...] = ()  # read only for their shape/dtype (``x.view_as(y)``): may be data
    pieces: bool = False  # returns a tuple of pieces of its input (split/chunk/unbind), read by getitem


def _arg(module: nn.Module | None, a: Mapping[str, Any], name: str, default: Any = None) -> Any:
    """A hyper-parameter: the module's attribute for call_module nodes, else the bound argument."""
    if module is not None:
        return getattr(module, name, default)
    return a.get(name, default)


def _ntuple(value: Any, n: int) -> list[int]:
    """``2 -> [2, 2]``, ``(2,) -> [2, 2]``, ``(2, 3) -> [2, 3]``."""
    if isinstance(value, (list, tuple)):
        return list(value) * n if len(value) == 1 else list(value)
    return [value] * n


def _unbroadcast(grad: Tensor, like: Tensor) -> Tensor:
    """Adjoint of broadcasting ``like`` to ``grad``'s shape: sum over the broadcast dimensions."""
    if grad.shape != like.shape:
        grad = grad.sum_to_size(like.shape)
    return grad if grad.dtype == like.dtype else grad.to(like.dtype)


def _scale(grad: Tensor, c: Any) -> Tensor:
    return grad if isinstance(c, (int, float)) and c == 1 else grad * c


# ---- forward rules (only where the transpose needs more than the arguments) ----------------------


def _maxpool_forward(step: _Step, a: Mapping[str, Any], nd: int, adaptive: bool) -> tuple[Any, Any]:
    """Max pooling, always asking for the arg-max indices (the transpose scatters into them)."""
    m, x = step.module, a["input"]
    if adaptive:
        fn = (F.adaptive_max_pool1d, F.adaptive_max_pool2d, F.adaptive_max_pool3d)[nd - 1]
        values, idx = fn(x, _arg(m, a, "output_size"), return_indices=True)
    else:
        fn = (F.max_pool1d, F.max_pool2d, F.max_pool3d)[nd - 1]
        kernel = _arg(m, a, "kernel_size")
        values, idx = fn(
            x,
            kernel,
            _arg(m, a, "stride") or None,  # ATen spells "same as kernel" as []
            _arg(m, a, "padding", 0),
            _arg(m, a, "dilation", 1),
            _arg(m, a, "ceil_mode", False),
            return_indices=True,
        )
    return ((values, idx) if step.tuple_out else values), idx


def _dropout_forward(step: _Step, a: Mapping[str, Any]) -> tuple[Any, Any]:
    """Dropout with an explicit mask (kept for the transpose); the identity when inactive."""
    x = a["input"]
    p = _arg(step.module, a, "p", 0.5)
    if not _arg(step.module, a, "training", True) or p == 0:
        return x, None
    mask = x.new_zeros(x.shape) if p >= 1 else torch.empty_like(x).bernoulli_(1 - p).div_(1 - p)
    return x * mask, mask


def _is_basic_index(index: Any) -> bool:
    items = index if isinstance(index, tuple) else (index,)
    return all(
        (isinstance(i, int) and not isinstance(i, bool)) or i is None or i is Ellipsis or isinstance(i, slice)
        for i in items
    )


def _getitem_forward(step: _Step, a: Mapping[str, Any]) -> tuple[Any, Any]:
    """``x[index]``; for advanced indexing also the flat source position of every output element."""
    x, index = a["input"], a["index"]
    out = x[index]
    if isinstance(x, (tuple, list)) or _is_basic_index(index):
        return out, None
    return out, torch.arange(x.numel(), device=x.device).view(x.shape)[index]


# ---- adjoint rules -------------------------------------------------------------------------------


def _identity_adjoint(rec: _Record, grad: Tensor, need: frozenset) -> dict[str, Any]:
    return {"input": grad}


def _dropout_adjoint(rec: _Record, grad: Tensor, need: frozenset) -> dict[str, Any]:
    return {"input": grad if rec.aux is None else grad * rec.aux}


def _reshape_adjoint(rec: _Record, grad: Tensor, need: frozenset) -> dict[str, Any]:
    return {"input": grad.reshape(rec.a["input"].shape)}


def _expand_adjoint(rec: _Record, grad: Tensor, need: frozenset) -> dict[str, Any]:
    return {"input": _unbroadcast(grad, rec.a["input"])}


def _cast_adjoint(rec: _Record, grad: Tensor, need: frozenset) -> dict[str, Any]:
    x = rec.a["input"]
    return {"input": grad.to(dtype=x.dtype, device=x.device)}


def _transpose_adjoint(rec: _Record, grad: Tensor, need: frozenset) -> dict[str, Any]:
    return {"input": grad.transpose(rec.a["dim0"], rec.a["dim1"])}


def _t_adjoint(rec: _Record, grad: Tensor, need: frozenset) -> dict[str, Any]:
    return {"input": grad.t()}


def _permute_adjoint(rec: _Record, grad: Tensor, need: frozenset) -> dict[str, Any]:
    n = grad.dim()
    inverse = [0] * n
    for i, d in enumerate(rec.a["dims"]):
        inverse[d % n] = i
    return {"input": grad.permute(inverse)}


def _movedim_adjoint(rec: _Record, grad: Tensor, need: frozenset) -> dict[str, Any]:
    return {"input": grad.movedim(rec.a["destination"], rec.a["source"])}


def _tensor_attr_adjoint(rec: _Record, grad: Tensor, need: frozenset) -> dict[str, Any]:
    if rec.a["name"] == "T":
        return {"input": grad.permute(list(range(grad.dim() - 1, -1, -1)))}
    return {"input": grad.transpose(-2, -1)}  # mT


class _Pieces(dict):
    """The adjoints of some items of a split/chunk/unbind result, by item index (summed when merged)."""

    def __add__(self, other: _Pieces) -> _Pieces:
        out = _Pieces(self)
        for i, g in other.items():
            out[i] = out[i] + g if i in out else g
        return out


def _pieces_of(x: Tensor, rec: _Record) -> tuple[Tensor, ...]:
    """The pieces the recorded split/chunk/unbind makes of `x` (views of it)."""
    a, kind = rec.a, rec.aux
    dim = a.get("dim", 0)
    if kind == "split":
        return torch.split(x, a.get("split_size", a.get("split_sizes")), dim)
    if kind == "chunk":
        return torch.chunk(x, a["chunks"], dim)
    return torch.unbind(x, dim)


def _pieces_forward(step: _Step, a: Mapping[str, Any], kind: str) -> tuple[Any, Any]:
    rec = _Record(step, a, kind)
    return _pieces_of(a["input"], rec), kind


def _pieces_adjoint(rec: _Record, grad: _Pieces, need: frozenset) -> dict[str, Any]:
    """Split's transpose: each item's adjoint written into its place of a zero tensor (the pieces are
    views of it), so unread items contribute zeros."""
    x = rec.a["input"]
    gx = next(iter(grad.values())).new_zeros(x.shape)
    views = _pieces_of(gx, rec)
    for i, g in grad.items():
        views[i].copy_(g)
    return {"input": gx}


def _piece_item_adjoint(rec: _Record, grad: Tensor, need: frozenset) -> dict[str, Any]:
    return {"input": _Pieces({int(rec.a["index"]): grad})}


def _getitem_adjoint(rec: _Record, grad: Tensor, need: frozenset) -> dict[str, Any]:
    x = rec.a["input"]
    if isinstance(x, (tuple, list)):  # values of a (values, indices) max-pool: the pool's adjoint
        return {"input": grad}
    if rec.aux is None:
        gx = grad.new_zeros(x.shape)
        gx[rec.a["index"]] = grad
    else:
        gx = grad.new_zeros(x.numel()).index_add_(0, rec.aux.reshape(-1), grad.reshape(-1)).view(x.shape)
    return {"input": gx}


def _select_adjoint(rec: _Record, grad: Tensor, need: frozenset) -> dict[str, Any]:
    x = rec.a["input"]
    return {"input": torch.select_scatter(grad.new_zeros(x.shape), grad, rec.a["dim"], rec.a["index"])}


def _pad_adjoint(rec: _Record, grad: Tensor, need: frozenset) -> dict[str, Any]:
    """Constant padding adds constants around x: its transpose crops them off (negative padding)."""
    pad = _arg(rec.step.module, rec.a, "padding") if rec.step.module is not None else rec.a["pad"]
    return {"input": F.pad(grad, [-int(p) for p in pad])}


def _slice_adjoint(rec: _Record, grad: Tensor, need: frozenset) -> dict[str, Any]:
    a, x = rec.a, rec.a["input"]
    zeros = grad.new_zeros(x.shape)
    if "length" in a:  # narrow(dim, start, length)
        start = a["start"] % x.shape[a["dim"]]
        return {"input": torch.slice_scatter(zeros, grad, a["dim"], start, start + a["length"])}
    return {"input": torch.slice_scatter(zeros, grad, a["dim"], a["start"], a["end"], a["step"])}


def _reduce_adjoint(rec: _Record, grad: Tensor, need: frozenset, mean: bool) -> dict[str, Any]:
    """sum/mean over ``dim`` (None or [] = all): re-insert the reduced dims, expand (and divide)."""
    x, dim = rec.a["input"], rec.a.get("dim")
    if dim is None or (isinstance(dim, (list, tuple)) and len(dim) == 0):
        dims = list(range(x.dim()))
    else:
        dims = sorted(d % max(x.dim(), 1) for d in (dim if isinstance(dim, (list, tuple)) else [dim]))
    if not rec.a.get("keepdim", False):
        for d in dims:
            grad = grad.unsqueeze(d)
    gx = grad.expand(x.shape)
    if mean:
        gx = gx / math.prod(x.shape[d] for d in dims)
    return {"input": gx if gx.dtype == x.dtype else gx.to(x.dtype)}


def _cat_adjoint(rec: _Record, grad: Tensor, need: frozenset) -> dict[str, Any]:
    dim = rec.a.get("dim", 0) % grad.dim()
    tensors = rec.a["tensors"]
    # torch.cat skips legacy empty 1-d tensors whatever the rank of the others
    skipped = [t.dim() == 1 and t.numel() == 0 and grad.dim() != 1 for t in tensors]
    pieces = grad.split([0 if s else t.shape[dim] for t, s in zip(tensors, skipped)], dim)
    return {"tensors": [None if s else p for p, s in zip(pieces, skipped)]}


def _stack_adjoint(rec: _Record, grad: Tensor, need: frozenset) -> dict[str, Any]:
    return {"tensors": list(grad.unbind(rec.a.get("dim", 0) % grad.dim()))}


def _sum_adjoint(
    rec: _Record, grad: Tensor, need: frozenset, signs: tuple[int, int] = (1, 1), scaled: str = "other"
) -> dict[str, Any]:
    """add / sub / rsub: ``sign * (alpha if scaled) * grad`` to each operand, un-broadcast."""
    alpha = rec.a.get("alpha", 1)
    out = {}
    for name, sign in zip(("input", "other"), signs):
        if name in need:
            out[name] = _unbroadcast(_scale(grad, sign * alpha if name == scaled else sign), rec.a[name])
    return out


def _neg_adjoint(rec: _Record, grad: Tensor, need: frozenset) -> dict[str, Any]:
    return {"input": -grad}


def _mul_adjoint(rec: _Record, grad: Tensor, need: frozenset) -> dict[str, Any]:
    """Product with a constant (scalar or tensor, broadcast): multiply back and un-broadcast."""
    name, const = ("input", rec.a["other"]) if "input" in need else ("other", rec.a["input"])
    return {name: _unbroadcast(grad * const, rec.a[name])}


def _div_adjoint(rec: _Record, grad: Tensor, need: frozenset) -> dict[str, Any]:
    return {"input": _unbroadcast(grad / rec.a["other"], rec.a["input"])}


def _matmul_adjoint(rec: _Record, grad: Tensor, need: frozenset) -> dict[str, Any]:
    """matmul/mm/bmm with one constant operand, with matmul's 1-d promotion and batch broadcasting."""
    b_name = "other" if "other" in rec.a else "mat2"
    a, b = rec.a["input"], rec.a[b_name]
    a2 = a.unsqueeze(0) if a.dim() == 1 else a
    b2 = b.unsqueeze(-1) if b.dim() == 1 else b
    if a.dim() == 1 and b.dim() == 1:
        g2 = grad.reshape(1, 1)
    else:
        g2 = grad.unsqueeze(-2) if a.dim() == 1 else grad.unsqueeze(-1) if b.dim() == 1 else grad
    if "input" in need:
        return {"input": (g2 @ b2.mT).sum_to_size(a2.shape).reshape(a.shape)}
    return {b_name: (a2.mT @ g2).sum_to_size(b2.shape).reshape(b.shape)}


def _addmm_adjoint(rec: _Record, grad: Tensor, need: frozenset) -> dict[str, Any]:
    a = rec.a
    alpha, out = a.get("alpha", 1), {}
    if "input" in need:
        out["input"] = _unbroadcast(_scale(grad, a.get("beta", 1)), a["input"])
    if "mat1" in need:
        out["mat1"] = _scale(grad @ a["mat2"].mT, alpha)
    if "mat2" in need:
        out["mat2"] = _scale(a["mat1"].mT @ grad, alpha)
    return out


def _linear_adjoint(rec: _Record, grad: Tensor, need: frozenset) -> dict[str, Any]:
    """y = x W^T + b  ->  x_bar = y_bar W (the bias does not enter the transpose)."""
    return {"input": grad.matmul(_arg(rec.step.module, rec.a, "weight"))}


def _conv_adjoint(rec: _Record, grad: Tensor, need: frozenset, transposed: bool = False) -> dict[str, Any]:
    """Convolution (or transposed convolution) -> the opposite one with the same weight and geometry.

    For a plain conv the transposed conv gets the ``output_padding`` that recovers the input size
    (strides drop up to ``stride - 1`` trailing rows); ``padding='same'`` with an even total padding
    pads one more on the right, which is undone by cropping.
    """
    m, a = rec.step.module, rec.a
    w = _arg(m, a, "weight")
    nd = w.dim() - 2
    x = a["input"]
    stride = _ntuple(_arg(m, a, "stride", 1), nd)
    dilation = _ntuple(_arg(m, a, "dilation", 1), nd)
    groups = _arg(m, a, "groups", 1)
    transposed = bool(_arg(m, a, "transposed", transposed))
    padding = _arg(m, a, "padding", 0)
    unbatched = x.dim() == nd + 1
    if unbatched:
        grad = grad.unsqueeze(0)
    in_size = list(x.shape[-nd:])
    if transposed:
        gx = torch.convolution(grad, w, None, stride, _ntuple(padding, nd), dilation, False, [0] * nd, groups)
    else:
        kernel = w.shape[2:]
        if isinstance(padding, str):  # 'valid' or 'same' (stride 1)
            total = [d * (k - 1) if padding == "same" else 0 for d, k in zip(dilation, kernel)]
            pad = [t // 2 for t in total]
            full = [n + t - 2 * p for n, t, p in zip(in_size, total, pad)]
        else:
            pad, full = _ntuple(padding, nd), in_size
        out_size = grad.shape[-nd:]
        out_pad = [
            n - ((o - 1) * s - 2 * p + d * (k - 1) + 1)
            for n, o, s, p, d, k in zip(full, out_size, stride, pad, dilation, kernel)
        ]
        gx = torch.convolution(grad, w, None, stride, pad, dilation, True, out_pad, groups)
    for i, n in enumerate(in_size):
        if gx.shape[2 + i] != n:
            gx = gx.narrow(2 + i, 0, n)
    return {"input": gx.squeeze(0) if unbatched else gx}


def _index_pool_adjoint(rec: _Record, grad: Tensor, need: frozenset, nd: int) -> dict[str, Any]:
    """Max pooling: scatter-add each output adjoint into its arg-max (overlapping windows add up)."""
    x, idx = rec.a["input"], rec.aux
    lead = math.prod(x.shape[: x.dim() - nd])
    spatial = math.prod(x.shape[x.dim() - nd :])
    # in place into a fresh buffer: saves the copy the out-of-place op makes, and stays differentiable
    gx = grad.new_zeros(lead, spatial).scatter_add_(1, idx.reshape(lead, -1), grad.reshape(lead, -1))
    return {"input": gx.reshape(x.shape)}


def _avgpool_adjoint(rec: _Record, grad: Tensor, need: frozenset, nd: int) -> dict[str, Any]:
    """Average pooling: ATen's own backward (handles ceil_mode, count_include_pad, divisor)."""
    m, a = rec.step.module, rec.a
    x = a["input"].detach()  # only its shape matters
    kernel = _ntuple(_arg(m, a, "kernel_size"), nd)
    stride = _ntuple(_arg(m, a, "stride") or kernel, nd)
    padding = _ntuple(_arg(m, a, "padding", 0), nd)
    ceil_mode = _arg(m, a, "ceil_mode", False)
    count_include_pad = _arg(m, a, "count_include_pad", True)
    if nd == 1:  # avg_pool1d is avg_pool2d over an inserted height-1 dimension
        gx = aten.avg_pool2d_backward(
            grad.unsqueeze(-2),
            x.unsqueeze(-2),
            [1, kernel[0]],
            [1, stride[0]],
            [0, padding[0]],
            ceil_mode,
            count_include_pad,
            None,
        )
        return {"input": gx.squeeze(-2)}
    backward = aten.avg_pool2d_backward if nd == 2 else aten.avg_pool3d_backward
    divisor = _arg(m, a, "divisor_override")
    return {"input": backward(grad, x, kernel, stride, padding, ceil_mode, count_include_pad, divisor)}


def _adaptive_avgpool_adjoint(rec: _Record, grad: Tensor, need: frozenset, nd: int) -> dict[str, Any]:
    x = rec.a["input"].detach()  # only its shape matters
    if nd == 1:
        gx = aten._adaptive_avg_pool2d_backward(grad.unsqueeze(-2), x.unsqueeze(-2))
        return {"input": gx.squeeze(-2)}
    backward = aten._adaptive_avg_pool2d_backward if nd == 2 else aten._adaptive_avg_pool3d_backward
    return {"input": backward(grad, x)}


# ---- analysis-time checks ------------------------------------------------------------------------


def _check_pad(step: _Step, prog: AdjointProgram) -> str | None:
    mode = step.binding.get("mode", "constant")
    if mode != "constant":
        return f"pad mode={mode!r} is not supported (only 'constant')"
    return None


def _check_conv(step: _Step, prog: AdjointProgram) -> str | None:
    mode = getattr(step.module, "padding_mode", "zeros")
    if mode != "zeros":
        return f"padding_mode={mode!r} is not supported (only 'zeros')"
    return None


def _check_div(step: _Step, prog: AdjointProgram) -> str | None:
    if step.binding.get("rounding_mode") is not None:
        return "division with a rounding_mode is not affine"
    return None


def _check_pool(step: _Step, prog: AdjointProgram) -> str | None:
    if isinstance(step.binding.get("return_indices"), Node):
        return "return_indices must be a constant"
    return None


def _check_getitem(step: _Step, prog: AdjointProgram) -> str | None:
    src, index = step.binding["input"], step.binding["index"]
    if isinstance(src, Node) and src in prog._piece_nodes:
        return None if isinstance(index, int) else "items of a split are read with an integer index"
    if isinstance(src, Node) and src in prog._tuple_nodes and index != 0:
        return "only the values (item 0) of a max pooling's (values, indices) result are affine"
    return None


def _check_tensor_attr(step: _Step, prog: AdjointProgram) -> str | None:
    if step.binding["name"] not in ("T", "mT"):
        return f"tensor attribute {step.binding['name']!r} is not a supported affine op"
    return None


# --------------------------------------------------------------------------------------------------
# The table: op identity -> (Rule, signature used to bind that spelling's arguments)
# --------------------------------------------------------------------------------------------------

_TABLE: dict[Any, tuple[Rule, _Sig]] = {}


def _aten(name: str) -> Any:
    """``"max_pool2d.default"`` -> the OpOverload, or None when this torch build lacks it."""
    packet, _, overload = name.partition(".")
    return getattr(getattr(aten, packet, None), overload, None)


def _methods(*names: str) -> list[str]:
    return [f"Tensor.{n}" for n in names]


def _register(rule: Rule, sig: str, *keys: Any) -> None:
    """Map each key to ``rule``.  ATen overloads read their signature from their schema, module
    classes take ``(input)``; functions and ``"Tensor.<method>"`` keys are bound with ``sig``."""
    parsed = _Sig.parse(sig)
    for key in keys:
        if key is None:
            continue
        if isinstance(key, torch._ops.OpOverload):
            _TABLE[key] = (rule, _Sig.of_op(key))
        elif isinstance(key, type):
            _TABLE[key] = (rule, _MODULE_SIG)
        else:
            _TABLE[key] = (rule, parsed)


_SHAPE_ARGS = "input, *args, **kwargs"

_register(
    Rule(_identity_adjoint),
    _SHAPE_ARGS,
    nn.Identity,
    operator.pos,
    torch.clone,
    *_methods("contiguous", "clone"),
    _aten("clone.default"),
    _aten("contiguous.default"),
    _aten("alias.default"),
    _aten("lift_fresh_copy.default"),
)
_register(
    Rule(_dropout_adjoint, forward=_dropout_forward),
    "input, p=0.5, training=True, inplace=False",
    nn.Dropout,
    F.dropout,
    torch.dropout,
    _aten("dropout.default"),
)
#: Size/index arguments are integers, so they are never affine data even when computed from an input's
#: shape (torch.export spells `x.view(x.size(0), -1)` with `sym_size` values that the block's prefix computes).
_SIZE_ARGS = ("args", "kwargs", "size", "shape", "sizes", "dim", "index", "start", "end", "step", "length")

_register(
    Rule(_reshape_adjoint, meta_args=_SIZE_ARGS),
    _SHAPE_ARGS,
    nn.Flatten,
    nn.Unflatten,
    torch.flatten,
    torch.unflatten,
    torch.reshape,
    torch.squeeze,
    torch.unsqueeze,
    torch.ravel,
    *_methods("view", "reshape", "flatten", "unflatten", "squeeze", "unsqueeze", "ravel"),
    _aten("view.default"),
    _aten("reshape.default"),
    _aten("_unsafe_view.default"),
    _aten("flatten.using_ints"),
    _aten("unflatten.int"),
    _aten("squeeze.dim"),
    _aten("squeeze.dims"),
    _aten("squeeze.default"),
    _aten("unsqueeze.default"),
)
_register(
    Rule(_expand_adjoint, meta_args=_SIZE_ARGS),
    _SHAPE_ARGS,
    torch.broadcast_to,
    *_methods("expand", "broadcast_to"),
    _aten("expand.default"),
)
# `x.view_as(y)`: y is a template read for its shape (or dtype) only, so it may depend on states
_register(Rule(_reshape_adjoint, meta_args=("other",)), "input, other", *_methods("view_as", "reshape_as"),
          _aten("view_as.default"), _aten("reshape_as.default"))
_register(Rule(_expand_adjoint, meta_args=("other",)), "input, other", *_methods("expand_as"),
          _aten("expand_as.default"))
_register(Rule(_cast_adjoint, meta_args=("other",)), "input, other", *_methods("type_as"), _aten("type_as.default"))
_register(
    Rule(_pad_adjoint, check=_check_pad, meta_args=("pad",)),
    "input, pad, mode='constant', value=None",
    nn.ZeroPad2d,
    nn.ConstantPad2d,
    F.pad,
    _aten("pad.default"),
    _aten("constant_pad_nd.default"),
)
_register(
    Rule(_cast_adjoint),
    _SHAPE_ARGS,
    *_methods("to", "float", "double"),
    _aten("_to_copy.default"),
    _aten("to.dtype"),
)
_register(
    Rule(_transpose_adjoint),
    "input, dim0, dim1",
    torch.transpose,
    torch.swapaxes,
    torch.swapdims,
    *_methods("transpose", "swapaxes", "swapdims"),
    _aten("transpose.int"),
)
_register(Rule(_t_adjoint), "input", torch.t, *_methods("t"), _aten("t.default"))
_register(Rule(_permute_adjoint), "input, dims", torch.permute, _aten("permute.default"))
_register(Rule(_permute_adjoint), "input, *dims", *_methods("permute"))
_register(
    Rule(_movedim_adjoint),
    "input, source, destination",
    torch.movedim,
    torch.moveaxis,
    *_methods("movedim", "moveaxis"),
)
_register(Rule(_tensor_attr_adjoint, check=_check_tensor_attr), "input, name", getattr)
_register(
    Rule(_getitem_adjoint, forward=_getitem_forward, check=_check_getitem), "input, index", operator.getitem
)
for _kind, _sig, _keys in (
    ("split", "input, split_size, dim=0", (torch.split, *_methods("split"), _aten("split.Tensor"),
                                           _aten("split_with_sizes.default"))),
    ("chunk", "input, chunks, dim=0", (torch.chunk, *_methods("chunk"), _aten("chunk.default"))),
    ("unbind", "input, dim=0", (torch.unbind, *_methods("unbind"), _aten("unbind.int"))),
):
    _register(Rule(_pieces_adjoint, forward=partial(_pieces_forward, kind=_kind), pieces=True,
                   meta_args=_SIZE_ARGS + ("split_size", "split_sizes", "chunks")), _sig, *_keys)
_PIECE_ITEM = Rule(_piece_item_adjoint, check=_check_getitem)

_register(Rule(_select_adjoint, meta_args=_SIZE_ARGS), "input, dim, index", torch.select, *_methods("select"), _aten("select.int"))
_register(
    Rule(_slice_adjoint, meta_args=_SIZE_ARGS),
    "input, dim, start, length",
    torch.narrow,
    *_methods("narrow"),
    _aten("narrow.default"),
)
_register(Rule(_slice_adjoint, meta_args=_SIZE_ARGS), "", _aten("slice.Tensor"))

_register(
    Rule(partial(_reduce_adjoint, mean=True)),
    "input, dim=None, keepdim=False, dtype=None",
    torch.mean,
    *_methods("mean"),
    _aten("mean.default"),
    _aten("mean.dim"),
)
_register(
    Rule(partial(_reduce_adjoint, mean=False)),
    "input, dim=None, keepdim=False, dtype=None",
    torch.sum,
    *_methods("sum"),
    _aten("sum.default"),
    _aten("sum.dim_IntList"),
)
_register(
    Rule(_cat_adjoint, data_args=("tensors",)),
    "tensors, dim=0",
    torch.cat,
    torch.concat,
    torch.concatenate,
    _aten("cat.default"),
)
_register(Rule(_stack_adjoint, data_args=("tensors",)), "tensors, dim=0", torch.stack, _aten("stack.default"))

_BINARY = ("input", "other")
_register(
    Rule(_sum_adjoint, data_args=_BINARY),
    "input, other, alpha=1",
    operator.add,
    torch.add,
    *_methods("add", "__add__", "__radd__"),
    _aten("add.Tensor"),
    _aten("add.Scalar"),
)
_register(
    Rule(partial(_sum_adjoint, signs=(1, -1)), data_args=_BINARY),
    "input, other, alpha=1",
    operator.sub,
    torch.sub,
    torch.subtract,
    *_methods("sub", "subtract", "__sub__"),
    _aten("sub.Tensor"),
    _aten("sub.Scalar"),
)
_register(
    Rule(partial(_sum_adjoint, signs=(-1, 1), scaled="input"), data_args=_BINARY),
    "input, other, alpha=1",
    torch.rsub,
    *_methods("__rsub__"),
    _aten("rsub.Scalar"),
    _aten("rsub.Tensor"),
)
_register(
    Rule(_neg_adjoint),
    "input",
    operator.neg,
    torch.neg,
    torch.negative,
    *_methods("neg", "negative", "__neg__"),
    _aten("neg.default"),
)
_register(
    Rule(_mul_adjoint, data_args=_BINARY, exclusive=_BINARY),
    "input, other",
    operator.mul,
    torch.mul,
    torch.multiply,
    *_methods("mul", "multiply", "__mul__", "__rmul__"),
    _aten("mul.Tensor"),
    _aten("mul.Scalar"),
)
_register(
    Rule(_div_adjoint, check=_check_div),
    "input, other, rounding_mode=None",
    operator.truediv,
    torch.div,
    torch.divide,
    torch.true_divide,
    *_methods("div", "divide", "true_divide", "__truediv__"),
    _aten("div.Tensor"),
    _aten("div.Scalar"),
)
_MATMUL = ("input", "other", "mat2")
_register(
    Rule(_matmul_adjoint, data_args=_MATMUL, exclusive=_MATMUL),
    "input, other",
    operator.matmul,
    torch.matmul,
    torch.mm,
    torch.bmm,
    *_methods("matmul", "mm", "bmm", "__matmul__"),
    _aten("matmul.default"),
    _aten("mm.default"),
    _aten("bmm.default"),
)
_register(
    Rule(_addmm_adjoint, data_args=("input", "mat1", "mat2"), exclusive=("mat1", "mat2")),
    "input, mat1, mat2, beta=1, alpha=1",
    torch.addmm,
    *_methods("addmm"),
    _aten("addmm.default"),
)
_register(Rule(_linear_adjoint), "input, weight, bias=None", nn.Linear, F.linear, _aten("linear.default"))

_CONV_SIG = "input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1"
_CONV_T_SIG = "input, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1, dilation=1"
_register(
    Rule(_conv_adjoint, check=_check_conv),
    _CONV_SIG,
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.ConvTranspose1d,
    nn.ConvTranspose2d,
    nn.ConvTranspose3d,
    F.conv1d,
    F.conv2d,
    F.conv3d,
    *(_aten(f"conv{n}d.{o}") for n in (1, 2, 3) for o in ("default", "padding")),
)
_register(
    Rule(partial(_conv_adjoint, transposed=True)),
    _CONV_T_SIG,
    F.conv_transpose1d,
    F.conv_transpose2d,
    F.conv_transpose3d,
    *(_aten(f"conv_transpose{n}d.input") for n in (1, 2, 3)),
)
_register(
    Rule(_conv_adjoint),
    "input, weight, bias, stride, padding, dilation, transposed, output_padding, groups",
    torch.convolution,
    _aten("convolution.default"),
)

_MAXPOOL_SIG = "input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False"
_AVGPOOL_SIG = "input, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True, divisor_override=None"
for _nd in (1, 2, 3):
    _max = partial(_index_pool_adjoint, nd=_nd)
    _register(
        Rule(_max, forward=partial(_maxpool_forward, nd=_nd, adaptive=False), check=_check_pool),
        _MAXPOOL_SIG,
        getattr(nn, f"MaxPool{_nd}d"),
        getattr(F, f"max_pool{_nd}d"),
        getattr(torch, f"max_pool{_nd}d"),
        _aten(f"max_pool{_nd}d.default"),
    )
    _register(
        Rule(_max, forward=partial(_maxpool_forward, nd=_nd, adaptive=False), tuple_out=True),
        _MAXPOOL_SIG,
        getattr(F, f"max_pool{_nd}d_with_indices"),
        _aten(f"max_pool{_nd}d_with_indices.default"),
    )
    _register(
        Rule(_max, forward=partial(_maxpool_forward, nd=_nd, adaptive=True), check=_check_pool),
        "input, output_size, return_indices=False",
        getattr(nn, f"AdaptiveMaxPool{_nd}d"),
        getattr(F, f"adaptive_max_pool{_nd}d"),
    )
    _register(
        Rule(_max, forward=partial(_maxpool_forward, nd=_nd, adaptive=True), tuple_out=True),
        "input, output_size",
        _aten(f"adaptive_max_pool{_nd}d.default"),
    )
    _register(
        Rule(partial(_avgpool_adjoint, nd=_nd)),
        _AVGPOOL_SIG,
        getattr(nn, f"AvgPool{_nd}d"),
        getattr(F, f"avg_pool{_nd}d"),
        _aten(f"avg_pool{_nd}d.default"),
    )
    _register(
        Rule(partial(_adaptive_avgpool_adjoint, nd=_nd)),
        "input, output_size",
        getattr(nn, f"AdaptiveAvgPool{_nd}d"),
        getattr(F, f"adaptive_avg_pool{_nd}d"),
        _aten(f"adaptive_avg_pool{_nd}d.default"),
        _aten(f"_adaptive_avg_pool{_nd}d.default"),
    )

# Nodes that read only a tensor's metadata: their value does not vary with the tensor's values, so they
# do not make their users data nodes (``x.view(x.size(0), -1)`` is a reshape of x, not a product).
_META_METHODS = frozenset(
    {"size", "dim", "ndimension", "numel", "nelement", "stride", "element_size", "get_device"}
)
_META_ATTRS = frozenset({"shape", "ndim", "dtype", "device", "is_cuda", "layout", "requires_grad"})
_META_FUNCTIONS = frozenset(
    f
    for f in (len, torch.numel, _aten("sym_size.int"), _aten("sym_numel.default"), _aten("sym_stride.int"))
    if f is not None
)


def _is_meta_query(node: Node) -> bool:
    if node.op == "call_method":
        return node.target in _META_METHODS
    if node.op == "call_function":
        if node.target is getattr:
            return len(node.args) > 1 and node.args[1] in _META_ATTRS
        return node.target in _META_FUNCTIONS
    return False


# --------------------------------------------------------------------------------------------------
# The program
# --------------------------------------------------------------------------------------------------


@dataclass(eq=False)
class _Step:
    """One live node of the graph, ready to run: constant (``rule is None``) or data."""

    node: Node
    target: Any  # the callable, the module (call_module), or (owner, attribute) for get_attr
    rule: Rule | None = None
    binding: dict[str, Any] | None = None  # parameter name -> template (Node / literal / list)
    need_all: frozenset = frozenset()  # parameters with a placeholder dependency
    need_state: frozenset = frozenset()  # parameters with a state dependency
    on_state_path: bool = False
    tuple_out: bool = False

    @property
    def module(self) -> nn.Module | None:
        return self.target if self.node.op == "call_module" else None

    def run(self, env: Mapping[Node, Any]) -> Any:
        """Evaluate the node exactly as torch.fx's Interpreter would."""
        op = self.node.op
        if op == "get_attr":
            owner, name = self.target
            return getattr(owner, name)
        args = map_arg(self.node.args, env.__getitem__)
        kwargs = map_arg(self.node.kwargs, env.__getitem__)
        if op == "call_method":
            return getattr(args[0], self.target)(*args[1:], **kwargs)
        return self.target(*args, **kwargs)


def _target_name(node: Node, gm: GraphModule) -> str:
    if node.op == "call_module":
        return f"{node.target} ({type(gm.get_submodule(node.target)).__name__})"
    if node.op == "call_method":
        return f"Tensor.{node.target}"
    if isinstance(node.target, torch._ops.OpOverload):
        return f"aten.{node.target.__name__}"
    try:
        return torch.fx.node._get_qualified_name(node.target)
    except Exception:
        return repr(node.target)


def _nodes_in(template: Any) -> list[Node]:
    found: list[Node] = []
    map_arg(template, found.append)
    return found


def _live_nodes(output: Node) -> set[Node]:
    """Nodes the output depends on (drops e.g. ``_guards_fn`` calls and other dead nodes)."""
    live, stack = set(), [output]
    while stack:
        node = stack.pop()
        if node not in live:
            live.add(node)
            stack.extend(node.all_input_nodes)
    return live


class AdjointProgram:
    """Forward pass plus hand-written transpose of an affine synapse graph (no autograd calls).

    ``gm`` has ``n_inputs`` input placeholders followed by one state placeholder per output, and
    returns the tuple of pre-activations ``(u_1, ..., u_n)``, each affine in the placeholders.
    Raises :class:`UnsupportedOpError` naming the first placeholder-dependent node that is not a
    supported affine op.
    """

    def __init__(self, gm: GraphModule, n_inputs: int) -> None:
        self.gm = gm
        self.n_inputs = n_inputs
        graph = gm.graph
        self._placeholders = [n for n in graph.nodes if n.op == "placeholder"]
        output = next(n for n in reversed(graph.nodes) if n.op == "output")
        outs = output.args[0]
        self._outputs: tuple[Any, ...] = tuple(outs) if isinstance(outs, (tuple, list)) else (outs,)
        self.n_states = len(self._placeholders) - n_inputs
        if n_inputs < 0 or self.n_states != len(self._outputs):
            raise ValueError(
                f"synapse graph has {len(self._placeholders)} placeholders and {len(self._outputs)} outputs;"
                f" expected {n_inputs} inputs followed by one state per output"
            )
        self._data: set[Node] = set(self._placeholders)
        self._state_dep: set[Node] = set(self._placeholders[n_inputs:])
        self._tuple_nodes: set[Node] = set()
        self._piece_nodes: set[Node] = set()
        self._steps: list[_Step] = []
        live = _live_nodes(output)
        for node in graph.nodes:
            if node in live and node.op not in ("placeholder", "output"):
                self._steps.append(self._analyse(node))
        for t in self._outputs:
            if isinstance(t, Node) and t in self._tuple_nodes:
                raise self._unsupported(t, "a (values, indices) tuple cannot be a pre-activation")

    # ---- analysis ----

    def _unsupported(self, node: Node, why: str) -> UnsupportedOpError:
        return UnsupportedOpError(
            f"node '{node.name}' ({node.op} {_target_name(node, self.gm)}) cannot be transposed by the"
            f" adjoint fast path: {why}"
        )

    def _lookup(self, node: Node) -> tuple[Rule, _Sig] | None:
        if node.op == "call_module":
            cls = type(self.gm.get_submodule(node.target))
            for base in cls.__mro__:  # a subclass that keeps its base's forward behaves like the base
                if base in _TABLE and (base is cls or cls.forward is base.forward):
                    return _TABLE[base]
            return None
        if node.op == "call_method":
            return _TABLE.get(f"Tensor.{node.target}")
        if node.op == "call_function":
            try:
                return _TABLE.get(node.target)
            except TypeError:  # unhashable target
                return None
        return None

    def _analyse(self, node: Node) -> _Step:
        if node.op == "get_attr":
            owner_path, _, name = node.target.rpartition(".")
            return _Step(node, (self.gm.get_submodule(owner_path), name))
        target = self.gm.get_submodule(node.target) if node.op == "call_module" else node.target
        step = _Step(node, target)
        deps = [n for n in node.all_input_nodes if n in self._data]
        if not deps or _is_meta_query(node):
            return step  # constant: evaluated as is on every call
        self._data.add(node)
        for n in deps:
            if n in self._tuple_nodes and node.target is not operator.getitem:
                raise self._unsupported(node, f"it consumes the (values, indices) tuple '{n.name}' directly")
            if n in self._piece_nodes and node.target is not operator.getitem:
                raise self._unsupported(node, f"it consumes the pieces of '{n.name}' as one tuple")
        found = self._lookup(node)
        if found is None:
            raise self._unsupported(
                node, "it depends on an input/state but is not one of the affine ops this fast path supports"
            )
        rule, sig = found
        try:
            step.binding = sig.bind(node.args, node.kwargs)
        except ValueError as exc:
            raise self._unsupported(node, f"unexpected arguments ({exc})") from None
        src = step.binding.get("input")
        if node.target is operator.getitem and isinstance(src, Node) and src in self._piece_nodes:
            rule = _PIECE_ITEM
        step.rule = rule
        if rule.pieces:
            self._piece_nodes.add(node)
        data_names = {k for k, v in step.binding.items()
                      if k not in rule.meta_args and any(n in self._data for n in _nodes_in(v))}
        bad = sorted(data_names - set(rule.data_args))
        if bad:
            raise self._unsupported(
                node,
                f"argument(s) {bad} depend on an input/state; the op is affine only in {list(rule.data_args)}",
            )
        if len(data_names & set(rule.exclusive)) > 1:
            raise self._unsupported(
                node,
                f"it multiplies two operands that both depend on inputs/states ({sorted(data_names)}):"
                " the result is not affine",
            )
        if rule.check is not None and (why := rule.check(step, self)) is not None:
            raise self._unsupported(node, why)
        step.need_all = frozenset(data_names)
        step.need_state = frozenset(
            k for k in data_names if any(n in self._state_dep for n in _nodes_in(step.binding[k]))
        )
        step.on_state_path = bool(step.need_state)
        if step.on_state_path:
            self._state_dep.add(node)
        module = step.module
        step.tuple_out = rule.tuple_out or bool(
            getattr(module, "return_indices", False)
            if module is not None
            else step.binding.get("return_indices")
        )
        if step.tuple_out:
            self._tuple_nodes.add(node)
        return step

    # ---- evaluation ----

    def __call__(
        self, inputs: Sequence[Tensor], states: Sequence[Tensor], need_input_feedback: bool = False
    ) -> tuple[list[Tensor], list[Tensor], list[Tensor | None]]:
        """Return ``(u, g, h)``: pre-activations, ``dPhi/ds_k``, and (if requested) input feedbacks.

        ``h_i`` is None unless ``need_input_feedback`` and input ``i`` reaches some output.
        """
        if len(inputs) != self.n_inputs or len(states) != self.n_states:
            raise ValueError(
                f"expected {self.n_inputs} inputs and {self.n_states} states, got {len(inputs)} and {len(states)}"
            )
        env: dict[Node, Any] = dict(zip(self._placeholders, [*inputs, *states]))
        lookup = env.__getitem__
        tape: list[_Record] = []
        for step in self._steps:
            rule = step.rule
            record = rule is not None and (need_input_feedback or step.on_state_path)
            if rule is None or (rule.forward is None and not record):
                env[step.node] = step.run(env)
                continue
            a = map_arg(step.binding, lookup)
            out, aux = (step.run(env), None) if rule.forward is None else rule.forward(step, a)
            env[step.node] = out
            if record:
                tape.append(_Record(step, a, aux))

        # reverse sweep: adjoint of every data node, seeded with s_j at output j
        wanted = self._data if need_input_feedback else self._state_dep
        adj: dict[Node, Tensor] = {}

        def accumulate(node: Any, grad: Tensor | None) -> None:
            if grad is None or not isinstance(node, Node) or node not in wanted:
                return
            prev = adj.get(node)
            adj[node] = grad if prev is None else prev + grad

        for t, s in zip(self._outputs, states):
            accumulate(t, s)
        for rec in reversed(tape):
            grad = adj.pop(rec.step.node, None)
            if grad is None:
                continue
            need = rec.step.need_all if need_input_feedback else rec.step.need_state
            for name, contribution in rec.step.rule.adjoint(rec, grad, need).items():
                template = rec.step.binding[name]
                if isinstance(template, (list, tuple)):
                    for t, c in zip(template, contribution):
                        accumulate(t, c)
                else:
                    accumulate(template, contribution)

        u = [map_arg(t, lookup) for t in self._outputs]
        state_nodes = self._placeholders[self.n_inputs :]
        g = [u_k + adj[p] if p in adj else u_k for u_k, p in zip(u, state_nodes)]
        h = [adj.get(p) if need_input_feedback else None for p in self._placeholders[: self.n_inputs]]
        return u, g, h

    def phi_grad(self, inputs: Sequence[Tensor], states: Sequence[Tensor]) -> list[Tensor]:
        """``g_k = dPhi/ds_k`` only."""
        return self(inputs, states)[1]


def unsupported_reason(gm: GraphModule, n_inputs: int) -> str | None:
    """Why :class:`AdjointProgram` cannot handle ``gm`` (the error message), or None if it can."""
    try:
        AdjointProgram(gm, n_inputs)
    except UnsupportedOpError as exc:
        return str(exc)
    return None
