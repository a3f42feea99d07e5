"""Choices and options shared by the `hybridc` commands (partition, gradcheck, train, export, report): one
declaration each, so every command spells and documents a flag the same way."""

from __future__ import annotations

import os
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

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


ModelArg = Annotated[str, typer.Argument(help="zoo name (mlp, vgg-paper, vgg-paper-12, resnet18, transformer, "
                                              "vit), path/model.py, path/model.py:factory, or a library model "
                                              "timm:NAME[,key=value...] / hf:MODEL_TYPE[,key=value...] "
                                              "(e.g. hf:bert,hidden_size=64,num_hidden_layers=2)")]
MaxBlock = Annotated[int | None, typer.Option("--max-block-size", "-n",
                                                 help="most weight layers per analog block [default: 2]")]
InputShape = Annotated[str | None, typer.Option("--input-shape", help="per-sample input shape, e.g. 3,32,32")]
NormOpt = Annotated[Norm | None, typer.Option("--norm", help="batch/group norms inside a chain [entry]")]
LNOpt = Annotated[Norm | None, typer.Option("--layer-norm", help="LayerNorm/RMSNorm inside a chain [split]")]
PoolOpt = Annotated[Pool | None, typer.Option("--pool", help="linear pooling inside a chain [absorb]")]
AttnOpt = Annotated[Attention | None, typer.Option("--attention", help="attention modules [digital]")]
ActOpt = Annotated[Act | None, typer.Option("--activation", help="neuron activation [hardsigmoid]")]
SlopeOpt = Annotated[float | None, typer.Option("--hardsigmoid-slope", help="a in clamp(a·u,0,1) [0.5]")]
NonMonoOpt = Annotated[NonMono | None, typer.Option("--non-monotone",
                                                       help="GELU/SiLU under keep: substitute relu or keep digital")]
EBOpt = Annotated[EBKind | None, typer.Option("--eb-kind", help="energy-based block kind [dhn]")]
SolverModeOpt = Annotated[SolverMode | None, typer.Option("--solver-mode", help="sync or async relaxation [sync]")]


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
