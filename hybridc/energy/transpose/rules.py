"""The transpose rules: how to run one affine op forward (keeping what its transpose needs, e.g. max-pool
indices) and how to transpose it (linear -> matmul with the weight, conv -> transposed conv, max-pool ->
scatter into the arg-max positions, reshape -> reshape back, cat -> split, ...), and the analysis-time checks
that refuse spellings a rule cannot honour. One file over 400 lines on purpose: some 30 small rules that
are read and checked side by side (each is a few lines of the op's adjoint algebra)."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.fx import Node

aten = torch.ops.aten

if TYPE_CHECKING:
    from hybridc.energy.transpose.program import TransposeProgram, _Step


class Record(NamedTuple):
    """What the forward pass of one data node leaves for its transpose."""

    step: _Step
    a: Mapping[str, Any]  # bound, resolved arguments (tensors, ints, ...)
    aux: Any  # rule-specific extra (max-pool indices, dropout mask, gather positions) or None


ForwardFn = Callable[["_Step", Mapping[str, Any]], tuple[Any, Any]]
AdjointFn = Callable[[Record, Tensor, frozenset], dict[str, Any]]
CheckFn = Callable[["_Step", "TransposeProgram"], "str | None"]


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
    stochastic: bool = False  # draws random numbers (dropout's mask): its value is never reused


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


def maxpool_forward(step: _Step, a: Mapping[str, Any], nd: int, adaptive: bool) -> tuple[Any, Any]:
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


def dropout_forward(step: _Step, a: Mapping[str, Any]) -> tuple[Any, Any]:
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


def getitem_forward(step: _Step, a: Mapping[str, Any]) -> tuple[Any, Any]:
    """``x[index]``; for advanced indexing also the flat source position of every output element."""
    x, index = a["input"], a["index"]
    out = x[index]
    if isinstance(x, (tuple, list)) or _is_basic_index(index):
        return out, None
    return out, torch.arange(x.numel(), device=x.device).view(x.shape)[index]


# ---- adjoint rules -------------------------------------------------------------------------------


def identity_adjoint(rec: Record, grad: Tensor, need: frozenset) -> dict[str, Any]:
    return {"input": grad}


def dropout_adjoint(rec: Record, grad: Tensor, need: frozenset) -> dict[str, Any]:
    return {"input": grad if rec.aux is None else grad * rec.aux}


def reshape_adjoint(rec: Record, grad: Tensor, need: frozenset) -> dict[str, Any]:
    return {"input": grad.reshape(rec.a["input"].shape)}


def expand_adjoint(rec: Record, grad: Tensor, need: frozenset) -> dict[str, Any]:
    return {"input": _unbroadcast(grad, rec.a["input"])}


def cast_adjoint(rec: Record, grad: Tensor, need: frozenset) -> dict[str, Any]:
    x = rec.a["input"]
    return {"input": grad.to(dtype=x.dtype, device=x.device)}


def transpose_adjoint(rec: Record, grad: Tensor, need: frozenset) -> dict[str, Any]:
    return {"input": grad.transpose(rec.a["dim0"], rec.a["dim1"])}


def t_adjoint(rec: Record, grad: Tensor, need: frozenset) -> dict[str, Any]:
    return {"input": grad.t()}


def permute_adjoint(rec: Record, grad: Tensor, need: frozenset) -> dict[str, Any]:
    n = grad.dim()
    inverse = [0] * n
    for i, d in enumerate(rec.a["dims"]):
        inverse[d % n] = i
    return {"input": grad.permute(inverse)}


def movedim_adjoint(rec: Record, grad: Tensor, need: frozenset) -> dict[str, Any]:
    return {"input": grad.movedim(rec.a["destination"], rec.a["source"])}


def tensor_attr_adjoint(rec: Record, grad: Tensor, need: frozenset) -> dict[str, Any]:
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


def _pieces_of(x: Tensor, rec: Record) -> tuple[Tensor, ...]:
    """The pieces the recorded split/chunk/unbind makes of `x` (views of it)."""
    a, kind = rec.a, rec.aux
    dim = a.get("dim", 0)
    if kind == "split":
        return torch.split(x, a.get("split_size", a.get("split_sizes")), dim)
    if kind == "chunk":
        return torch.chunk(x, a["chunks"], dim)
    return torch.unbind(x, dim)


def pieces_forward(step: _Step, a: Mapping[str, Any], kind: str) -> tuple[Any, Any]:
    rec = Record(step, a, kind)
    return _pieces_of(a["input"], rec), kind


def pieces_adjoint(rec: Record, grad: _Pieces, need: frozenset) -> dict[str, Any]:
    """Split's transpose: each item's adjoint written into its place of a zero tensor (the pieces are
    views of it), so unread items contribute zeros."""
    x = rec.a["input"]
    gx = next(iter(grad.values())).new_zeros(x.shape)
    views = _pieces_of(gx, rec)
    for i, g in grad.items():
        views[i].copy_(g)
    return {"input": gx}


def piece_item_adjoint(rec: Record, grad: Tensor, need: frozenset) -> dict[str, Any]:
    return {"input": _Pieces({int(rec.a["index"]): grad})}


def getitem_adjoint(rec: Record, grad: Tensor, need: frozenset) -> dict[str, Any]:
    x = rec.a["input"]
    if isinstance(x, (tuple, list)):  # values of a (values, indices) max-pool: the pool's adjoint
        return {"input": grad}
    if rec.aux is None:
        gx = grad.new_zeros(x.shape)
        gx[rec.a["index"]] = grad
    else:
        gx = grad.new_zeros(x.numel()).index_add_(0, rec.aux.reshape(-1), grad.reshape(-1)).view(x.shape)
    return {"input": gx}


def select_adjoint(rec: Record, grad: Tensor, need: frozenset) -> dict[str, Any]:
    x = rec.a["input"]
    return {"input": torch.select_scatter(grad.new_zeros(x.shape), grad, rec.a["dim"], rec.a["index"])}


def pad_adjoint(rec: Record, grad: Tensor, need: frozenset) -> dict[str, Any]:
    """Constant padding adds constants around x: its transpose crops them off (negative padding)."""
    pad = _arg(rec.step.module, rec.a, "padding") if rec.step.module is not None else rec.a["pad"]
    return {"input": F.pad(grad, [-int(p) for p in pad])}


def slice_adjoint(rec: Record, grad: Tensor, need: frozenset) -> dict[str, Any]:
    a, x = rec.a, rec.a["input"]
    zeros = grad.new_zeros(x.shape)
    if "length" in a:  # narrow(dim, start, length)
        start = a["start"] % x.shape[a["dim"]]
        return {"input": torch.slice_scatter(zeros, grad, a["dim"], start, start + a["length"])}
    return {"input": torch.slice_scatter(zeros, grad, a["dim"], a["start"], a["end"], a["step"])}


def reduce_adjoint(rec: Record, grad: Tensor, need: frozenset, mean: bool) -> dict[str, Any]:
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


def cat_adjoint(rec: Record, grad: Tensor, need: frozenset) -> dict[str, Any]:
    dim = rec.a.get("dim", 0) % grad.dim()
    tensors = rec.a["tensors"]
    # torch.cat skips legacy empty 1-d tensors whatever the rank of the others
    skipped = [t.dim() == 1 and t.numel() == 0 and grad.dim() != 1 for t in tensors]
    pieces = grad.split([0 if s else t.shape[dim] for t, s in zip(tensors, skipped)], dim)
    return {"tensors": [None if s else p for p, s in zip(pieces, skipped)]}


def stack_adjoint(rec: Record, grad: Tensor, need: frozenset) -> dict[str, Any]:
    return {"tensors": list(grad.unbind(rec.a.get("dim", 0) % grad.dim()))}


def sum_adjoint(
    rec: Record, grad: Tensor, need: frozenset, signs: tuple[int, int] = (1, 1), scaled: str = "other"
) -> dict[str, Any]:
    """add / sub / rsub: ``sign * (alpha if scaled) * grad`` to each operand, un-broadcast."""
    alpha = rec.a.get("alpha", 1)
    out = {}
    for name, sign in zip(("input", "other"), signs):
        if name in need:
            out[name] = _unbroadcast(_scale(grad, sign * alpha if name == scaled else sign), rec.a[name])
    return out


def neg_adjoint(rec: Record, grad: Tensor, need: frozenset) -> dict[str, Any]:
    return {"input": -grad}


def mul_adjoint(rec: Record, grad: Tensor, need: frozenset) -> dict[str, Any]:
    """Product with a constant (scalar or tensor, broadcast): multiply back and un-broadcast."""
    name, const = ("input", rec.a["other"]) if "input" in need else ("other", rec.a["input"])
    return {name: _unbroadcast(grad * const, rec.a[name])}


def div_adjoint(rec: Record, grad: Tensor, need: frozenset) -> dict[str, Any]:
    return {"input": _unbroadcast(grad / rec.a["other"], rec.a["input"])}


def matmul_adjoint(rec: Record, grad: Tensor, need: frozenset) -> dict[str, Any]:
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


def addmm_adjoint(rec: Record, grad: Tensor, need: frozenset) -> dict[str, Any]:
    a = rec.a
    alpha, out = a.get("alpha", 1), {}
    if "input" in need:
        out["input"] = _unbroadcast(_scale(grad, a.get("beta", 1)), a["input"])
    if "mat1" in need:
        out["mat1"] = _scale(grad @ a["mat2"].mT, alpha)
    if "mat2" in need:
        out["mat2"] = _scale(a["mat1"].mT @ grad, alpha)
    return out


def linear_adjoint(rec: Record, grad: Tensor, need: frozenset) -> dict[str, Any]:
    """y = x W^T + b  ->  x_bar = y_bar W (the bias does not enter the transpose)."""
    return {"input": grad.matmul(_arg(rec.step.module, rec.a, "weight"))}


def conv_adjoint(rec: Record, grad: Tensor, need: frozenset, transposed: bool = False) -> dict[str, Any]:
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


def _channels_last(t: Tensor) -> bool:
    """Stored NHWC (and not also plain contiguous, as size-1 dimensions allow)."""
    return t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()


def index_pool_adjoint(rec: Record, grad: Tensor, need: frozenset, nd: int) -> dict[str, Any]:
    """Max pooling: scatter-add each output adjoint into its arg-max (overlapping windows add up)."""
    x, idx = rec.a["input"], rec.aux
    if nd == 2 and x.dim() == 4 and _channels_last(grad) and _channels_last(idx):
        # channels-last relaxation: scatter over (N, H·W, C) views of the NHWC memory instead of copying
        # grad and indices to NCHW (and the result back)
        n, c, h, w = x.shape
        src = grad.permute(0, 2, 3, 1).reshape(n, -1, c)
        pos = idx.permute(0, 2, 3, 1).reshape(n, -1, c)
        gx = grad.new_zeros(n, h * w, c).scatter_add_(1, pos, src)
        return {"input": gx.view(n, h, w, c).permute(0, 3, 1, 2)}
    lead = math.prod(x.shape[: x.dim() - nd])
    spatial = math.prod(x.shape[x.dim() - nd :])
    # in place into a fresh buffer: saves the copy the out-of-place op makes, and stays differentiable
    gx = grad.new_zeros(lead, spatial).scatter_add_(1, idx.reshape(lead, -1), grad.reshape(lead, -1))
    return {"input": gx.reshape(x.shape)}


def avgpool_adjoint(rec: Record, grad: Tensor, need: frozenset, nd: int) -> dict[str, Any]:
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


def adaptive_avgpool_adjoint(rec: Record, grad: Tensor, need: frozenset, nd: int) -> dict[str, Any]:
    x = rec.a["input"].detach()  # only its shape matters
    if nd == 1:
        gx = aten._adaptive_avg_pool2d_backward(grad.unsqueeze(-2), x.unsqueeze(-2))
        return {"input": gx.squeeze(-2)}
    backward = aten._adaptive_avg_pool2d_backward if nd == 2 else aten._adaptive_avg_pool3d_backward
    return {"input": backward(grad, x)}


# ---- analysis-time checks ------------------------------------------------------------------------


def check_pad(step: _Step, prog: TransposeProgram) -> str | None:
    mode = step.binding.get("mode", "constant")
    if mode != "constant":
        return f"pad mode={mode!r} is not supported (only 'constant')"
    return None


def check_conv(step: _Step, prog: TransposeProgram) -> str | None:
    mode = getattr(step.module, "padding_mode", "zeros")
    if mode != "zeros":
        return f"padding_mode={mode!r} is not supported (only 'zeros')"
    return None


def check_div(step: _Step, prog: TransposeProgram) -> str | None:
    if step.binding.get("rounding_mode") is not None:
        return "division with a rounding_mode is not affine"
    return None


def check_pool(step: _Step, prog: TransposeProgram) -> str | None:
    if isinstance(step.binding.get("return_indices"), Node):
        return "return_indices must be a constant"
    return None


def check_getitem(step: _Step, prog: TransposeProgram) -> str | None:
    src, index = step.binding["input"], step.binding["index"]
    if isinstance(src, Node) and src in prog._piece_nodes:
        return None if isinstance(index, int) else "items of a split are read with an integer index"
    if isinstance(src, Node) and src in prog._tuple_nodes and index != 0:
        return "only the values (item 0) of a max pooling's (values, indices) result are affine"
    return None


def check_tensor_attr(step: _Step, prog: TransposeProgram) -> str | None:
    if step.binding["name"] not in ("T", "mT"):
        return f"tensor attribute {step.binding['name']!r} is not a supported affine op"
    return None
