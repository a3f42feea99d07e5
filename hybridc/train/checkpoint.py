"""Training checkpoints: everything needed to continue a run exactly where it stopped.

A checkpoint holds the model, optimizer and scheduler state, every RNG state (torch CPU/CUDA, Python,
NumPy), the data loader's position (epoch, batch), the partial-epoch accumulators when it was taken
mid-epoch (Ctrl-C), and the run's config. It is written atomically (temporary file + fsync + rename through
`hybridc.files`), so an interruption while saving leaves the previous checkpoint intact, and it is
loaded with `torch.load(weights_only=True)`: a checkpoint is data, never code.

Integrity: the checkpoint stores a SHA-256 digest of its own content (every tensor's bytes, dtype and shape
and every other value, in order; `content_digest`), and the trainer adds the SHA-256 of the run's plan.json
(`plan_sha256`). Loading recomputes the digest: a damaged file (a flipped byte inside a weight tensor, which
torch itself does not notice) is refused instead of resuming silently from wrong weights. Checkpoints
written before digests existed (no `digest` key) still load.
"""

from __future__ import annotations

import hashlib
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hybridc.errors import HybridcError
from hybridc.files import atomic_write
from hybridc.train.run_dir import CHECKPOINT_NAME

DIGEST_KEY = "digest"
FORMAT_VERSION = 1
REQUIRED_KEYS = (
    "format",
    "config",
    "model",
    "optimizer",
    "scheduler",
    "rng",
    "loader",
    "epoch",
    "batch",
    "partial",
    "world_size",
)
#: what a weights-only checkpoint (the best epoch's, `best.pt`) holds: enough to rebuild and run the model
MODEL_KEYS = ("format", "config", "model", "epoch")

__all__ = [
    "CHECKPOINT_NAME",
    "MODEL_KEYS",
    "REQUIRED_KEYS",
    "CheckpointError",
    "check_digest",
    "content_digest",
    "load_checkpoint",
    "read_torch_file",
    "rng_state",
    "save_checkpoint",
    "save_model_checkpoint",
    "set_rng_state",
]


class CheckpointError(HybridcError):
    """A checkpoint or run directory is missing, corrupt, or from an incompatible run."""


def rng_state() -> dict[str, Any]:
    """Every random state a training step can consume, as plain tensors/ints (weights_only-loadable)."""
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": [py_version, list(py_state), py_gauss],
        "numpy": [
            np_name,
            torch.from_numpy(np.asarray(np_keys, dtype=np.int64)),
            int(np_pos),
            int(np_has_gauss),
            float(np_gauss),
        ],
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


def _feed(h: Any, obj: Any) -> None:
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy())
    elif isinstance(obj, dict):
        h.update(b"D%d" % len(obj))
        for k, v in obj.items():
            _feed(h, k)
            _feed(h, v)
    elif isinstance(obj, (list, tuple)):
        h.update(b"L%d" % len(obj))
        for v in obj:
            _feed(h, v)
    elif isinstance(obj, np.ndarray):
        h.update(f"N{obj.dtype}{obj.shape}".encode())
        h.update(np.ascontiguousarray(obj).tobytes())
    else:
        h.update(f"S{type(obj).__name__}:{obj!r}".encode())


def content_digest(obj: Any) -> str:
    """Hex SHA-256 of a nested structure of dicts, lists, tensors and plain values: tensor bytes with their
    dtype and shape, every other value by its repr, in order. Independent of pickling details, so the same
    state always gives the same digest."""
    h = hashlib.sha256()
    _feed(h, obj)
    return h.hexdigest()


def _save_with_digest(path: Path, state: dict[str, Any], required: Any, what: str) -> None:
    """Check `state` holds the `required` keys, stamp format and content digest, write atomically."""
    missing = [k for k in required if k not in state and k != "format"]
    if missing:
        raise ValueError(f"{what} state lacks {missing}")
    payload = {"format": FORMAT_VERSION, **{k: v for k, v in state.items() if k != DIGEST_KEY}}
    payload[DIGEST_KEY] = content_digest(payload)
    atomic_write(Path(path), lambda tmp: torch.save(payload, tmp))


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write `state` (see REQUIRED_KEYS) atomically to `path`, with the digest of its content."""
    _save_with_digest(path, state, REQUIRED_KEYS, "checkpoint")


def save_model_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write a weights-only checkpoint (see MODEL_KEYS; extra keys such as `test_acc` kept) atomically, with
    the digest of its content: what `hybridc.load_run(..., checkpoint="best")` reads. It cannot be resumed
    from (no optimizer, RNG or data position)."""
    _save_with_digest(path, state, MODEL_KEYS, "model checkpoint")


def _short_reason(exc: BaseException) -> str:
    """The first line of a load error, without torch's advice to retry with weights_only=False (which would
    run whatever code a damaged or malicious file holds)."""
    text = str(exc)
    if "weights_only" in text or "Weights only load failed" in text:
        return "it holds objects other than tensors and plain data, which hybridc never unpickles"
    first = text.splitlines()[0] if text else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def read_torch_file(path: Path, map_location: str | torch.device = "cpu", what: str = "checkpoint") -> Any:
    """`torch.load(path, weights_only=True)`, every failure a CheckpointError naming the file (never the
    advice to load it unsafely)."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # pickle/zip errors of every kind all mean "unreadable"
        raise CheckpointError(
            f"{what} {path} is corrupt or not a hybridc checkpoint ({_short_reason(exc)}); "
            "delete it to restart, or restore it from a backup"
        ) from None


def check_digest(state: dict[str, Any], path: Path) -> None:
    """Recompute the digest `save_checkpoint` stored (removing it from `state`); CheckpointError on a mismatch.
    A state without one (written before digests existed, or by other tools) is accepted as it is."""
    stored = state.pop(DIGEST_KEY, None)
    if stored is None:
        return
    if stored != content_digest(state):
        raise CheckpointError(
            f"checkpoint {path} is corrupt: its content does not match the SHA-256 digest "
            "stored in it (the file was damaged or edited after it was written); restore it "
            "from a backup, or delete it to restart the run"
        )


def load_checkpoint(
    path: Path, map_location: str | torch.device = "cpu", resumable: bool = True
) -> dict[str, Any]:
    """Read a checkpoint written by `save_checkpoint` (or, with `resumable=False`, also one written by
    `save_model_checkpoint`); any problem is a CheckpointError saying what to do."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"no checkpoint at {path}: the run never finished an epoch or was not started with this hybridc"
        )
    state = read_torch_file(path, map_location)
    if not isinstance(state, dict):
        raise CheckpointError(
            f"checkpoint {path} is not a hybridc checkpoint (top level is {type(state).__name__})"
        )
    check_digest(state, path)
    missing = [k for k in (REQUIRED_KEYS if resumable else MODEL_KEYS) if k not in state]
    if missing:
        raise CheckpointError(f"checkpoint {path} is incomplete (missing {', '.join(missing)})")
    if state["format"] != FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {path} has format {state['format']}; this hybridc reads format {FORMAT_VERSION}"
        )
    return state
