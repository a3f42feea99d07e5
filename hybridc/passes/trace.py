"""Capture a model's graph: torch.fx symbolic tracing first, torch.export (non-strict) as the fallback.

Both paths produce a `torch.fx.GraphModule`; every compute node gets `node.meta["hybridc_module"]`, the
qualified name of the innermost module that owns it (used to keep whole attention modules digital), and
`node.meta["hybridc_shape"]`/`["hybridc_dtype"]` from one shape-propagation run on the example input.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import traceback
import warnings
from dataclasses import dataclass

import torch
import torch.fx as fx
from torch import nn

from hybridc.errors import TraceError

#: Modules kept as single call_module nodes by the fx tracer; everything else is traced through, so that the
#: Linear layers inside user blocks (and inside stock containers) become visible to the partitioner.
LEAF_MODULE_TYPES: tuple[type[nn.Module], ...] = (
    nn.Linear, nn.Bilinear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d,
    nn.ConvTranspose3d, nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.LayerNorm, nn.GroupNorm,
    nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d, nn.LocalResponseNorm, nn.RMSNorm,
    nn.MultiheadAttention, nn.Embedding, nn.EmbeddingBag, nn.Dropout, nn.Dropout1d, nn.Dropout2d,
    nn.Dropout3d, nn.AlphaDropout, nn.Identity, nn.Flatten, nn.Unflatten,
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
    nn.Sigmoid, nn.Tanh, nn.Hardtanh, nn.Hardsigmoid, nn.Hardswish, nn.Softplus, nn.Softsign,
    nn.Tanhshrink, nn.LogSigmoid, nn.Softmax, nn.LogSoftmax, nn.Softmin,
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d, nn.Upsample, nn.PixelShuffle, nn.ZeroPad2d,
    nn.ConstantPad2d, nn.ReflectionPad2d, nn.ReplicationPad2d,
)


@dataclass
class TracedGraph:
    """A captured graph and how it was captured ("fx" or "export")."""

    gm: fx.GraphModule
    method: str


class _OwnershipTracer(fx.Tracer):
    """fx tracer that treats only `LEAF_MODULE_TYPES` as leaves and records each node's owning module."""

    def __init__(self) -> None:
        super().__init__()
        self._owner_stack: list[str] = [""]

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return isinstance(m, LEAF_MODULE_TYPES)

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


def _user_frame(exc: BaseException) -> str:
    """The last traceback frame outside torch: "file:line: `code`", or "" if none is found."""
    frames = traceback.extract_tb(exc.__traceback__)
    for fr in reversed(frames):
        fn = fr.filename.replace("\\", "/")
        if "/torch/" not in fn and "/hybridc/passes/" not in fn and not fn.startswith("<"):
            code = f": `{fr.line.strip()}`" if fr.line else ""
            return f"{fr.filename}:{fr.lineno}{code}"
    return ""


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


def _fx_trace(model: nn.Module) -> fx.GraphModule:
    tracer = _OwnershipTracer()
    graph = tracer.trace(model)
    name = type(model).__name__
    return fx.GraphModule(tracer.root, graph, name)


@contextlib.contextmanager
def _quiet_torch_logs():
    """torch.export logs whole graphs when it fails; the user gets our one-paragraph error instead."""
    logger = logging.getLogger("torch")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def _export_trace(model: nn.Module, example_inputs: tuple[torch.Tensor, ...]) -> fx.GraphModule:
    with _quiet_torch_logs():
        # the batch dimension stays symbolic, so the compiled model runs on any batch size
        dims = tuple({0: torch.export.Dim.AUTO} if t.dim() > 0 else None for t in example_inputs)
        ep = torch.export.export(model, example_inputs, strict=False, dynamic_shapes=dims)
        gm = ep.module()
    graph = gm.graph
    for node in list(graph.nodes):
        # torch.export adds a guard-checking call with no users; it is not part of the computation.
        if node.op == "call_module" and str(node.target).startswith("_guards") and not node.users:
            graph.erase_node(node)
    for node in graph.nodes:
        stack = node.meta.get("nn_module_stack") or {}
        owner = ""
        if stack:
            owner = list(stack.values())[-1][0]
        # keep what the passes read; drop export's fake tensors so compiled models can be deep-copied
        node.meta = {k: v for k, v in node.meta.items() if k in ("nn_module_stack", "stack_trace")}
        node.meta["hybridc_module"] = owner
    graph.lint()
    gm.recompile()
    if not isinstance(gm, fx.GraphModule):
        raise TraceError("torch.export did not return a GraphModule")
    return gm


def _propagate_shapes(gm: fx.GraphModule, example_inputs: tuple[torch.Tensor, ...]) -> None:
    """Record the shape and dtype of every node by running the graph once (no grad; the model is in eval
    mode already, and an exported graph has its mode baked in)."""
    env: dict[fx.Node, object] = {}
    it = iter(example_inputs)

    class _Recorder(fx.Interpreter):
        def run_node(self, n: fx.Node):  # noqa: ANN202
            out = super().run_node(n)
            env[n] = out
            if isinstance(out, torch.Tensor):
                n.meta["hybridc_shape"] = list(out.shape)
                n.meta["hybridc_dtype"] = str(out.dtype).replace("torch.", "")
            return out

    del it
    with torch.no_grad():
        _Recorder(gm).run(*example_inputs)


def trace_model(model: nn.Module, example_inputs: tuple[torch.Tensor, ...]) -> TracedGraph:
    """Trace `model` (a deep copy, in eval mode) into a GraphModule; one clear TraceError if impossible."""
    model = copy.deepcopy(model).eval()
    try:
        with torch.no_grad():
            model(*example_inputs)
    except Exception as exc:
        shapes = ", ".join(f"{tuple(t.shape)} {str(t.dtype).replace('torch.', '')}" for t in example_inputs)
        where = _user_frame(exc)
        raise TraceError(
            f"{type(model).__name__} does not run on the example input ({shapes})"
            f"{' at ' + where if where else ''}: {_first_line(exc)}. Check --input-shape (per-sample "
            "shape, no batch dimension) and the model's dtype.") from None
    try:
        gm = _fx_trace(model)
        method = "fx"
        try:
            _propagate_shapes(gm, example_inputs)
        except Exception as exc:  # fx traced a graph that does not run: prefer export's view of it.
            raise RuntimeError(f"fx graph failed to run: {exc}") from exc
    except Exception as fx_exc:
        try:
            gm = _export_trace(model, example_inputs)
            method = "export"
            _propagate_shapes(gm, example_inputs)
        except Exception as ex_exc:
            where = _user_frame(fx_exc) or _user_frame(ex_exc)
            loc = f" at {where}" if where else ""
            raise TraceError(
                f"cannot capture the graph of {type(model).__name__}{loc}.\n"
                f"  torch.fx.symbolic_trace: {_first_line(fx_exc)}\n"
                f"  torch.export (non-strict): {_first_line(ex_exc)}\n"
                "  Rewrite the construct named above with tensor ops (e.g. torch.where instead of `if` on a "
                "tensor value), or split it into a separate module."
            ) from None
    # values that never reach the output (dead branches) are not part of the model's function
    gm.graph.eliminate_dead_code()
    gm.recompile()
    return TracedGraph(gm=gm, method=method)
