"""The op table: an op's spelling (module class, torch function, ATen overload or `"Tensor.<method>"`) ->
its identity, the transpose rule and the signature that binds that spelling's arguments. Shape and
metadata queries (`x.size(0)`, `x.shape`) are recognised here too: they never carry data.

The table is keyed by spelling, not identity, because spellings of one op bind their arguments
differently (``aten.convolution`` vs ``F.conv2d``) and some need their own rule (``x.view_as(y)`` reads
``y`` only for its shape). Each entry still names its identity, and that name must be the one
:func:`hybridc.passes.ops.spelling_key` gives the spelling: the table speaks the passes' vocabulary, and
registering a spelling under another name fails at import.

One module over 400 lines on purpose: it is one table (some 240 spellings in some 40 groups), read as one."""

from __future__ import annotations

import operator
from functools import partial
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.fx import Node

from hybridc.energy.transpose import rules as R
from hybridc.energy.transpose.binding import MODULE_SIGNATURE, Signature
from hybridc.passes.ops import spelling_key

aten = torch.ops.aten


class Entry(NamedTuple):
    """One spelling's entry: its identity (``hybridc.passes.ops`` vocabulary), how to run and transpose it,
    and how its arguments bind to the rule's parameter names."""

    identity: str
    rule: R.Rule
    signature: Signature


TABLE: dict[Any, Entry] = {}


def _aten(name: str) -> Any:
    """``"max_pool2d.default"`` -> the OpOverload, or None when this torch build lacks it."""
    packet, _, overload = name.partition(".")
    return getattr(getattr(aten, packet, None), overload, None)


def _methods(*names: str) -> list[str]:
    return [f"Tensor.{n}" for n in names]


def _register(identity: str, rule: R.Rule, sig: str, *keys: Any) -> None:
    """Map each key (spelling) to ``(identity, rule, signature)``.  ATen overloads read their signature
    from their schema, module classes take ``(input)``; functions and ``"Tensor.<method>"`` keys are
    bound with ``sig``.  ``None`` keys (ATen overloads this torch build lacks) are skipped.

    Raises ValueError, before registering any key, when ``hybridc.passes.ops`` gives a key another
    identity than ``identity``: the two tables must not drift apart."""
    keys = tuple(k for k in keys if k is not None)
    for key in keys:
        known = spelling_key(key)
        if known != identity:
            raise ValueError(
                f"transpose table: {key!r} is registered as {identity!r}, but hybridc.passes.ops names it"
                f" {known!r}; register it under {known!r} or fix the alias in hybridc/passes/ops.py"
            )
    parsed = Signature.parse(sig)
    for key in keys:
        if isinstance(key, torch._ops.OpOverload):
            TABLE[key] = Entry(identity, rule, Signature.of_op(key))
        elif isinstance(key, type):
            TABLE[key] = Entry(identity, rule, MODULE_SIGNATURE)
        else:
            TABLE[key] = Entry(identity, rule, parsed)


_SHAPE_ARGS = "input, *args, **kwargs"

# One Rule object may serve several identities (flatten, squeeze and view all reshape back): each
# `_register` call below names the identity its spellings have, so such a rule is registered once per name.
_IDENTITY = R.Rule(R.identity_adjoint)
_register(
    "identity",
    _IDENTITY,
    _SHAPE_ARGS,
    nn.Identity,
    torch.clone,
    *_methods("contiguous", "clone"),
    _aten("clone.default"),
    _aten("contiguous.default"),
    _aten("alias.default"),
    _aten("lift_fresh_copy.default"),
)
# `+x`: ops.py's "pos", one of its affine SHAPE_OPS rather than a PURE_SHAPE_OPS member
_register("pos", _IDENTITY, _SHAPE_ARGS, operator.pos)
_register(
    "dropout",
    R.Rule(R.dropout_adjoint, forward=R.dropout_forward, stochastic=True),
    "input, p=0.5, training=True, inplace=False",
    nn.Dropout,
    F.dropout,
    torch.dropout,
    _aten("dropout.default"),
)
#: Size/index arguments are integers, so they are never affine data even when computed from an input's
#: shape (torch.export spells `x.view(x.size(0), -1)` with `sym_size` values that the block's prefix computes).
_SIZE_ARGS = ("args", "kwargs", "size", "shape", "sizes", "dim", "index", "start", "end", "step", "length")

_RESHAPE = R.Rule(R.reshape_adjoint, meta_args=_SIZE_ARGS)
_register(
    "flatten",
    _RESHAPE,
    _SHAPE_ARGS,
    nn.Flatten,
    torch.flatten,
    *_methods("flatten"),
    _aten("flatten.using_ints"),
)
_register(
    "unflatten",
    _RESHAPE,
    _SHAPE_ARGS,
    nn.Unflatten,
    torch.unflatten,
    *_methods("unflatten"),
    _aten("unflatten.int"),
)
_register(
    "view",
    _RESHAPE,
    _SHAPE_ARGS,
    torch.reshape,
    torch.ravel,
    *_methods("view", "reshape", "ravel"),
    _aten("view.default"),
    _aten("reshape.default"),
    _aten("_unsafe_view.default"),
)
_register(
    "squeeze",
    _RESHAPE,
    _SHAPE_ARGS,
    torch.squeeze,
    *_methods("squeeze"),
    _aten("squeeze.dim"),
    _aten("squeeze.dims"),
    _aten("squeeze.default"),
)
_register(
    "unsqueeze", _RESHAPE, _SHAPE_ARGS, torch.unsqueeze, *_methods("unsqueeze"), _aten("unsqueeze.default")
)
_register(
    "expand",
    R.Rule(R.expand_adjoint, meta_args=_SIZE_ARGS),
    _SHAPE_ARGS,
    torch.broadcast_to,
    *_methods("expand", "broadcast_to"),
    _aten("expand.default"),
)
# `x.view_as(y)`: y is a template read for its shape (or dtype) only, so it may depend on states
_register(
    "view",
    R.Rule(R.reshape_adjoint, meta_args=("other",)),
    "input, other",
    *_methods("view_as", "reshape_as"),
    _aten("view_as.default"),
    _aten("reshape_as.default"),
)
_register(
    "expand",
    R.Rule(R.expand_adjoint, meta_args=("other",)),
    "input, other",
    *_methods("expand_as"),
    _aten("expand_as.default"),
)
# casts are ops.py's "identity" (linear in their data operand); their transpose casts back
_register(
    "identity",
    R.Rule(R.cast_adjoint, meta_args=("other",)),
    "input, other",
    *_methods("type_as"),
    _aten("type_as.default"),
)
_register(
    "pad",
    R.Rule(R.pad_adjoint, check=R.check_pad, meta_args=("pad",)),
    "input, pad, mode='constant', value=None",
    nn.ZeroPad2d,
    nn.ConstantPad2d,
    F.pad,
    _aten("pad.default"),
    _aten("constant_pad_nd.default"),
)
_register(
    "identity",
    R.Rule(R.cast_adjoint),
    _SHAPE_ARGS,
    *_methods("to", "float", "double"),
    _aten("_to_copy.default"),
    _aten("to.dtype"),
)
_register(
    "transpose",
    R.Rule(R.transpose_adjoint),
    "input, dim0, dim1",
    torch.transpose,
    torch.swapaxes,
    torch.swapdims,
    *_methods("transpose", "swapaxes", "swapdims"),
    _aten("transpose.int"),
)
_register("t", R.Rule(R.t_adjoint), "input", torch.t, *_methods("t"), _aten("t.default"))
_register("permute", R.Rule(R.permute_adjoint), "input, dims", torch.permute, _aten("permute.default"))
_register("permute", R.Rule(R.permute_adjoint), "input, *dims", *_methods("permute"))
# ops.py names movedim a permute (which it is); it binds source/destination, so it has its own adjoint
_register(
    "permute",
    R.Rule(R.movedim_adjoint),
    "input, source, destination",
    torch.movedim,
    torch.moveaxis,
    *_methods("movedim", "moveaxis"),
)
# `x.T`/`x.mT` are traced as getattr, which ops.py names "meta" (most getattr nodes read `x.shape`, ...)
_register("meta", R.Rule(R.tensor_attr_adjoint, check=R.check_tensor_attr), "input, name", getattr)
_register(
    "getitem",
    R.Rule(R.getitem_adjoint, forward=R.getitem_forward, check=R.check_getitem),
    "input, index",
    operator.getitem,
)
for _kind, _sig, _keys in (
    (
        "split",
        "input, split_size, dim=0",
        (torch.split, *_methods("split"), _aten("split.Tensor"), _aten("split_with_sizes.default")),
    ),
    ("chunk", "input, chunks, dim=0", (torch.chunk, *_methods("chunk"), _aten("chunk.default"))),
    ("unbind", "input, dim=0", (torch.unbind, *_methods("unbind"), _aten("unbind.int"))),
):
    _register(
        _kind,
        R.Rule(
            R.pieces_adjoint,
            forward=partial(R.pieces_forward, kind=_kind),
            pieces=True,
            meta_args=_SIZE_ARGS + ("split_size", "split_sizes", "chunks"),
        ),
        _sig,
        *_keys,
    )
PIECE_ITEM = R.Rule(R.piece_item_adjoint, check=R.check_getitem)

_register(
    "select",
    R.Rule(R.select_adjoint, meta_args=_SIZE_ARGS),
    "input, dim, index",
    torch.select,
    *_methods("select"),
    _aten("select.int"),
)
_register(
    "slice",
    R.Rule(R.slice_adjoint, meta_args=_SIZE_ARGS),
    "input, dim, start, length",
    torch.narrow,
    *_methods("narrow"),
    _aten("narrow.default"),
)
_register("slice", R.Rule(R.slice_adjoint, meta_args=_SIZE_ARGS), "", _aten("slice.Tensor"))

_register(
    "mean",
    R.Rule(partial(R.reduce_adjoint, mean=True)),
    "input, dim=None, keepdim=False, dtype=None",
    torch.mean,
    *_methods("mean"),
    _aten("mean.default"),
    _aten("mean.dim"),
)
_register(
    "sum",
    R.Rule(partial(R.reduce_adjoint, mean=False)),
    "input, dim=None, keepdim=False, dtype=None",
    torch.sum,
    *_methods("sum"),
    _aten("sum.default"),
    _aten("sum.dim_IntList"),
)
_register(
    "cat",
    R.Rule(R.cat_adjoint, data_args=("tensors",)),
    "tensors, dim=0",
    torch.cat,
    torch.concat,
    torch.concatenate,
    _aten("cat.default"),
)
_register(
    "stack",
    R.Rule(R.stack_adjoint, data_args=("tensors",)),
    "tensors, dim=0",
    torch.stack,
    _aten("stack.default"),
)

_BINARY = ("input", "other")
_register(
    "add",
    R.Rule(R.sum_adjoint, data_args=_BINARY),
    "input, other, alpha=1",
    operator.add,
    torch.add,
    *_methods("add", "__add__", "__radd__"),
    _aten("add.Tensor"),
    _aten("add.Scalar"),
)
_register(
    "sub",
    R.Rule(partial(R.sum_adjoint, signs=(1, -1)), data_args=_BINARY),
    "input, other, alpha=1",
    operator.sub,
    torch.sub,
    torch.subtract,
    *_methods("sub", "subtract", "__sub__"),
    _aten("sub.Tensor"),
    _aten("sub.Scalar"),
)
_register(
    "rsub",
    R.Rule(partial(R.sum_adjoint, signs=(-1, 1), scaled="input"), data_args=_BINARY),
    "input, other, alpha=1",
    torch.rsub,
    *_methods("__rsub__"),
    _aten("rsub.Scalar"),
    _aten("rsub.Tensor"),
)
_register(
    "neg",
    R.Rule(R.neg_adjoint),
    "input",
    operator.neg,
    torch.neg,
    torch.negative,
    *_methods("neg", "negative", "__neg__"),
    _aten("neg.default"),
)
_register(
    "mul",
    R.Rule(R.mul_adjoint, data_args=_BINARY, exclusive=_BINARY),
    "input, other",
    operator.mul,
    torch.mul,
    torch.multiply,
    *_methods("mul", "multiply", "__mul__", "__rmul__"),
    _aten("mul.Tensor"),
    _aten("mul.Scalar"),
)
_register(
    "div",
    R.Rule(R.div_adjoint, check=R.check_div),
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
    "matmul",
    R.Rule(R.matmul_adjoint, data_args=_MATMUL, exclusive=_MATMUL),
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
    "addmm",
    R.Rule(R.addmm_adjoint, data_args=("input", "mat1", "mat2"), exclusive=("mat1", "mat2")),
    "input, mat1, mat2, beta=1, alpha=1",
    torch.addmm,
    *_methods("addmm"),
    _aten("addmm.default"),
)
_register(
    "linear",
    R.Rule(R.linear_adjoint),
    "input, weight, bias=None",
    nn.Linear,
    F.linear,
    _aten("linear.default"),
)

_CONV_SIG = "input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1"
_CONV_T_SIG = "input, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1, dilation=1"
# conv modules read their hyper-parameters (`transposed` included) off the module: one rule serves both
_CONV_MODULE = R.Rule(R.conv_adjoint, check=R.check_conv)
_register(
    "conv",
    _CONV_MODULE,
    _CONV_SIG,
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    F.conv1d,
    F.conv2d,
    F.conv3d,
    *(_aten(f"conv{n}d.{o}") for n in (1, 2, 3) for o in ("default", "padding")),
)
_register(
    "conv_transpose", _CONV_MODULE, _CONV_SIG, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d
)
_register(
    "conv_transpose",
    R.Rule(partial(R.conv_adjoint, transposed=True)),
    _CONV_T_SIG,
    F.conv_transpose1d,
    F.conv_transpose2d,
    F.conv_transpose3d,
    *(_aten(f"conv_transpose{n}d.input") for n in (1, 2, 3)),
)
_register(
    "conv",
    R.Rule(R.conv_adjoint),
    "input, weight, bias, stride, padding, dilation, transposed, output_padding, groups",
    torch.convolution,
    _aten("convolution.default"),
)

_MAXPOOL_SIG = "input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False"
_AVGPOOL_SIG = "input, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True, divisor_override=None"
for _nd in (1, 2, 3):
    _max = partial(R.index_pool_adjoint, nd=_nd)
    _register(
        "max_pool",
        R.Rule(_max, forward=partial(R.maxpool_forward, nd=_nd, adaptive=False), check=R.check_pool),
        _MAXPOOL_SIG,
        getattr(nn, f"MaxPool{_nd}d"),
        getattr(F, f"max_pool{_nd}d"),
        getattr(torch, f"max_pool{_nd}d"),
        _aten(f"max_pool{_nd}d.default"),
    )
    _register(
        "max_pool",
        R.Rule(_max, forward=partial(R.maxpool_forward, nd=_nd, adaptive=False), tuple_out=True),
        _MAXPOOL_SIG,
        getattr(F, f"max_pool{_nd}d_with_indices"),
        _aten(f"max_pool{_nd}d_with_indices.default"),
    )
    _register(
        "adaptive_max_pool",
        R.Rule(_max, forward=partial(R.maxpool_forward, nd=_nd, adaptive=True), check=R.check_pool),
        "input, output_size, return_indices=False",
        getattr(nn, f"AdaptiveMaxPool{_nd}d"),
        getattr(F, f"adaptive_max_pool{_nd}d"),
    )
    _register(
        "adaptive_max_pool",
        R.Rule(_max, forward=partial(R.maxpool_forward, nd=_nd, adaptive=True), tuple_out=True),
        "input, output_size",
        _aten(f"adaptive_max_pool{_nd}d.default"),
    )
    _register(
        "avg_pool",
        R.Rule(partial(R.avgpool_adjoint, nd=_nd)),
        _AVGPOOL_SIG,
        getattr(nn, f"AvgPool{_nd}d"),
        getattr(F, f"avg_pool{_nd}d"),
        _aten(f"avg_pool{_nd}d.default"),
    )
    _register(
        "adaptive_avg_pool",
        R.Rule(partial(R.adaptive_avgpool_adjoint, nd=_nd)),
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


def is_meta_query(node: Node) -> bool:
    if node.op == "call_method":
        return node.target in _META_METHODS
    if node.op == "call_function":
        if node.target is getattr:
            return len(node.args) > 1 and node.args[1] in _META_ATTRS
        return node.target in _META_FUNCTIONS
    return False
