"""Readers for the "python version" of CIFAR-10 and CIFAR-100 (Krizhevsky 2009).

Each batch file is a pickled dict written by Python 2, so it is read with ``encoding="bytes"`` and its keys
are bytes: ``b"data"`` is a (N, 3072) uint8 array whose rows hold the 1024 red, then 1024 green, then
1024 blue pixels of a 32x32 image (row-major), and the labels are under ``b"labels"`` (CIFAR-10) or
``b"fine_labels"`` (CIFAR-100, 100 classes; ``b"coarse_labels"`` holds the 20 superclasses).

Unpickling can run arbitrary code, so the files are read with an unpickler that only resolves the few
numpy globals a CIFAR batch contains; anything else is rejected as a corrupt or foreign file.
"""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hybridc.errors import DataError

__all__ = [
    "CIFAR10_TRAIN_FILES",
    "CIFAR10_TEST_FILES",
    "CIFAR100_TRAIN_FILES",
    "CIFAR100_TEST_FILES",
    "read_cifar_batch",
    "load_cifar_files",
]

CIFAR10_TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_TEST_FILES = ("test_batch",)
CIFAR100_TRAIN_FILES = ("train",)
CIFAR100_TEST_FILES = ("test",)

# (module, name) pairs a CIFAR pickle legitimately references (numpy 1.x and 2.x spellings).
_ALLOWED_GLOBALS = frozenset(
    {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),  # bytes pickled by Python 3 with protocol < 3
    }
)


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only numpy array reconstruction helpers."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")
        return super().find_class(module, name)


def read_cifar_batch(path: str | Path, label_key: bytes, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Read one CIFAR batch file; return ``(images uint8 (N, 3, 32, 32), labels int64 (N,))``.

    ``label_key`` is ``b"labels"`` for CIFAR-10 and ``b"fine_labels"`` for CIFAR-100.
    """
    path = Path(path)
    try:
        with path.open("rb") as fh:
            obj = _RestrictedUnpickler(fh, encoding="bytes").load()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as exc:
        raise DataError(
            f"{path}: not a readable CIFAR python batch (truncated or corrupt: {exc}); "
            "delete it and extract the archive again"
        ) from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read file ({exc})") from None
    if not isinstance(obj, dict):
        raise DataError(f"{path}: expected a pickled dict, found {type(obj).__name__}")
    for key in (b"data", label_key):
        if key not in obj:
            found = ", ".join(repr(k) for k in obj)
            raise DataError(f"{path}: missing key {key!r} (found {found}); is this the right CIFAR variant?")
    data = obj[b"data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        desc = (
            f"{data.dtype} array of shape {data.shape}"
            if isinstance(data, np.ndarray)
            else type(data).__name__
        )
        raise DataError(f"{path}: b'data' must be a uint8 array of shape (N, 3072), found {desc}")
    try:
        labels = np.asarray(obj[label_key], dtype=np.int64)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{path}: {label_key!r} is not a list of integers ({exc})") from None
    if labels.shape != (data.shape[0],):
        raise DataError(f"{path}: {data.shape[0]} images but {label_key!r} has shape {labels.shape}")
    if labels.size and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise DataError(
            f"{path}: labels must lie in [0, {num_classes}), found [{int(labels.min())}, {int(labels.max())}]"
        )
    return data.reshape(-1, 3, 32, 32), labels


def load_cifar_files(
    paths: Sequence[str | Path], label_key: bytes, num_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """Read and concatenate several CIFAR batch files (e.g. ``data_batch_1..5`` for the CIFAR-10 train split)."""
    parts = [read_cifar_batch(p, label_key, num_classes) for p in paths]
    if len(parts) == 1:
        return parts[0]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
