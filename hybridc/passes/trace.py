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
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx
from torch import nn

from hybridc.errors import TraceError
from hybridc.passes.casts import follow_weight_dtype
from hybridc.passes.functionalize import (
    drop_assertions,
    functionalize_inplace,
    mutating_nodes,
    remove_dead_code,
)
from hybridc.passes.pytree_io import InputSpec, OutputSpec, example_call, flat_forward_class, input_spec
from hybridc.passes.tracer import OwnershipTracer


@dataclass
class TracedGraph:
    """A captured graph and how it was captured ("fx" or "export").

    The graph takes the example call's tensors as placeholders (in `inputs.names` order) and returns a flat
    tuple of tensors; `inputs`/`outputs` say how the model is called and what structure it returns around
    them (None: a graph made elsewhere, called with its placeholders and returning its own output)."""

    gm: fx.GraphModule
    method: str
    inputs: InputSpec | None = None
    outputs: OutputSpec | None = None
    #: what tracing changed (in-place ops rewritten, assertions dropped), one line each
    notes: list[str] = field(default_factory=list)
    #: the same as plan decisions: (node, action, reason)
    decisions: list[tuple[str, str, str]] = field(default_factory=list)


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
    tracer = OwnershipTracer()
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


def _dynamic_shapes(tensors: list[torch.Tensor], every_token_dim: bool) -> tuple[Any, ...]:
    """Dims torch.export may keep symbolic: the batch dimension of every input, and (`every_token_dim`)
    every dimension of integer or bool inputs - token ids and masks, whose sequence length varies."""
    auto = torch.export.Dim.AUTO
    dims: list[Any] = []
    for t in tensors:
        if t.dim() == 0:
            dims.append(None)
        elif every_token_dim and not (t.is_floating_point() or t.is_complex()):
            dims.append(dict.fromkeys(range(t.dim()), auto))
        else:
            dims.append({0: auto})
    return tuple(dims)


def _has_token_inputs(tensors: list[torch.Tensor]) -> bool:
    return any(t.dim() > 1 and not (t.is_floating_point() or t.is_complex()) for t in tensors)


def _export_trace(model: nn.Module, example_inputs: list[torch.Tensor]) -> fx.GraphModule:
    """torch.export (non-strict) with the batch dimension symbolic, so the compiled model runs on any batch
    size, and the sequence dimensions of token inputs too where the model allows it (else a retry with the
    batch dimension only). In-place ops are functionalized by torch (`run_decompositions({})`, which keeps
    every op but rewrites mutations, views of mutated tensors included)."""
    with _quiet_torch_logs():
        attempts = [True, False] if _has_token_inputs(example_inputs) else [False]
        for i, every_token_dim in enumerate(attempts):
            try:
                ep = torch.export.export(
                    model,
                    tuple(example_inputs),
                    strict=False,
                    dynamic_shapes=_dynamic_shapes(example_inputs, every_token_dim),
                )
                break
            except Exception:
                if i == len(attempts) - 1:
                    raise
        if any(
            n.op == "call_function"
            and isinstance(n.target, torch._ops.OpOverload)
            and n.target._schema.is_mutable
            for n in ep.graph.nodes
        ):
            ep = ep.run_decompositions({})
        gm = ep.module()
    graph = gm.graph
    for node in list(graph.nodes):
        # torch.export adds a guard-checking call with no users; it is not part of the computation.
        if node.op == "call_module" and str(node.target).startswith("_guards") and not node.users:
            graph.erase_node(node)
        elif node.op == "call_function" and node.target is torch.ops.aten.view.default:
            # torch.export drops a `.contiguous()` that is a no-op on the example's strides (HF T5:
            # `sdpa(...).transpose(1, 2).contiguous().view(B, T, -1)`, where the CPU SDPA kernel used under
            # no_grad returns a layout whose transpose is contiguous). Another SDPA backend (grad mode, float64,
            # CUDA) or an analog block's state in its place has other strides, and the `view` then fails. The
            # graph is functional (no op writes through an alias), so `reshape` computes the same values.
            node.target = torch.ops.aten.reshape.default
    follow_weight_dtype(gm)
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


def _propagate_shapes(gm: fx.GraphModule, example_inputs: list[torch.Tensor]) -> None:
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


def _describe_call(tensors: list[torch.Tensor], names: list[str]) -> str:
    return ", ".join(
        f"{n}: {tuple(t.shape)} {str(t.dtype).replace('torch.', '')}" for n, t in zip(names, tensors)
    )


def _source_of(model: nn.Module) -> str:
    """`file:line` of the model's forward, or ''."""
    import inspect

    try:
        fn = inspect.unwrap(type(model).forward)  # transformers decorates forwards
        return f"{inspect.getsourcefile(fn)}:{inspect.getsourcelines(fn)[1]}"
    except (OSError, TypeError):
        return ""


def _check_output(output: Any, model: nn.Module) -> None:
    """Refuse outputs that hold objects other than tensors, containers and plain constants (a KV cache,
    a module, ...), naming the field and what to do."""
    from hybridc.passes.pytree_io import Leaf, _Record, flatten_output

    _, template = flatten_output(output)

    def walk(t: Any, path: str) -> None:
        if isinstance(t, (Leaf, type(None), bool, int, float, str, torch.dtype, torch.device)):
            return
        if isinstance(t, _Record):
            for k, v in t.fields:
                walk(v, f"{path}.{k}")
        elif isinstance(t, (tuple, list)):
            for i, v in enumerate(t):
                walk(v, f"{path}[{i}]")
        elif isinstance(t, dict):
            for k, v in t.items():
                walk(v, f"{path}[{k!r}]")
        else:
            name = type(t).__name__
            where = _source_of(model)
            loc = f" ({type(model).__name__}.forward at {where})" if where else ""
            advice = (
                "a key/value cache of incremental decoding: pass `use_cache=False` in the example call "
                "or set `model.config.use_cache = False` before compiling"
                if "cache" in name.lower()
                else "return tensors (in tuples, lists, dicts or dataclasses) only"
            )
            raise TraceError(
                f"the output of {type(model).__name__}{loc} holds a {type(t).__module__}.{name} at "
                f"`output{path}`, which is not a tensor: {advice}"
            )

    walk(template, "")


def trace_model(model: nn.Module, example_inputs: Any) -> TracedGraph:
    """Trace `model` (a deep copy, in eval mode) into a GraphModule; one clear TraceError if impossible.

    `example_inputs`: a tensor, a tuple of positional arguments, or a dict of keyword arguments. Tensors
    become graph inputs; None, Python constants and every default not given are folded into the graph
    (`hybridc.passes.pytree_io`). The graph is made pure (`hybridc.passes.functionalize`): in-place ops are
    rewritten out of place and assertions on the example's shapes are dropped.
    """
    model = copy.deepcopy(model).eval()
    args, kwargs = example_call(example_inputs)
    spec, tensors = input_spec(model, args, kwargs)
    try:
        with torch.no_grad():
            c_args, c_kwargs = spec.call([t.clone() for t in tensors])
            output = model(*c_args, **c_kwargs)
    except Exception as exc:
        where = _user_frame(exc)
        raise TraceError(
            f"{type(model).__name__} does not run on the example input ({_describe_call(tensors, spec.names)})"
            f"{' at ' + where if where else ''}: {_first_line(exc)}. Check --input-shape (per-sample "
            "shape, no batch dimension) and the model's dtype."
        ) from None
    _check_output(output, model)
    holder: dict[str, Any] = {}
    model.__class__ = flat_forward_class(model, spec, holder)
    pure_error: TraceError | None = None
    try:
        gm = _fx_trace(model)
        method = "fx"
        try:
            _propagate_shapes(gm, [t.clone() for t in tensors])
        except Exception as exc:  # fx traced a graph that does not run: prefer export's view of it.
            raise RuntimeError(f"fx graph failed to run: {exc}") from exc
        try:
            notes, decisions = _make_pure(gm, tensors)
        except TraceError as exc:  # e.g. a mutation through a view: torch.export functionalizes those
            pure_error = exc
            raise
    except Exception as fx_exc:
        try:
            gm = _export_trace(model, tensors)
            method = "export"
            _propagate_shapes(gm, [t.clone() for t in tensors])
            notes, decisions = _make_pure(gm, tensors)
        except Exception as ex_exc:
            if pure_error is not None:
                raise pure_error from None
            if isinstance(ex_exc, TraceError):
                raise
            raise _capture_error(model, fx_exc, ex_exc) from None
    outputs = OutputSpec(
        template=holder["template"],
        n_tensors=len(next(n for n in gm.graph.nodes if n.op == "output").args[0]),
    )
    return TracedGraph(gm=gm, method=method, inputs=spec, outputs=outputs, notes=notes, decisions=decisions)


def _make_pure(
    gm: fx.GraphModule, tensors: list[torch.Tensor]
) -> tuple[list[str], list[tuple[str, str, str]]]:
    """Functionalize in-place ops, drop assertions and everything that does not reach the output; then
    check that nothing writes into a tensor any more (a node nobody reads must not carry an effect).
    Returns (notes, decisions) saying what changed."""
    rewritten = functionalize_inplace(gm)
    dropped = drop_assertions(gm)
    remove_dead_code(gm)
    left = mutating_nodes(gm)
    if left:
        from hybridc.passes.functionalize import where

        raise TraceError(
            f"{where(left[0])}: `{left[0].target}` writes into a tensor in place and could not be "
            "rewritten out of place; write it as `y = f(x)`"
        )
    _propagate_shapes(gm, [t.clone() for t in tensors])
    live = {n.name for n in gm.graph.nodes}
    decisions = [(name, "substituted", why) for name, why in rewritten if name in live]
    decisions += [
        (
            name,
            "removed",
            f"assertion at {at} checks the example's shapes only; the compiled model does not repeat it",
        )
        for name, at in dropped
    ]
    notes = []
    if rewritten:
        notes.append(f"in-place ops rewritten out of place: {', '.join(n for n, _ in rewritten)}")
    if dropped:
        notes.append(f"assertions on the example's shapes dropped: {', '.join(n for n, _ in dropped)}")
    return notes, decisions


def _capture_error(model: nn.Module, fx_exc: BaseException, ex_exc: BaseException) -> TraceError:
    """One clear error line for a model neither tracer captures: where (the model's own line), what the
    construct is, what to do, and both tracers' first lines."""
    where = _user_frame(ex_exc) or _user_frame(fx_exc)
    if not where:
        src = _source_of(model)
        where = f"{type(model).__name__}.forward ({src})" if src else ""
    text = f"{fx_exc} {ex_exc}"
    if "data-dependent" in text or "DataDependent" in text or "control flow" in text:
        what = (
            "Python control flow (`if`, `bool()`, `.item()`) on a tensor's value, which a graph cannot hold: "
            "use torch.where / torch.clamp (or torch.cond) instead, or move the decision out of forward"
        )
    elif "Cache" in text:
        what = (
            "a key/value cache: pass `use_cache=False` in the example call or set "
            "`model.config.use_cache = False` before compiling"
        )
    else:
        what = (
            "a construct neither tracer supports: rewrite it with tensor ops (e.g. torch.where instead of "
            "`if` on a tensor value) or split it into a separate module"
        )
    return TraceError(
        f"cannot capture the graph of {type(model).__name__}{' at ' + where if where else ''}: {what} "
        f"(torch.fx: {_first_line(fx_exc)}; torch.export: {_first_line(ex_exc)})"
    )
