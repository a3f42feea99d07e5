"""The model a command works on: the MODEL argument, --input-shape and --model-kwargs (one declaration
each), loading it, and checking an output file before any work. The settings flags (partition policies,
training fields) are generated from their models in `hybridc.cli.flags`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from hybridc.cli.flags import parse_json_object, shown
from hybridc.errors import HybridcError

ModelArg = Annotated[
    str,
    typer.Argument(
        help="zoo name (mlp, vgg-paper, vgg-paper-12, resnet18, transformer, "
        "vit; `hybridc zoo` lists them), path/model.py, "
        "path/model.py:factory, or a library model "
        + escape("timm:NAME[,key=value...] / hf:MODEL_TYPE[,key=value...]")
        + " (e.g. hf:bert,hidden_size=64,num_hidden_layers=2)"
    ),
]
InputShape = Annotated[
    str | None,
    typer.Option(
        "--input-shape", help="per-sample input shape, e.g. 3,32,32" + shown("the model's INPUT_SHAPE")
    ),
]
ModelKwargs = Annotated[
    str | None,
    typer.Option(
        "--model-kwargs",
        help="zoo factory arguments as JSON, e.g. '{\"width\": 0.25}' (`hybridc zoo` lists them)",
    ),
]


def parse_model_kwargs(text: str | None, flag: str = "--model-kwargs") -> dict[str, Any]:
    """The JSON object given with --model-kwargs (keyword arguments of a zoo model's factory); {} when not
    given or empty."""
    return parse_json_object(text or None, flag, '{"width": 0.25}') or {}


def load_zoo_or_file(model: str, input_shape: str | None, model_kwargs: str | None, **load_kw: Any) -> Any:
    """`hybridc.load.load_model` for a command's MODEL, --input-shape and --model-kwargs (a JSON object of
    zoo-factory arguments; refused for a model file or a library spec, whose factory takes none here).
    `load_kw`: further load_model arguments (e.g. batch)."""
    from hybridc.load import load_model

    kwargs = parse_model_kwargs(model_kwargs)
    if kwargs:
        from hybridc.models import ZOO

        if model not in ZOO:
            raise HybridcError(
                f"--model-kwargs applies to zoo models ({', '.join(ZOO)}); {model!r} is not one "
                "(a model file takes its settings in the file, a library model in its spec)"
            )
    return load_model(model, input_shape, **load_kw, **kwargs)


def check_output_file(path: Path | None, flag: str) -> None:
    """Before any work: `path` (an output FILE given with `flag`) can be written: not a directory, in an
    existing, writable directory. A HybridcError naming the flag otherwise (instead of a traceback after the
    work was done)."""
    if path is None:
        return
    if path.is_dir():
        raise HybridcError(f"{flag} {path} is a directory; give a file name (e.g. {path / 'out.json'})")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise HybridcError(f"{flag} {path}: directory {parent} does not exist; create it first")
    if not os.access(parent, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise HybridcError(f"{flag} {path}: {parent if not path.exists() else path} is not writable")
