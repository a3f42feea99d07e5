"""Training checkpoints: everything needed to continue a run exactly where it stopped.

A checkpoint holds the model, optimizer and scheduler state, every RNG state (torch CPU/CUDA, Python,
NumPy), the data loader's position (epoch, batch), the partial-epoch accumulators when it was taken
mid-epoch (Ctrl-C), and the run's config. It is written atomically (temporary file + fsync + rename through
`hybridc.runtime.files`), so an interruption while saving leaves the previous checkpoint intact, and it is
loaded with `torch.load(weights_only=True)`: a checkpoint is data, never code.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hybridc.errors import HybridcError
from hybridc.runtime.files import atomic_write

CHECKPOINT_NAME = "checkpoint.pt"
FORMAT_VERSION = 1
REQUIRED_KEYS = ("format", "config", "model", "optimizer", "scheduler", "rng", "loader", "epoch",
                 "batch", "partial", "world_size")


class CheckpointError(HybridcError):
    """A checkpoint or run directory is missing, corrupt, or from an incompatible run."""


def rng_state() -> dict[str, Any]:
    """Every random state a training step can consume, as plain tensors/ints (weights_only-loadable)."""
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": [py_version, list(py_state), py_gauss],
        "numpy": [np_name, torch.from_numpy(np.asarray(np_keys, dtype=np.int64)), int(np_pos),
                  int(np_has_gauss), float(np_gauss)],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `rng_state` captured (CUDA states only when this process has the same GPUs)."""
    torch.set_rng_state(state["torch"])
    version, py_state, gauss = state["python"]
    random.setstate((version, tuple(py_state), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write `state` (see REQUIRED_KEYS) atomically to `path`."""
    missing = [k for k in REQUIRED_KEYS if k not in state and k != "format"]
    if missing:
        raise ValueError(f"checkpoint state lacks {missing}")
    payload = {"format": FORMAT_VERSION, **state}
    atomic_write(Path(path), lambda tmp: torch.save(payload, tmp))


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by `save_checkpoint`; any problem is a CheckpointError saying what to do."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}: the run never finished an epoch or was not "
                              "started with this hybridc")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # pickle/zip errors of every kind all mean "unreadable"
        raise CheckpointError(f"checkpoint {path} is corrupt or not a hybridc checkpoint "
                              f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
                              "delete it to restart, or restore it from a backup") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path} is not a hybridc checkpoint (top level is "
                              f"{type(state).__name__})")
    missing = [k for k in REQUIRED_KEYS if k not in state]
    if missing:
        raise CheckpointError(f"checkpoint {path} is incomplete (missing {', '.join(missing)})")
    if state["format"] != FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {path} has format {state['format']}; this hybridc reads "
                              f"format {FORMAT_VERSION}")
    return state
