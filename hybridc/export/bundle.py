"""The files of an export directory besides the block files: plan.json (the plan the model was compiled
with), samples.npz (the reference values `hybridc verify` checks every file against), and the inventory of
every file (path, kind, SHA-256, size) that the manifest lists, so that a changed or missing file is found.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from hybridc.export.manifest import FileInfo, SamplesInfo
from hybridc.files import sha256_file

if TYPE_CHECKING:
    from hybridc.plan import Plan

#: relative paths inside an export directory
PLAN_FILE = "plan.json"
SAMPLES_FILE = "samples.npz"

#: the manifest's kind of a file, by suffix (any other file is the plan)
_KINDS = {".onnx": "onnx", ".safetensors": "safetensors", ".npz": "samples"}


def hybridc_version() -> str:
    """The installed hybridc's version, for the manifest ('unknown' when not installed as a package)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("hybridc")
    except PackageNotFoundError:
        return "unknown"


def write_plan(root: Path, plan: Plan) -> str:
    """Write the plan into `root` as plan.json; return its relative path."""
    plan.save(root / PLAN_FILE)
    return PLAN_FILE


def write_samples(root: Path, values: dict[str, torch.Tensor], batch: int, seed: int) -> SamplesInfo:
    """Write the reference values (tensor name -> value of `batch` samples drawn with `seed`) into `root` as
    samples.npz; return the manifest's description of it."""
    np.savez(root / SAMPLES_FILE, **{k: v.detach().cpu().numpy() for k, v in values.items()})
    return SamplesInfo(file=SAMPLES_FILE, batch=batch, seed=seed, tensors=sorted(values))


def file_inventory(root: Path) -> list[FileInfo]:
    """Every file under `root` (sorted by path): its relative path, kind, SHA-256 and size."""
    files = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        kind = _KINDS.get(path.suffix, "plan")
        files.append(FileInfo(path=rel, kind=kind, sha256=sha256_file(path), bytes=path.stat().st_size))
    return files


__all__ = ["PLAN_FILE", "SAMPLES_FILE", "file_inventory", "hybridc_version", "write_plan", "write_samples"]
