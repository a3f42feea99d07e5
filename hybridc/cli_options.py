"""Choices and options shared by the `hybridc` commands (partition, gradcheck, train, export, report): one
declaration each, so every command spells and documents a flag the same way."""

from __future__ import annotations

import os
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from hybridc.errors import HybridcError


class Norm(str, Enum):
    split = "split"
    entry = "entry"
    drop = "drop"


class Pool(str, Enum):
    digital = "digital"
    absorb = "absorb"


class Attention(str, Enum):
    digital = "digital"
    analog = "analog"


class Act(str, Enum):
    hardsigmoid = "hardsigmoid"
    keep = "keep"


class NonMono(str, Enum):
    substitute = "substitute"
    refuse = "refuse"


class EBKind(str, Enum):
    dhn = "dhn"
    drn = "drn"


class Init(str, Enum):
    keep = "keep"
    goe = "goe"


class SolverMode(str, Enum):
    sync = "sync"
    asynchronous = "async"


class Readout(str, Enum):
    analog = "analog"
    digital = "digital"


def shown(value: object) -> str:
    """" [default: VALUE]" for a help string, escaped: the rich help renderer reads "[word ...]" as markup and
    drops it (which is how most defaults used to vanish from --help). For options whose CLI default is None
    (resolved later by a config model), so typer has no default of its own to show."""
    return " " + escape(f"[default: {value}]")


def _part(name: str) -> object:
    """The partitioner's default of policy `name` (PartitionConfig): --help shows what actually runs."""
    from hybridc.plan import PartitionConfig

    return PartitionConfig.model_fields[name].default


#: typer's option keyword for on/off flags: no "<bool>" placeholder beside --force / --no-progress.
FLAG: dict[str, str] = {"metavar": ""}

ModelArg = Annotated[str, typer.Argument(help="zoo name (mlp, vgg-paper, vgg-paper-12, resnet18, transformer, "
                                              "vit; `hybridc zoo` lists them), path/model.py, "
                                              "path/model.py:factory, or a library model "
                                              + escape("timm:NAME[,key=value...] / hf:MODEL_TYPE[,key=value...]")
                                              + " (e.g. hf:bert,hidden_size=64,num_hidden_layers=2)")]
MaxBlock = Annotated[int | None, typer.Option("--max-block-size", "-n",
                                                 help="most weight layers per analog block"
                                                 + shown(_part("max_block_size")))]
InputShape = Annotated[str | None, typer.Option("--input-shape", help="per-sample input shape, e.g. 3,32,32"
                                                + shown("the model's INPUT_SHAPE"))]
ModelKwargs = Annotated[str | None, typer.Option("--model-kwargs", help="zoo factory arguments as JSON, "
                                                 "e.g. '{\"width\": 0.25}' (`hybridc zoo` lists them)")]
NormOpt = Annotated[Norm | None, typer.Option("--norm", help="batch/group norms inside a chain"
                                              + shown(_part("norm")))]
LNOpt = Annotated[Norm | None, typer.Option("--layer-norm", help="LayerNorm/RMSNorm inside a chain"
                                            + shown(_part("layer_norm")))]
PoolOpt = Annotated[Pool | None, typer.Option("--pool", help="linear pooling inside a chain" + shown(_part("pool")))]
AttnOpt = Annotated[Attention | None, typer.Option("--attention", help="attention modules"
                                                   + shown(_part("attention")))]
ActOpt = Annotated[Act | None, typer.Option("--activation", help="neuron activation in analog blocks"
                                            + shown(_part("activation")))]
SlopeOpt = Annotated[float | None, typer.Option("--hardsigmoid-slope", help="a in clamp(a·u,0,1)"
                                                + shown(_part("hardsigmoid_slope")))]
NonMonoOpt = Annotated[NonMono | None, typer.Option("--non-monotone",
                                                       help="GELU/SiLU under --activation keep: substitute ReLU "
                                                            "or refuse (keep the op digital)"
                                                            + shown(_part("non_monotone")))]
EBOpt = Annotated[EBKind | None, typer.Option("--eb-kind", help="energy-based block kind" + shown(_part("eb_kind")))]
ReadoutOpt = Annotated[Readout | None, typer.Option("--readout", help="weight layers that produce the model's "
                                                    "output: analog, or digital (the ff-EBM paper's digital "
                                                    "readout)" + shown(_part("readout")))]
SolverModeOpt = Annotated[SolverMode | None, typer.Option("--solver-mode", help="sync or async (even/odd) "
                                                          "relaxation" + shown("sync"))]


def policies(**values: object) -> dict[str, object]:
    """The partition policies given on the command line (--norm, --pool, ..., --readout) as PartitionConfig
    keywords: options left unset (None) dropped, so the partitioner's defaults apply; choices as strings."""
    return {k: (v.value if isinstance(v, Enum) else v) for k, v in values.items() if v is not None}


def parse_json_object(text: str | None, flag: str, example: str) -> dict[str, Any] | None:
    """The JSON object given with `flag` (e.g. --model-kwargs, --analog); None when the flag was not given.
    A HybridcError naming the flag and showing `example` for anything that is not a JSON object."""
    if text is None:
        return None
    import json

    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise HybridcError(f"{flag} must be a JSON object, e.g. '{example}' ({exc})") from None
    if not isinstance(value, dict):
        raise HybridcError(f"{flag} must be a JSON object, e.g. '{example}', not {text!r}")
    return value


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
            raise HybridcError(f"--model-kwargs applies to zoo models ({', '.join(ZOO)}); {model!r} is not one "
                               "(a model file takes its settings in the file, a library model in its spec)")
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
