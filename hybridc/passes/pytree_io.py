"""How a model is called and what it returns, as structures around the traced graph's flat tensors.

A traced graph has one placeholder per input tensor and returns a flat tuple of tensors. Models are called
with more than that: keyword tensors (`input_ids=`, `attention_mask=`), optional arguments left at their
defaults (`attn_mask=None`, `is_causal=False`, `return_dict=True`), and they return tuples, dicts and
dataclasses (transformers' `ModelOutput`, plain `@dataclass`) with None or Python constants among the tensors.

`InputSpec` records, from the example call, which arguments are tensors (graph inputs) and which are
constants folded into the graph (None, Python numbers, bools, strings, and every default not given): the
graph is specialised to them, so a compiled model called with another value refuses with a clear error
instead of computing the traced branch. `OutputSpec` records the output's structure with every tensor
replaced by its position, and rebuilds it (same classes: a `SequenceClassifierOutput` stays one).
"""

from __future__ import annotations

import dataclasses
import inspect
import keyword
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx
import torch.utils._pytree as pytree
from torch import nn

from hybridc.errors import TraceError


@dataclass(frozen=True)
class Leaf:
    """The position of a tensor among a structure's flat tensors."""

    index: int


def _is_tensor_like(x: Any) -> bool:
    return isinstance(x, (torch.Tensor, fx.Proxy))


def _describe(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


# --------------------------------------------------------------------------------------------------
# inputs
# --------------------------------------------------------------------------------------------------


@dataclass
class InputSpec:
    """The example call of a model: its signature, each argument's value with tensors replaced by `Leaf`s
    (everything else is a constant folded into the graph), and a name per tensor leaf."""

    signature: inspect.Signature
    arguments: dict[str, Any]  # parameter name -> value template (Leaf, constant, or a container of them)
    names: list[str]  # one per tensor leaf, in graph-input order
    given: list[str] = dataclasses.field(default_factory=list)  # the arguments the example call passed

    @property
    def n_tensors(self) -> int:
        return len(self.names)

    def call(self, tensors: list[Any]) -> tuple[list[Any], dict[str, Any]]:
        """The example call of the original forward, tensors filled in: only the arguments it passed (the
        others keep their defaults), by keyword where the signature allows (decorated forwards such as
        transformers' read their options from the keywords)."""
        given = set(self.given or self.arguments)
        params = self.signature.parameters
        if any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in params.values()):
            bound = inspect.BoundArguments(
                self.signature, OrderedDict((k, _fill(v, tensors)) for k, v in self.arguments.items())
            )
            return list(bound.args), dict(bound.kwargs)
        args: list[Any] = []
        kwargs: dict[str, Any] = {}
        for name, template in self.arguments.items():
            kind = params[name].kind
            if kind is inspect.Parameter.POSITIONAL_ONLY:
                args.append(_fill(template, tensors))
            elif name in given:
                if kind is inspect.Parameter.VAR_KEYWORD:
                    kwargs.update(_fill(template, tensors))
                else:
                    kwargs[name] = _fill(template, tensors)
        return args, kwargs

    def tensors(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[torch.Tensor]:
        """The graph inputs of a call `forward(*args, **kwargs)`, checked against the example call."""
        try:
            bound = self.signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise TypeError(
                f"the compiled model is called like the original forward{self.signature}: {exc}"
            ) from None
        bound.apply_defaults()
        out: list[Any] = [None] * self.n_tensors
        for name, template in self.arguments.items():
            _match(name, template, bound.arguments.get(name), out)
        return out


def _fill(template: Any, tensors: list[Any]) -> Any:
    if isinstance(template, Leaf):
        return tensors[template.index]
    leaves, spec = pytree.tree_flatten(template, is_leaf=lambda x: isinstance(x, Leaf))
    if len(leaves) == 1 and leaves[0] is template:
        return template
    return pytree.tree_unflatten([tensors[x.index] if isinstance(x, Leaf) else x for x in leaves], spec)


def _match(name: str, template: Any, value: Any, out: list[Any]) -> None:
    """Put the tensors of `value` at their template positions; refuse a value the graph was not traced for."""
    t_leaves, t_spec = pytree.tree_flatten(template, is_leaf=lambda x: isinstance(x, Leaf))
    v_leaves, v_spec = pytree.tree_flatten(value)
    if not any(isinstance(t, Leaf) for t in t_leaves):
        if any(isinstance(v, torch.Tensor) for v in v_leaves) or not _same_constant(template, value):
            raise TypeError(
                f"argument {name!r}: the model was compiled with {name}={_describe(template)} folded into the "
                f"graph as a constant, got {_describe(value)}; compile with an example call that passes this "
                f"{name} (a tensor there becomes a graph input)"
            )
        return
    if t_spec != v_spec:
        raise TypeError(
            f"argument {name!r}: the model was compiled for a value shaped like "
            f"{_describe(template)}, got {_describe(value)}; compile with an example call like this one"
        )
    for t, v in zip(t_leaves, v_leaves):
        if isinstance(t, Leaf):
            if not isinstance(v, torch.Tensor):
                raise TypeError(
                    f"argument {name!r}: the model was compiled with a tensor here, got "
                    f"{_describe(v)}; pass a tensor (compile again for a call without one)"
                )
            out[t.index] = v
        elif isinstance(v, torch.Tensor) or not _same_constant(t, v):
            raise TypeError(
                f"argument {name!r}: the model was compiled with {_describe(t)} folded into the graph "
                f"here, got {_describe(v)}; compile with an example call like this one"
            )


def _same_constant(a: Any, b: Any) -> bool:
    if a is b:
        return True
    numbers = (int, float)
    if (
        isinstance(a, numbers)
        and isinstance(b, numbers)
        and not isinstance(a, bool)
        and not isinstance(b, bool)
    ):
        return a == b
    if type(a) is not type(b):
        return False
    try:
        return bool(a == b)
    except Exception:  # noqa: BLE001 - a constant without a usable ==: treat as different
        return False


def _safe_name(name: str, used: set[str]) -> str:
    base = "".join(c if c.isalnum() or c == "_" else "_" for c in name) or "arg"
    if base[0].isdigit() or keyword.iskeyword(base) or base == "self":
        base = "arg_" + base
    out, k = base, 1
    while out in used:
        out, k = f"{base}_{k}", k + 1
    used.add(out)
    return out


def example_call(example_inputs: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """An example as (args, kwargs): a tensor is one argument, a tuple/list are the positional arguments, a
    dict holds keyword arguments (HF style `{"input_ids": ..., "attention_mask": ...}`)."""
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,), {}
    if isinstance(example_inputs, dict):
        if not all(isinstance(k, str) for k in example_inputs):
            raise TraceError("a dict of example inputs holds keyword arguments: its keys must be strings")
        return (), dict(example_inputs)
    if isinstance(example_inputs, (tuple, list)):
        return tuple(example_inputs), {}
    raise TraceError(
        f"example inputs must be a tensor, a tuple of positional arguments or a dict of keyword "
        f"arguments, not {type(example_inputs).__name__}"
    )


def input_spec(
    model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[InputSpec, list[Any]]:
    """The InputSpec of the call `model(*args, **kwargs)` and its tensors in graph-input order."""
    sig = inspect.signature(model.forward)
    try:
        bound = sig.bind(*args, **kwargs)
    except TypeError as exc:
        raise TraceError(
            f"the example inputs do not fit {type(model).__name__}.forward{sig}: {exc}"
        ) from None
    given = list(bound.arguments)
    bound.apply_defaults()
    tensors: list[Any] = []
    names: list[str] = []
    used: set[str] = set()
    arguments: dict[str, Any] = OrderedDict()
    for name, value in bound.arguments.items():
        leaves, spec = pytree.tree_flatten(value)
        new = []
        for j, leaf in enumerate(leaves):
            if isinstance(leaf, torch.Tensor):
                new.append(Leaf(len(tensors)))
                tensors.append(leaf)
                names.append(_safe_name(name if len(leaves) == 1 else f"{name}_{j}", used))
            else:
                new.append(leaf)
        arguments[name] = (
            new[0] if (len(leaves) == 1 and leaves[0] is value) else pytree.tree_unflatten(new, spec)
        )
    return InputSpec(signature=sig, arguments=arguments, names=names, given=given), tensors


# --------------------------------------------------------------------------------------------------
# outputs
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Record:
    """A dataclass instance (a transformers `ModelOutput` or a plain @dataclass) in an output template."""

    cls: type
    fields: tuple[tuple[str, Any], ...]


def flatten_output(obj: Any) -> tuple[list[Any], Any]:
    """(tensors in order, template): tuples, lists, dicts, namedtuples and dataclasses are walked; tensors
    (or fx proxies, while tracing) become `Leaf`s; None and other values stay as constants."""
    leaves: list[Any] = []

    def walk(x: Any) -> Any:
        if _is_tensor_like(x):
            leaves.append(x)
            return Leaf(len(leaves) - 1)
        if dataclasses.is_dataclass(x) and not isinstance(x, type):
            return _Record(type(x), tuple((f.name, walk(getattr(x, f.name))) for f in dataclasses.fields(x)))
        if isinstance(x, tuple):
            items = [walk(t) for t in x]
            return type(x)(*items) if hasattr(x, "_fields") else tuple(items)
        if isinstance(x, list):
            return [walk(t) for t in x]
        if isinstance(x, dict):
            cls = OrderedDict if isinstance(x, OrderedDict) else dict  # fx's immutable_dict -> dict
            return cls((k, walk(v)) for k, v in x.items())
        return x

    template = walk(obj)
    return leaves, template


def unflatten_output(template: Any, tensors: list[Any] | tuple[Any, ...]) -> Any:
    """Rebuild an output from its template and its flat tensors (the inverse of `flatten_output`)."""
    if isinstance(template, Leaf):
        return tensors[template.index]
    if isinstance(template, _Record):
        values = {k: unflatten_output(v, tensors) for k, v in template.fields}
        return _make_record(template.cls, values)
    if isinstance(template, tuple):
        items = [unflatten_output(t, tensors) for t in template]
        return type(template)(*items) if hasattr(template, "_fields") else tuple(items)
    if isinstance(template, list):
        return [unflatten_output(t, tensors) for t in template]
    if isinstance(template, dict):
        return type(template)((k, unflatten_output(v, tensors)) for k, v in template.items())
    return template


def _make_record(cls: type, values: dict[str, Any]) -> Any:
    """An instance of dataclass `cls` with these field values (a ModelOutput keeps only non-None keys)."""
    init = {f.name for f in dataclasses.fields(cls) if f.init}
    try:
        obj = cls(**{k: v for k, v in values.items() if k in init})
    except TypeError:
        obj = object.__new__(cls)
    for k, v in values.items():
        if k not in init or getattr(obj, k, None) is not v:
            object.__setattr__(obj, k, v)
    return obj


def template_names(template: Any, names: list[str]) -> Any:
    """The template as JSON for a manifest: tensors by name, lists for tuples, dicts for dicts and
    dataclasses, None and numbers as themselves; other constants (strings, ...) as None, since a string
    would read as a tensor name."""
    if isinstance(template, Leaf):
        return names[template.index]
    if isinstance(template, _Record):
        return {k: template_names(v, names) for k, v in template.fields}
    if isinstance(template, (tuple, list)):
        return [template_names(t, names) for t in template]
    if isinstance(template, dict):
        return {str(k): template_names(v, names) for k, v in template.items()}
    if template is None or isinstance(template, (bool, int, float)):
        return template
    return None


@dataclass
class OutputSpec:
    """The structure of a model's output around the graph's flat output tensors."""

    template: Any
    n_tensors: int

    def unflatten(self, tensors: list[Any] | tuple[Any, ...]) -> Any:
        return unflatten_output(self.template, tensors)


def flat_forward_class(model: nn.Module, spec: InputSpec, holder: dict[str, Any]) -> type[nn.Module]:
    """A subclass of `type(model)` whose forward takes the example's tensors as positional arguments
    (named as in `spec`), calls the original forward with the constants folded in, and returns its tensors as
    a flat tuple (the output template goes to `holder["template"]`). Tracing an instance switched to it
    (`model.__class__ = ...`) keeps every module's qualified name."""
    cls = type(model)
    original = cls.forward

    def impl(self: nn.Module, *tensors: Any) -> tuple[Any, ...]:
        args, kwargs = spec.call(list(tensors))
        leaves, template = flatten_output(original(self, *args, **kwargs))
        holder["template"] = template
        return tuple(leaves)

    params = ", ".join(spec.names)
    namespace: dict[str, Any] = {"_impl": impl}
    exec(
        f"def forward(self{', ' if params else ''}{params}):\n    return _impl(self{', ' if params else ''}{params})\n",
        namespace,
    )
    forward = namespace["forward"]
    forward.__doc__ = original.__doc__
    return type(
        cls.__name__,
        (cls,),
        {"forward": forward, "__module__": cls.__module__, "__qualname__": cls.__qualname__},
    )
