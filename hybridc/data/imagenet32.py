"""Reader for ImageNet32x32, the downsampled ImageNet of Chrabaszcz, Loshchilov & Hutter (2017).

The official distribution (``Imagenet32_train_npz.zip``, ``Imagenet32_val_npz.zip``) holds numpy
``.npz`` archives ``train_data_batch_1.npz`` .. ``train_data_batch_10.npz`` (1,281,167 images in all)
and ``val_data.npz`` (50,000 images). Each has ``data``, a (N, 3072) uint8 array laid out like CIFAR
(1024 red, 1024 green, 1024 blue values of a 32x32 image), and ``labels``, class indices **1-based**
in 1..1000, converted here to 0-based. Train batches also carry a ``mean`` image, which is not used.

The full training set is 3.9 GB as uint8, so the reader first reads only the labels of every file
(npz members load lazily) to size one output array, then fills it in place: peak memory is the
result plus one batch, not twice the result.
"""

from __future__ import annotations

import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from hybridc.errors import DataError

__all__ = ["IMAGENET32_TRAIN_FILES", "IMAGENET32_TEST_FILES", "IMAGENET32_CLASSES", "load_imagenet32_files"]

IMAGENET32_TRAIN_FILES = tuple(f"train_data_batch_{i}.npz" for i in range(1, 11))
IMAGENET32_TEST_FILES = ("val_data.npz",)
IMAGENET32_CLASSES = 1000


def _open_npz(path: Path) -> np.lib.npyio.NpzFile:
    try:
        npz = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(f"{path}: not a readable .npz archive (truncated or corrupt: {exc})") from None
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise DataError(f"{path}: expected an .npz archive with 'data' and 'labels', found a single array")
    missing = [k for k in ("data", "labels") if k not in npz.files]
    if missing:
        npz.close()
        raise DataError(f"{path}: missing {', '.join(missing)} (found {', '.join(npz.files)})")
    return npz


def _member(npz: np.lib.npyio.NpzFile, key: str, path: Path) -> np.ndarray:
    try:
        return npz[key]
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(f"{path}: member {key!r} is truncated or corrupt ({exc})") from None


def _labels(npz: np.lib.npyio.NpzFile, path: Path) -> np.ndarray:
    raw = _member(npz, "labels", path)
    labels = np.asarray(raw).reshape(-1)
    if not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{path}: 'labels' must be integers, found {labels.dtype}")
    labels = labels.astype(np.int64)
    if labels.size and (int(labels.min()) < 1 or int(labels.max()) > IMAGENET32_CLASSES):
        raise DataError(
            f"{path}: ImageNet32 labels must be 1-based in [1, {IMAGENET32_CLASSES}], "
            f"found [{int(labels.min())}, {int(labels.max())}]"
        )
    return labels - 1


def load_imagenet32_files(paths: Sequence[str | Path]) -> tuple[np.ndarray, np.ndarray]:
    """Read and concatenate ImageNet32 npz batches.

    Returns ``(images uint8 (N, 3, 32, 32), labels int64 (N,) in 0..999)``.
    """
    paths = [Path(p) for p in paths]
    label_parts: list[np.ndarray] = []
    for path in paths:
        with _open_npz(path) as npz:
            label_parts.append(_labels(npz, path))
    total = sum(len(lab) for lab in label_parts)
    images = np.empty((total, 3072), dtype=np.uint8)
    offset = 0
    for path, labels in zip(paths, label_parts):
        with _open_npz(path) as npz:
            data = _member(npz, "data", path)
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
            raise DataError(
                f"{path}: 'data' must be a uint8 array of shape (N, 3072), found {data.dtype} {data.shape}"
            )
        if data.shape[0] != len(labels):
            raise DataError(f"{path}: {data.shape[0]} images but {len(labels)} labels")
        images[offset : offset + len(labels)] = data
        offset += len(labels)
        del data
    return images.reshape(-1, 3, 32, 32), np.concatenate(label_parts) if label_parts else np.empty(
        0, np.int64
    )
