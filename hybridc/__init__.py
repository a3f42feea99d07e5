"""hybridc: a declarative graph compiler for hybrid analog/digital neural networks.

The public surface, imported lazily so that ``import hybridc`` (and ``hybridc --version``) stay cheap::

    import hybridc
    plan = hybridc.partition(model, example)            # which layers are analog, which digital
    ffebm = hybridc.compile(model, example, plan=plan)  # an nn.Module trained by BP-EP chaining
    report = hybridc.gradcheck(model, example)          # EP vs implicit differentiation, per tensor
    run = hybridc.load_run("runs/mlp")                  # a trained run, rebuilt as a module
"""

from __future__ import annotations

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version
from typing import Any

try:
    __version__: str = version("hybridc")
except PackageNotFoundError:  # running from a source tree that was never installed: its pyproject.toml
    import re as _re
    from pathlib import Path as _Path

    _pyproject = _Path(__file__).resolve().parent.parent / "pyproject.toml"
    _found = (
        _re.search(r'^version\s*=\s*"([^"]+)"', _pyproject.read_text(), _re.M)
        if _pyproject.is_file()
        else None
    )
    __version__ = _found.group(1) if _found else "0.0.0+unknown"

# public name -> (module, attribute)
_PUBLIC: dict[str, tuple[str, str]] = {
    "trace": ("hybridc.api", "trace"),
    "partition": ("hybridc.api", "partition"),
    "compile": ("hybridc.api", "compile"),
    "make_config": ("hybridc.api", "make_config"),
    "gradcheck": ("hybridc.gradcheck", "gradcheck"),
    "Plan": ("hybridc.plan", "Plan"),
    "PartitionConfig": ("hybridc.plan", "PartitionConfig"),
    "FFEBM": ("hybridc.runtime.ffebm", "FFEBM"),
    "load_model": ("hybridc.load", "load_model"),
    "load_run": ("hybridc.evaluate", "load_run"),
    "evaluate_run": ("hybridc.evaluate", "evaluate_run"),
    "HybridcError": ("hybridc.errors", "HybridcError"),
    "EquilibriumDivergedError": ("hybridc.errors", "EquilibriumDivergedError"),
}

__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module 'hybridc' has no attribute {name!r}")
    module, attr = _PUBLIC[name]
    value = getattr(import_module(module), attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
