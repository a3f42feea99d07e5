"""hybridc's torch.fx tracer: which modules stay single call_module nodes (the stock ops, judged by what a
module computes rather than what it inherits), which module owns each node (`node.meta["hybridc_module"]`), and
augmented assignments (`h += 1`) recorded as the in-place ops they are, for `functionalize_inplace`."""

from __future__ import annotations

import operator
from typing import Any

import torch.fx as fx
from torch import nn

#: Modules kept as single call_module nodes by the fx tracer; everything else is traced through, so that the
#: Linear layers inside user blocks (and inside stock containers) become visible to the partitioner.
LEAF_MODULE_TYPES: tuple[type[nn.Module], ...] = (
    nn.Linear,
    nn.Bilinear,
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.ConvTranspose1d,
    nn.ConvTranspose2d,
    nn.ConvTranspose3d,
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.InstanceNorm1d,
    nn.InstanceNorm2d,
    nn.InstanceNorm3d,
    nn.LocalResponseNorm,
    nn.RMSNorm,
    nn.MultiheadAttention,
    nn.Embedding,
    nn.EmbeddingBag,
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.AlphaDropout,
    nn.Identity,
    nn.Flatten,
    nn.Unflatten,
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.PReLU,
    nn.ELU,
    nn.SELU,
    nn.CELU,
    nn.GELU,
    nn.SiLU,
    nn.Mish,
    nn.Sigmoid,
    nn.Tanh,
    nn.Hardtanh,
    nn.Hardsigmoid,
    nn.Hardswish,
    nn.Softplus,
    nn.Softsign,
    nn.Tanhshrink,
    nn.LogSigmoid,
    nn.Softmax,
    nn.LogSoftmax,
    nn.Softmin,
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.MaxPool3d,
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AvgPool3d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d,
    nn.AdaptiveMaxPool3d,
    nn.Upsample,
    nn.PixelShuffle,
    nn.ZeroPad2d,
    nn.ConstantPad2d,
    nn.ReflectionPad2d,
    nn.ReplicationPad2d,
)


#: Methods a stock forward dispatches through: a subclass overriding one computes something else.
_FORWARD_HELPERS = ("forward", "_conv_forward")


def stock_class(m: nn.Module) -> type[nn.Module] | None:
    """The `LEAF_MODULE_TYPES` class whose computation `m` performs unchanged, else None.

    Classification goes by what a module computes, not by what it inherits: timm's
    `BatchNormAct2d(nn.BatchNorm2d)` applies an activation after the norm and `Conv2dSame(nn.Conv2d)`
    pads before convolving, so they are not the stock ops. A subclass counts as its base only if it keeps
    the base's `forward` (and `_conv_forward`) - e.g. one that only changes `__init__` or initialisation,
    or torch's parametrized classes. Others are traced into (their functional ops are classified).
    """
    cls = type(m)
    for base in cls.__mro__:
        if base in LEAF_MODULE_TYPES:
            if all(getattr(cls, name, None) is getattr(base, name, None) for name in _FORWARD_HELPERS):
                return base
            return None
    return None


def is_stock_leaf(m: nn.Module) -> bool:
    """Is `m` kept as one call_module node by the tracer (a stock op of `LEAF_MODULE_TYPES`)?"""
    return stock_class(m) is not None


class _MutationAwareProxy(fx.Proxy):
    """An fx Proxy that records `h += 1` as `operator.iadd` (fx's own falls back to `h = h + 1`, which
    loses the mutation seen by an alias `y = h` taken before); `functionalize_inplace` rewrites it."""


def _inplace_dunder(op: Any) -> Any:
    def method(self: fx.Proxy, other: Any) -> fx.Proxy:
        return self.tracer.create_proxy("call_function", op, (self, other), {})

    return method


for _dunder, _op in (
    ("__iadd__", operator.iadd),
    ("__isub__", operator.isub),
    ("__imul__", operator.imul),
    ("__itruediv__", operator.itruediv),
    ("__ifloordiv__", operator.ifloordiv),
    ("__imod__", operator.imod),
    ("__ipow__", operator.ipow),
    ("__imatmul__", operator.imatmul),
    ("__iand__", operator.iand),
    ("__ior__", operator.ior),
    ("__ixor__", operator.ixor),
    ("__ilshift__", operator.ilshift),
    ("__irshift__", operator.irshift),
):
    setattr(_MutationAwareProxy, _dunder, _inplace_dunder(_op))


class OwnershipTracer(fx.Tracer):
    """fx tracer that treats only `LEAF_MODULE_TYPES` as leaves and records each node's owning module."""

    def __init__(self) -> None:
        super().__init__()
        self._owner_stack: list[str] = [""]
        self.record_stack_traces = True  # error messages name the model's own line
        # buffers read by traced-through code are get_attr nodes (not constants captured at trace time), so
        # that an in-place write into one is seen (and refused) instead of happening once, during tracing
        self.proxy_buffer_attributes = True

    def proxy(self, node: fx.Node) -> fx.Proxy:
        return _MutationAwareProxy(node, self)

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return is_stock_leaf(m)

    def call_module(self, m, forward, args, kwargs):  # noqa: ANN001 - fx signature
        name = self.path_of_module(m)
        self._owner_stack.append(name)
        try:
            return super().call_module(m, forward, args, kwargs)
        finally:
            self._owner_stack.pop()

    def create_node(self, kind, target, args, kwargs, name=None, type_expr=None):  # noqa: ANN001
        node = super().create_node(kind, target, args, kwargs, name, type_expr)
        node.meta["hybridc_module"] = target if kind == "call_module" else self._owner_stack[-1]
        return node
