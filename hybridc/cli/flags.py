"""Command-line options generated from the settings models: a pydantic field (type, choices, default,
description) declared once in `PartitionConfig`, `ExperimentConfig`, ... becomes the same `--flag` in every
command that takes it, with the same help and the same shown default.

    @app.command(cls=Command)
    @settings_flags("policies", PartitionConfig)
    def partition(model: ModelArg, policies: dict[str, Any]) -> None: ...

`settings_flags` appends one option per field to the command's signature (what typer reads) and hands the
command the options that were given as one dict (None = not given: dropped, so the model's default applies
when the dict is validated). Values are validated by the model, not by the command line, so a bad value
gets the same message from a flag, an experiment file or the Python API.
"""

from __future__ import annotations

import functools
import inspect
import json
import types
import typing
from collections.abc import Callable, Iterable
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import typer
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from rich.markup import escape

from hybridc.errors import HybridcError
from hybridc.fields import shown_default

F = TypeVar("F", bound=Callable[..., Any])

#: typer's option keyword for on/off flags: no "<bool>" placeholder beside --force / --no-progress.
FLAG: dict[str, str] = {"metavar": ""}

#: Short forms, one table for every command.
SHORT: dict[str, str] = {"max_block_size": "-n"}


def shown(value: object) -> str:
    """ " [default: VALUE]" for a help string, escaped: the rich help renderer reads "[word ...]" as markup and
    drops it. For options whose CLI default is None (resolved later by a settings model)."""
    return " " + escape(f"[default: {value}]")


def flag_name(field: str) -> str:
    """The command-line spelling of a settings field: `max_block_size` -> `--max-block-size`."""
    return "--" + field.replace("_", "-")


def _base_type(annotation: Any) -> Any:
    """The type the command line parses for a field: Optional stripped; a Literal stays a choice; a mapping
    is given as a JSON string."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return _base_type(args[0])
        raise TypeError(f"no command-line type for {annotation}")
    if origin is Literal or annotation in (int, float, str, bool):
        return annotation
    if origin is dict or annotation is dict:
        return dict
    if origin is Annotated:
        return _base_type(typing.get_args(annotation)[0])
    raise TypeError(f"no command-line type for {annotation}")


def _option(name: str, info: FieldInfo, help_text: str | None) -> tuple[Any, Any]:
    """The (annotation, default) of the generated parameter for field `name`."""
    base = _base_type(info.annotation)
    text = escape(help_text or info.description or name.replace("_", " "))
    default = shown_default(info)
    decls = [flag_name(name)] + ([SHORT[name]] if name in SHORT else [])
    extra: dict[str, Any] = {}
    if base is bool:
        decls = [f"{flag_name(name)}/--no-{name.replace('_', '-')}"] + decls[1:]
        extra = FLAG
        if default is not None:
            default = flag_name(name)[2:] if default is True else f"no-{name.replace('_', '-')}"
    if base is dict:
        base = str
        text += " (a JSON object" + (
            f", e.g. '{escape(json.dumps(info.examples[0]))}')" if info.examples else ")"
        )
    if default is not None and default != {}:
        text += shown(default)
    if typing.get_origin(base) is Literal:
        # an Enum of the field's own (handed back as plain values by `_given`): typer lists the choices in the
        # field's order, whatever `Literal[...] | None` typing's cache returns (see `hybridc.fields`)
        base = Enum(f"{name}_choices", {str(v): str(v) for v in typing.get_args(base)}, type=str)
    return Annotated[base | None, typer.Option(*decls, help=text, **extra)], None


def _given(name: str, value: Any, info: FieldInfo) -> Any:
    """A generated option's value as the settings model takes it: a JSON object parsed, a path as text."""
    if _base_type(info.annotation) is dict:
        example = json.dumps(info.examples[0]) if info.examples else '{"key": 1}'
        return parse_json_object(value, flag_name(name), example)
    if isinstance(value, Enum):
        return value.value
    return str(value) if isinstance(value, Path) else value


def settings_flags(
    dest: str,
    model: type[BaseModel],
    fields: Iterable[str] | None = None,
    *,
    exclude: Iterable[str] = (),
    helps: dict[str, str] | None = None,
) -> Callable[[F], F]:
    """A decorator that gives a typer command one option per field of `model` (`fields`, or all but
    `exclude`) and passes the options given as the dict keyword `dest`. `helps`: a command-specific help
    text for some fields (the default and the choices still come from the field)."""
    names = [n for n in (fields or model.model_fields) if n not in set(exclude)]
    infos = {n: model.model_fields[n] for n in names}

    def decorate(fn: F) -> F:
        sig = inspect.signature(fn, eval_str=True)  # typer reads the objects: evaluate string annotations
        if dest not in sig.parameters:
            raise TypeError(f"{fn.__name__} has no parameter {dest!r} for the {model.__name__} options")
        clash = [n for n in names if n in sig.parameters]
        if clash:
            raise TypeError(f"{fn.__name__} declares {clash} itself and through {model.__name__}")
        generated = []
        annotations = {p.name: p.annotation for p in sig.parameters.values() if p.name != dest}
        for n in names:
            annotation, default = _option(n, infos[n], (helps or {}).get(n))
            generated.append(
                inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation)
            )
            annotations[n] = annotation
        kept = [p for p in sig.parameters.values() if p.name != dest]
        positional = [p for p in kept if p.kind != inspect.Parameter.KEYWORD_ONLY]
        keyword = [p for p in kept if p.kind == inspect.Parameter.KEYWORD_ONLY]

        @functools.wraps(fn)
        def command(*args: Any, **kwargs: Any) -> Any:
            values = {n: kwargs.pop(n, None) for n in names}
            given = {n: _given(n, v, infos[n]) for n, v in values.items() if v is not None}
            return fn(*args, **kwargs, **{dest: given})

        command.__signature__ = sig.replace(parameters=positional + keyword + generated)  # type: ignore[attr-defined]
        command.__annotations__ = annotations
        return command  # type: ignore[return-value]

    return decorate


def parse_json_object(text: str | None, flag: str, example: str) -> dict[str, Any] | None:
    """The JSON object given with `flag` (e.g. --model-kwargs, --analog); None when the flag was not given.
    A HybridcError naming the flag and showing `example` for anything that is not a JSON object."""
    if text is None:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise HybridcError(f"{flag} must be a JSON object, e.g. '{example}' ({exc})") from None
    if not isinstance(value, dict):
        raise HybridcError(f"{flag} must be a JSON object, e.g. '{example}', not {text!r}")
    return value
