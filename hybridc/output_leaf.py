"""Which tensor of a model's output a loss is taken on: models return tuples, dicts and dataclasses
(transformers' `ModelOutput`, e.g. `SequenceClassifierOutput(loss=None, logits=...)`), not one tensor.

A leaf is named by its path of keys (dict keys and dataclass fields) and indices (tuples, lists), written
with dots: `logits`, `0`, `hidden_states.2`. The default is the first tensor leaf in the output's own order
(a ModelOutput lists only its non-None fields, so that is `logits` for a classifier). The path is resolved on
the original model's output and then looked up in the compiled model's, which has the same structure; where
the structures differ but hold as many tensors, the leaf at the same flat position is taken.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from hybridc.errors import HybridcError

Path = tuple[str | int, ...]


def tensor_leaves(obj: Any, prefix: Path = ()) -> list[tuple[Path, torch.Tensor]]:
    """Every tensor in `obj` with its path, depth first in the structure's own order."""
    if isinstance(obj, torch.Tensor):
        return [(prefix, obj)]
    if isinstance(obj, Mapping):  # dicts, fx's immutable_dict, ModelOutput (its non-None fields)
        items: list[tuple[str | int, Any]] = list(obj.items())
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        items = [(f.name, getattr(obj, f.name)) for f in dataclasses.fields(obj)]
    elif isinstance(obj, (tuple, list)):
        items = list(enumerate(obj))
    else:
        return []
    out: list[tuple[Path, torch.Tensor]] = []
    for key, value in items:
        out.extend(tensor_leaves(value, (*prefix, key)))
    return out


def path_text(path: Path) -> str:
    return ".".join(str(k) for k in path) or "(the output itself)"


def select_path(out: Any, output: str | int | None) -> Path:
    """The path of the leaf `output` names in `out` (None: the first tensor leaf)."""
    leaves = tensor_leaves(out)
    if not leaves:
        raise HybridcError(f"the model's output ({type(out).__name__}) holds no tensor to take a loss on")
    if output is None:
        return leaves[0][0]
    want = str(output)
    for path, _ in leaves:
        if path_text(path) == want:
            return path
    named = ", ".join(path_text(p) for p, _ in leaves[:12])
    raise HybridcError(
        f"the model's output ({type(out).__name__}) has no tensor at {want!r}; its tensors are at: "
        f"{named}. Pass one of these as output= (CLI: --output)"
    )


def logits_path(out: Any) -> Path:
    """The leaf a classification loss is taken on: the tensor named `logits` where the output has one at its
    top level (transformers' `*ClassifierOutput`, a `{"logits": ...}` dict), else the first tensor leaf."""
    leaves = tensor_leaves(out)
    for path, _ in leaves:
        if path == ("logits",):
            return path
    return select_path(out, None)


def leaf_at(out: Any, path: Path, reference: Any | None = None) -> torch.Tensor:
    """The tensor at `path` in `out`. If `out` has no such path (a structure rebuilt differently) but as many
    tensor leaves as `reference`, the leaf at the same flat position as `path` there."""
    leaves = tensor_leaves(out)
    for p, t in leaves:
        if p == path:
            return t
    if reference is not None:
        ref = [p for p, _ in tensor_leaves(reference)]
        if len(ref) == len(leaves) and path in ref:
            return leaves[ref.index(path)][1]
    raise HybridcError(
        f"the compiled model's output ({type(out).__name__}) has no tensor at {path_text(path)!r} "
        f"where the original model's has one; compare their outputs"
    )


def _index(out: Any, path: Path) -> Any:
    """`out[k0][k1]...`: dict keys, ModelOutput fields (a ModelOutput indexes by field name) and tuple indices."""
    for key in path:
        if dataclasses.is_dataclass(out) and not isinstance(out, Mapping) and isinstance(key, str):
            out = getattr(out, key)
        else:
            out = out[key]
    return out


#: (model class, leaf path) -> its narrowed subclass, so that rebuilding a model reuses one class
_NARROWED: dict[tuple[type, Path], type] = {}


def narrow_output(model: nn.Module, path: Path) -> nn.Module:
    """`model` itself, its forward narrowed to return only the tensor at `path` (e.g. `("logits",)`).

    Why: the trainer, `hybridc.load_run` and `evaluate_run` take a classifier's logits as one tensor, while
    library models return a structure (`ImageClassifierOutput(logits=...)`); narrowing the model before it is
    compiled makes the compiled ff-EBM return that tensor too. The instance's class becomes a subclass of its
    own with the same name and a forward that indexes the original's output (plain indexing, which torch.fx
    and torch.export trace, keeping the original signature): parameter names, the traced graph's node names
    and `plan.model.model_class` stay those of the model as written, so a plan from `hybridc partition` of the
    same model still compiles it, and state dicts keep their keys."""
    path = tuple(path)
    cls = type(model)
    if getattr(cls, "_hybridc_output_path", None) is not None:
        if cls._hybridc_output_path == path:
            return model
        cls = cls.__mro__[1]  # narrowed before to another leaf: narrow the original class instead
    key = (cls, path)
    sub = _NARROWED.get(key)
    if sub is None:
        original = cls.forward

        @functools.wraps(original)
        def forward(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
            return _index(
                original(self, *args, **kwargs), path
            )  # no checks: a trace sees proxies, not tensors

        sub = type(
            cls.__name__,
            (cls,),
            {
                "forward": forward,
                "_hybridc_output_path": path,
                "__module__": cls.__module__,
                "__qualname__": cls.__qualname__,
                "__doc__": cls.__doc__,
            },
        )
        _NARROWED[key] = sub
    model.__class__ = sub
    return model


def output_path(model: nn.Module) -> Path | None:
    """The leaf path `narrow_output` narrowed `model` to (None: its forward is its own)."""
    return getattr(type(model), "_hybridc_output_path", None)
