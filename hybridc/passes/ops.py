"""Op identities: one normalised name per operation, whether it was captured by torch.fx (modules,
torch functions, tensor methods) or by torch.export (ATen overloads). Passes and targets speak these names."""

from __future__ import annotations

import operator
from typing import Any

import torch
import torch.fx as fx
from torch import nn

_MODULE_KEYS: list[tuple[type[nn.Module] | tuple[type[nn.Module], ...], str]] = [
    (nn.Linear, "linear"),
    ((nn.Conv1d, nn.Conv2d, nn.Conv3d), "conv"),
    ((nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d), "conv_transpose"),
    ((nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d), "batch_norm"),
    (nn.LayerNorm, "layer_norm"),
    (nn.GroupNorm, "group_norm"),
    ((nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d), "instance_norm"),
    (nn.RMSNorm, "rms_norm"),
    (nn.LocalResponseNorm, "local_response_norm"),
    (nn.MultiheadAttention, "attention"),
    ((nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout), "dropout"),
    (nn.Identity, "identity"),
    (nn.Flatten, "flatten"),
    (nn.Unflatten, "unflatten"),
    ((nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d), "max_pool"),
    ((nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d), "avg_pool"),
    ((nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d), "adaptive_avg_pool"),
    ((nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d), "adaptive_max_pool"),
    ((nn.Softmax, nn.LogSoftmax, nn.Softmin), "softmax"),
    ((nn.Embedding, nn.EmbeddingBag), "embedding"),
    ((nn.ZeroPad2d, nn.ConstantPad2d, nn.ReflectionPad2d, nn.ReplicationPad2d), "pad"),
    (nn.ReLU, "relu"),
    (nn.ReLU6, "relu6"),
    (nn.LeakyReLU, "leaky_relu"),
    (nn.ELU, "elu"),
    (nn.CELU, "celu"),
    (nn.SELU, "selu"),
    (nn.GELU, "gelu"),
    (nn.SiLU, "silu"),
    (nn.Mish, "mish"),
    (nn.Sigmoid, "sigmoid"),
    (nn.Tanh, "tanh"),
    (nn.Hardtanh, "hardtanh"),
    (nn.Hardsigmoid, "hardsigmoid"),
    (nn.Hardswish, "hardswish"),
    (nn.Softplus, "softplus"),
    (nn.Softsign, "softsign"),
    (nn.LogSigmoid, "logsigmoid"),
    (nn.Tanhshrink, "tanhshrink"),
    (nn.PReLU, "prelu"),
]

#: Aliases folded into one name (ATen spellings, in-place variants, dimension suffixes).
_ALIASES = {
    "conv1d": "conv",
    "conv2d": "conv",
    "conv3d": "conv",
    "convolution": "conv",
    "_convolution": "conv",
    "conv_transpose1d": "conv_transpose",
    "conv_transpose2d": "conv_transpose",
    "conv_transpose3d": "conv_transpose",
    "max_pool1d": "max_pool",
    "max_pool2d": "max_pool",
    "max_pool3d": "max_pool",
    "max_pool2d_with_indices": "max_pool",
    "max_pool1d_with_indices": "max_pool",
    "max_pool3d_with_indices": "max_pool",
    "avg_pool1d": "avg_pool",
    "avg_pool2d": "avg_pool",
    "avg_pool3d": "avg_pool",
    "adaptive_avg_pool1d": "adaptive_avg_pool",
    "adaptive_avg_pool2d": "adaptive_avg_pool",
    "adaptive_avg_pool3d": "adaptive_avg_pool",
    "_adaptive_avg_pool2d": "adaptive_avg_pool",
    "_adaptive_avg_pool3d": "adaptive_avg_pool",
    "adaptive_max_pool1d": "adaptive_max_pool",
    "adaptive_max_pool2d": "adaptive_max_pool",
    "adaptive_max_pool3d": "adaptive_max_pool",
    "_native_batch_norm_legit_no_training": "batch_norm",
    "_native_batch_norm_legit": "batch_norm",
    "native_batch_norm": "batch_norm",
    "_native_batch_norm_legit_functional": "batch_norm",
    "native_layer_norm": "layer_norm",
    "native_group_norm": "group_norm",
    "scaled_dot_product_attention": "sdpa",
    "_scaled_dot_product_flash_attention": "sdpa",
    "_scaled_dot_product_efficient_attention": "sdpa",
    "multi_head_attention_forward": "attention",
    "softmax": "softmax",
    "_softmax": "softmax",
    "log_softmax": "softmax",
    "_log_softmax": "softmax",
    "softmin": "softmax",
    "iadd": "add",
    "add_": "add",
    # reflected operators and torch's long names: `x.__radd__(y)` is y + x, `torch.multiply` is `torch.mul`
    "radd": "add",
    "isub": "sub",
    "sub_": "sub",
    "subtract": "sub",
    "imul": "mul",
    "mul_": "mul",
    "rmul": "mul",
    "multiply": "mul",
    "truediv": "div",
    "itruediv": "div",
    "div_": "div",
    "divide": "div",
    "true_divide": "div",
    "negative": "neg",
    "concat": "cat",
    "concatenate": "cat",
    "rsub": "rsub",
    "relu_": "relu",
    "sigmoid_": "sigmoid",
    "tanh_": "tanh",
    "hardtanh_": "hardtanh",
    "leaky_relu_": "leaky_relu",
    "elu_": "elu",
    "gelu_": "gelu",
    "silu_": "silu",
    "hardswish_": "hardswish",
    "hardsigmoid_": "hardsigmoid",
    "dropout_": "dropout",
    "feature_dropout": "dropout",
    "alpha_dropout": "dropout",
    "native_dropout": "dropout",
    "dropout1d": "dropout",
    "dropout2d": "dropout",
    "dropout3d": "dropout",
    "_unsafe_view": "view",
    "view_copy": "view",
    "_reshape_alias": "view",
    "reshape": "view",
    "view": "view",
    "alias": "identity",
    "detach": "identity",
    "contiguous": "identity",
    "clone": "identity",
    "type_as": "identity",
    "lift_fresh_copy": "identity",
    # casts and templated reshapes: linear in their data operand (`x.view_as(y)` reads only y's shape)
    "to": "identity",
    "float": "identity",
    "double": "identity",
    "half": "identity",
    "bfloat16": "identity",
    "_to_copy": "identity",
    "reshape_as": "view",
    "view_as": "view",
    "expand_as": "expand",
    "broadcast_to": "expand",
    "ravel": "view",
    "movedim": "permute",
    "moveaxis": "permute",
    "swapaxes": "transpose",
    "swapdims": "transpose",
    "pad": "pad",
    "constant_pad_nd": "pad",
    "split_with_sizes": "split",
    "unsafe_split": "split",
    "tensor_split": "split",
    "narrow": "slice",
    "matmul": "matmul",
    "mm": "matmul",
    "bmm": "matmul",
    "addmm": "addmm",
    "einsum": "einsum",
    "dim": "meta",
    "size": "meta",
    "sym_size": "meta",
    "numel": "meta",
}

MONOTONE_ACTIVATIONS = frozenset(
    {
        "relu",
        "relu6",
        "leaky_relu",
        "elu",
        "celu",
        "selu",
        "sigmoid",
        "tanh",
        "hardtanh",
        "hardsigmoid",
        "softplus",
        "softsign",
        "logsigmoid",
        "tanhshrink",
    }
)
NON_MONOTONE_ACTIVATIONS = frozenset({"gelu", "silu", "mish", "hardswish"})
ACTIVATIONS = MONOTONE_ACTIVATIONS | NON_MONOTONE_ACTIVATIONS
NORMS = frozenset(
    {"batch_norm", "layer_norm", "group_norm", "instance_norm", "rms_norm", "local_response_norm"}
)
#: Per-sample/per-token norms (transformers): governed by their own policy, `layer_norm`.
TOKEN_NORMS = frozenset({"layer_norm", "rms_norm"})
#: Pools that are linear maps (max pooling is linear for a fixed argmax).
LINEAR_POOLS = frozenset({"max_pool", "avg_pool", "adaptive_avg_pool", "mean"})
#: Ops that only move values around (no arithmetic): a projection reaches attention through these.
PURE_SHAPE_OPS = frozenset(
    {
        "flatten",
        "unflatten",
        "view",
        "permute",
        "transpose",
        "t",
        "squeeze",
        "unsqueeze",
        "identity",
        "expand",
        "split",
        "chunk",
        "unbind",
        "select",
        "slice",
    }
)
#: Ops that are linear (or affine with a parameter/constant operand) in their data operand.
SHAPE_OPS = PURE_SHAPE_OPS | frozenset(
    {
        "add",
        "cat",
        "copy",
        "div",
        "dropout",
        "mul",
        "neg",
        "pad",
        "pos",
        "rsub",
        "select_scatter",
        "slice_scatter",
        "stack",
        "sub",
    }
)
#: Ops that return a tuple of tensors, each a linear function of their data operand (item i via getitem).
TUPLE_SHAPE_OPS = frozenset({"split", "chunk", "unbind"})
#: Tensor methods whose second operand is a template read only for its shape/dtype (`x.view_as(y)`).
TEMPLATE_METHODS = frozenset({"view_as", "reshape_as", "expand_as", "type_as"})
WEIGHT_OPS = frozenset({"linear", "conv", "conv_transpose", "matmul", "addmm"})


def module_of(node: fx.Node, gm: fx.GraphModule) -> nn.Module | None:
    """The submodule a call_module node calls, else None."""
    if node.op != "call_module":
        return None
    return gm.get_submodule(str(node.target))


def value_inputs(node: fx.Node) -> list[fx.Node]:
    """The inputs whose values flow into `node`'s value: all of them except a template operand read only
    for its shape (`x.reshape_as(y)` depends on y's shape, not on y's values)."""
    target = node.target
    name = target._overloadpacket.__name__ if isinstance(target, torch._ops.OpOverload) else target
    if node.op in ("call_method", "call_function") and name in TEMPLATE_METHODS and node.args:
        first = node.args[0]
        return [first] if isinstance(first, fx.Node) else []
    if name == "copy" and len(node.args) > 1:  # functionalized `dst.copy_(src)`: the value is src's
        src = node.args[1]
        return [src] if isinstance(src, fx.Node) else []
    return list(node.all_input_nodes)


def spelling_key(spelling: Any) -> str:
    """Normalised name of what one *spelling* of an op computes: a module class (``nn.Conv2d``), a torch
    function or builtin operator (``F.conv2d``, ``operator.add``), an ATen ``OpOverload``
    (``aten.convolution.default``) or a tensor method as ``"Tensor.<method>"`` (``"Tensor.view"``).

    This is the one map from spellings to identities: :func:`op_key` reads a node's spelling and asks it,
    and the transpose op table (``hybridc.energy.transpose.table``), which is keyed by these same
    spellings, checks each of its entries against it, so passes, costs and transposes speak one
    vocabulary. A module class outside the stock set is ``"module:<ClassName>"``; any other callable
    (a class called as a function, ``torch.Size``, included) is named by its ``__name__``."""
    if isinstance(spelling, type) and issubclass(spelling, nn.Module):
        # the tracer keeps only stock modules as leaves (tracer.stock_class): the class says what they compute
        for types, key in _MODULE_KEYS:
            if issubclass(spelling, types):
                return key
        return f"module:{spelling.__name__}"
    if isinstance(spelling, str):
        if not spelling.startswith("Tensor."):
            raise ValueError(f"a method spelling is 'Tensor.<method>', not {spelling!r}")
        name = spelling[len("Tensor.") :]
    elif isinstance(spelling, torch._ops.OpOverload):
        name = spelling._overloadpacket.__name__
    elif spelling is operator.getitem:
        name = "getitem"
    elif spelling is getattr:
        name = "meta"
    else:
        name = getattr(spelling, "__name__", str(spelling))
    if name.startswith("__") and name.endswith("__"):
        name = name[2:-2]
    return _ALIASES.get(name, name)


def op_key(node: fx.Node, gm: fx.GraphModule) -> str:
    """Normalised name of what `node` computes ("linear", "relu", "add", "batch_norm", ...): the
    :func:`spelling_key` of its module's class, its method (``"Tensor.<target>"``) or its function;
    graph plumbing (placeholder, output, get_attr) is named by its op."""
    if node.op in ("placeholder", "output", "get_attr"):
        return node.op
    if node.op == "call_module":
        return spelling_key(type(module_of(node, gm)))
    if node.op == "call_method":
        return spelling_key(f"Tensor.{node.target}")
    return spelling_key(node.target)


def activation_params(node: fx.Node, gm: fx.GraphModule) -> dict[str, float]:
    """The numeric parameters of an activation node (negative slope, bounds, ...), for the plan."""
    key = op_key(node, gm)
    mod = module_of(node, gm)
    params: dict[str, float] = {}
    if mod is not None:
        for attr in ("negative_slope", "alpha", "min_val", "max_val", "beta", "threshold"):
            if hasattr(mod, attr) and isinstance(getattr(mod, attr), (int, float)):
                params[attr] = float(getattr(mod, attr))
        return params
    extra = list(node.args[1:])
    names = {
        "leaky_relu": ["negative_slope"],
        "elu": ["alpha"],
        "celu": ["alpha"],
        "hardtanh": ["min_val", "max_val"],
        "softplus": ["beta", "threshold"],
    }.get(key, [])
    for attr, val in zip(names, extra):
        if isinstance(val, (int, float)) and not isinstance(val, bool):
            params[attr] = float(val)
    for attr in names:
        val = node.kwargs.get(attr)
        if isinstance(val, (int, float)) and not isinstance(val, bool):
            params[attr] = float(val)
    return params
