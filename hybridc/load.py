"""Resolve MODEL (a zoo name, `path/model.py`, `path/model.py:factory`, or a library model `timm:NAME[,k=v]` /
`hf:MODEL_TYPE[,k=v]`, see hybridc.load_library) to a module and example input."""

from __future__ import annotations

import importlib.util
import inspect
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import torch
from torch import nn

from hybridc.errors import ModelLoadError
from hybridc.load_library import build_library_model, is_library_spec
from hybridc.models import ZOO, ZOO_INPUT_SHAPES, zoo_names

FACTORY_NAMES = ("model", "build")
#: most values in one sample of --input-shape (2^26: a 4096x4096 RGBA image; larger is a typo or out of memory)
MAX_SAMPLE_ELEMENTS = 1 << 26


@dataclass
class LoadedModel:
    model: nn.Module
    example_inputs: tuple[torch.Tensor, ...]
    source: str


def parse_shape(text: str) -> tuple[int, ...]:
    """'1,28,28' -> (1, 28, 28); a clear error for anything else."""
    try:
        shape = tuple(int(p) for p in text.replace("x", ",").split(",") if p.strip())
    except ValueError:
        raise ModelLoadError(
            f"--input-shape {text!r} is not a comma-separated list of integers (e.g. 3,32,32)"
        ) from None
    if not shape or any(d <= 0 for d in shape):
        raise ModelLoadError(f"--input-shape {text!r} must list positive sizes (e.g. 3,32,32)")
    if math.prod(shape) > MAX_SAMPLE_ELEMENTS:
        raise ModelLoadError(
            f"--input-shape {text!r} has {math.prod(shape):,} values per sample, more than the "
            f"{MAX_SAMPLE_ELEMENTS:,} hybridc accepts (a typo?)"
        )
    return shape


def _import_file(path: Path) -> ModuleType:
    name = f"hybridc_user_{abs(hash(str(path.resolve())))}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ModelLoadError(f"{path} is not a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    sys.path.insert(0, str(path.parent.resolve()))
    try:
        spec.loader.exec_module(module)
    except SystemExit as exc:  # a script run on import would otherwise end hybridc silently (exit 0)
        raise ModelLoadError(
            f"importing {path} called sys.exit({exc.code!r}): a model file must define a model, "
            'not run a program (put script code under `if __name__ == "__main__":`)'
        ) from None
    except Exception as exc:
        raise ModelLoadError(f"importing {path} failed: {type(exc).__name__}: {exc}") from None
    finally:
        sys.path.pop(0)
    return module


def _module_classes(module: ModuleType) -> list[type[nn.Module]]:
    out = []
    for obj in vars(module).values():
        if inspect.isclass(obj) and issubclass(obj, nn.Module) and obj.__module__ == module.__name__:
            try:
                sig = inspect.signature(obj.__init__)
            except (TypeError, ValueError):
                continue
            required = [
                p
                for p in list(sig.parameters.values())[1:]
                if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
            ]
            if not required:
                out.append(obj)
    return out


def _build_from_file(path: Path, factory: str | None) -> tuple[nn.Module, ModuleType]:
    module = _import_file(path)
    if factory:
        fn = getattr(module, factory, None)
        if fn is None or not callable(fn):
            raise ModelLoadError(f"{path} has no callable {factory!r}")
        where = f"{path}:{factory}"
    else:
        fn = next((getattr(module, n) for n in FACTORY_NAMES if callable(getattr(module, n, None))), None)
        where = str(path)
        if fn is None:
            classes = _module_classes(module)
            if len(classes) != 1:
                found = ", ".join(c.__name__ for c in classes) or "none"
                raise ModelLoadError(
                    f"{path}: cannot tell which model to build (nn.Module classes constructible without "
                    f"arguments: {found}). Add a `def model() -> nn.Module` factory, or name one: "
                    f"{path}:ClassName"
                )
            fn = classes[0]
    try:
        built = fn()
    except SystemExit as exc:
        raise ModelLoadError(
            f"{where}() called sys.exit({exc.code!r}) instead of returning a model"
        ) from None
    except Exception as exc:
        raise ModelLoadError(f"{where}() failed: {type(exc).__name__}: {exc}") from None
    if not isinstance(built, nn.Module):
        raise ModelLoadError(f"{where}() returned {type(built).__name__}, not an nn.Module")
    return built, module


def load_model(
    spec: str, input_shape: str | tuple[int, ...] | None = None, batch: int = 2, **zoo_kwargs: object
) -> LoadedModel:
    """Build the model named by `spec` and an example input batch of `batch` samples."""
    shape = parse_shape(input_shape) if isinstance(input_shape, str) else input_shape
    if is_library_spec(spec):
        if zoo_kwargs:
            raise ModelLoadError(
                f"MODEL {spec!r}: give a library model's settings in the spec "
                f"({spec},key=value), not as model kwargs {sorted(zoo_kwargs)}"
            )
        model, example = build_library_model(spec, shape, batch)
        return LoadedModel(model=model, example_inputs=example, source=spec)
    if spec in ZOO:
        from hybridc.models import build_zoo_model

        model = build_zoo_model(spec, **zoo_kwargs)
        shape = shape or ZOO_INPUT_SHAPES[spec]
        source = f"zoo:{spec}"
        example_fn = None
    else:
        path_text, _, factory = spec.partition(":") if not Path(spec).exists() else (spec, "", "")
        path = Path(path_text)
        if not path.exists():
            raise ModelLoadError(
                f"MODEL {spec!r} is neither a zoo model ({', '.join(zoo_names())}), a library model "
                "(timm:NAME, hf:MODEL_TYPE) nor an existing file"
            )
        if path.is_dir():
            raise ModelLoadError(f"MODEL {spec!r} is a directory; give a .py file")
        model, module = _build_from_file(path, factory or None)
        source = str(path) + (f":{factory}" if factory else "")
        example_fn = getattr(module, "example_input", None)
        if shape is None and example_fn is None:
            shape = getattr(module, "INPUT_SHAPE", None)
    if shape is not None:
        example = (torch.randn(batch, *shape),)
    elif example_fn is not None:
        ex = example_fn()
        example = tuple(ex) if isinstance(ex, (tuple, list)) else (ex,)
    else:
        raise ModelLoadError(
            f"no example input for {spec}: pass --input-shape C,H,W, or define INPUT_SHAPE = (C, H, W) or "
            "`def example_input() -> torch.Tensor` in the file"
        )
    return LoadedModel(model=model, example_inputs=example, source=source)
