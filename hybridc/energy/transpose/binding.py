"""Argument binding: every spelling of an op (module call, torch function, tensor method, ATen overload) is
bound to named parameters, so that one transpose rule reads e.g. `stride` whatever the spelling."""

from __future__ import annotations

import ast
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

aten = torch.ops.aten


REQUIRED = object()
# ATen / torch parameter names that mean the same thing as a name the rules use.
ALIASES = {"self": "input", "train": "training", "axis0": "dim0", "axis1": "dim1"}


@dataclass(frozen=True)
class Signature:
    """Parameter names (with defaults) of one spelling of an op, used to bind a node's args/kwargs."""

    params: tuple[tuple[str, Any], ...]
    varargs: str | None = None  # collects extra positionals (``x.permute(0, 2, 1)``, ``x.view(b, -1)``)
    varkw: bool = False  # accept unknown keyword arguments (kept under their own names)

    @staticmethod
    def parse(text: str) -> Signature:
        """``"input, kernel_size, stride=None, *rest, **kw"`` -> Signature (defaults are Python literals)."""
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
                params.append((item, REQUIRED))
        return Signature(tuple(params), varargs, varkw)

    @staticmethod
    def of_op(op: torch._ops.OpOverload) -> Signature:
        """Signature of an ATen overload, read from its schema (``self`` renamed ``input``)."""
        return Signature(
            tuple(
                (ALIASES.get(a.name, a.name), a.default_value if a.has_default_value() else REQUIRED)
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
            key = ALIASES.get(key, key)
            if key in bound and key != self.varargs:
                raise ValueError(f"argument '{key}' given twice")
            if key not in names and key != self.varargs and not self.varkw:
                raise ValueError(f"unexpected keyword argument '{key}'")
            bound[key] = tuple(value) if key == self.varargs else value
        for name, default in self.params:
            if name not in bound:
                if default is REQUIRED:
                    raise ValueError(f"missing argument '{name}'")
                bound[name] = default
        return bound


MODULE_SIGNATURE = Signature.parse("input")
