"""Public entry point of the data layer: ``load_dataset(name, data_dir, split)``.

Every dataset comes back the same way, whatever its on-disk format: an :class:`ImageDataset` holding the
whole split as two tensors, ``x`` (float32, N x C x H x W, pixel values scaled to [0, 1]) and ``y``
(int64 class indices), plus the metadata a model and a training loop need (``num_classes``,
``input_shape``, per-channel ``mean``/``std`` for normalisation). Keeping whole splits as tensors lets
:class:`~hybridc.data.loader.DeviceLoader` move them to the GPU once and batch there, which for these
small images is much faster than a worker-based ``DataLoader``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from hybridc.errors import DataError

from .cifar import load_cifar_files
from .digits import load_digits_split
from .idx import load_idx_pair
from .imagenet32 import load_imagenet32_files
from .loader import DeviceLoader
from .sources import SOURCES, locate_files

__all__ = ["DatasetInfo", "DATASETS", "SPLITS", "ImageDataset", "load_dataset", "canonical_name"]

SPLITS = ("train", "test")


@dataclass(frozen=True)
class DatasetInfo:
    """Static description of a dataset (before any ``pad_to``).

    ``mean``/``std`` are per-channel statistics of the training images in [0, 1] scale, the usual
    published values (ImageNet32 uses the standard full-resolution ImageNet statistics).
    """

    name: str
    title: str
    num_classes: int
    input_shape: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    train_size: int
    test_size: int
    classes: tuple[str, ...] | None = None


_DIGIT_NAMES = tuple(str(i) for i in range(10))

#: All datasets ``load_dataset`` knows, by canonical name.
DATASETS: dict[str, DatasetInfo] = {
    "digits": DatasetInfo(
        "digits", "scikit-learn digits 8x8", 10, (1, 8, 8), (0.3053,), (0.3760,), 1438, 359, _DIGIT_NAMES
    ),
    "fashion-mnist": DatasetInfo(
        "fashion-mnist",
        "Fashion-MNIST",
        10,
        (1, 28, 28),
        (0.2860,),
        (0.3530,),
        60000,
        10000,
        (
            "T-shirt/top",
            "Trouser",
            "Pullover",
            "Dress",
            "Coat",
            "Sandal",
            "Shirt",
            "Sneaker",
            "Bag",
            "Ankle boot",
        ),
    ),
    "mnist": DatasetInfo("mnist", "MNIST", 10, (1, 28, 28), (0.1307,), (0.3081,), 60000, 10000, _DIGIT_NAMES),
    "kmnist": DatasetInfo(
        "kmnist",
        "Kuzushiji-MNIST",
        10,
        (1, 28, 28),
        (0.1918,),
        (0.3483,),
        60000,
        10000,
        ("o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo"),
    ),
    "cifar10": DatasetInfo(
        "cifar10",
        "CIFAR-10",
        10,
        (3, 32, 32),
        (0.4914, 0.4822, 0.4465),
        (0.2470, 0.2435, 0.2616),
        50000,
        10000,
        ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
    ),
    "cifar100": DatasetInfo(
        "cifar100",
        "CIFAR-100",
        100,
        (3, 32, 32),
        (0.5071, 0.4865, 0.4409),
        (0.2673, 0.2564, 0.2762),
        50000,
        10000,
    ),
    "imagenet32": DatasetInfo(
        "imagenet32",
        "ImageNet32x32",
        1000,
        (3, 32, 32),
        (0.485, 0.456, 0.406),
        (0.229, 0.224, 0.225),
        1281167,
        50000,
    ),
}


def canonical_name(name: str) -> str:
    """Map spellings like ``"FashionMNIST"``, ``"fashion_mnist"`` or ``"CIFAR-10"`` to a key of :data:`DATASETS`."""
    key = "".join(ch for ch in name.lower() if ch.isalnum())
    for canon in DATASETS:
        if key == canon.replace("-", ""):
            return canon
    raise DataError(f"unknown dataset {name!r}; valid names: {', '.join(DATASETS)}")


class ImageDataset(Dataset[tuple[Tensor, Tensor]]):
    """One split of an image-classification dataset, held in memory as two tensors.

    Behaves like ``torch.utils.data.TensorDataset`` (``len``, indexing, ``tensors``) and additionally
    carries the dataset metadata. ``x`` is float32 in [0, 1] unless loaded with ``dtype=torch.uint8``
    (raw 0..255 pixels, 4x less memory; :class:`DeviceLoader` rescales uint8 batches itself).
    """

    def __init__(
        self, x: Tensor, y: Tensor, info: DatasetInfo, split: str, files: Sequence[Path] = ()
    ) -> None:
        if x.shape[0] != y.shape[0]:
            raise DataError(f"{info.name}: {x.shape[0]} images but {y.shape[0]} labels")
        self.x = x
        self.y = y
        self.info = info
        self.split = split
        self.files = tuple(files)

    @property
    def name(self) -> str:
        return self.info.name

    @property
    def num_classes(self) -> int:
        return self.info.num_classes

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the stored images, i.e. after ``pad_to``."""
        return (int(self.x.shape[1]), int(self.x.shape[2]), int(self.x.shape[3]))

    @property
    def mean(self) -> tuple[float, ...]:
        return self.info.mean

    @property
    def std(self) -> tuple[float, ...]:
        return self.info.std

    @property
    def classes(self) -> tuple[str, ...] | None:
        return self.info.classes

    @property
    def tensors(self) -> tuple[Tensor, Tensor]:
        return self.x, self.y

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def __getitem__(self, index: int | slice | Tensor) -> tuple[Tensor, Tensor]:
        return self.x[index], self.y[index]

    def __repr__(self) -> str:
        return (
            f"ImageDataset({self.name!r}, split={self.split!r}, n={len(self)}, shape={self.input_shape}, "
            f"dtype={self.x.dtype}, classes={self.num_classes})"
        )

    def loader(
        self,
        batch_size: int,
        *,
        shuffle: bool = True,
        drop_last: bool = False,
        seed: int | None = None,
        device: str | torch.device | None = None,
        augment: str = "none",
        normalize: bool = True,
    ) -> DeviceLoader:
        """A :class:`DeviceLoader` over this split, normalised with the dataset's mean/std if ``normalize``."""
        return DeviceLoader(
            self.x,
            self.y,
            batch_size,
            shuffle=shuffle,
            drop_last=drop_last,
            seed=seed,
            device=device,
            augment=augment,
            normalize=(self.mean, self.std) if normalize else None,
        )


def _pad(images: Tensor, size: int, name: str) -> Tensor:
    """Zero-pad (N, C, H, W) images to size x size, centred (extra pixel at the bottom/right if odd)."""
    n, c, h, w = images.shape
    if size < h or size < w:
        raise DataError(f"{name}: pad_to={size} is smaller than the {h}x{w} images")
    if size == h and size == w:
        return images
    top, left = (size - h) // 2, (size - w) // 2
    out = images.new_zeros((n, c, size, size))
    out[:, :, top : top + h, left : left + w] = images
    return out


def _load_idx(name: str) -> Callable[[dict[str, Path], str], tuple[np.ndarray, np.ndarray]]:
    def load(files: dict[str, Path], split: str) -> tuple[np.ndarray, np.ndarray]:
        prefix = "train" if split == "train" else "t10k"
        return load_idx_pair(
            files[f"{prefix}-images-idx3-ubyte.gz"],
            files[f"{prefix}-labels-idx1-ubyte.gz"],
            num_classes=DATASETS[name].num_classes,
            image_size=DATASETS[name].input_shape[1:],
        )

    return load


def _load_cifar(
    label_key: bytes, num_classes: int
) -> Callable[[dict[str, Path], str], tuple[np.ndarray, np.ndarray]]:
    def load(files: dict[str, Path], split: str) -> tuple[np.ndarray, np.ndarray]:
        return load_cifar_files(list(files.values()), label_key, num_classes)

    return load


def _load_imagenet32(files: dict[str, Path], split: str) -> tuple[np.ndarray, np.ndarray]:
    return load_imagenet32_files(list(files.values()))


_READERS: dict[str, Callable[[dict[str, Path], str], tuple[np.ndarray, np.ndarray]]] = {
    "mnist": _load_idx("mnist"),
    "fashion-mnist": _load_idx("fashion-mnist"),
    "kmnist": _load_idx("kmnist"),
    "cifar10": _load_cifar(b"labels", 10),
    "cifar100": _load_cifar(b"fine_labels", 100),
    "imagenet32": _load_imagenet32,
}


def _to_tensor(images: np.ndarray, dtype: torch.dtype, max_value: float) -> Tensor:
    """uint8/float images -> tensor of ``dtype``; floats are scaled by 1/max_value into [0, 1]."""
    t = torch.from_numpy(images if images.flags.writeable else images.copy())
    if dtype == torch.uint8:
        if t.dtype == torch.uint8:
            return t.contiguous()
        return (t.to(torch.float32) * (255.0 / max_value)).round_().to(torch.uint8)
    return t.to(dtype).div_(max_value) if t.dtype == torch.uint8 else (t.to(dtype) * (1.0 / max_value))


def load_dataset(
    name: str,
    data_dir: str | Path | None = None,
    split: str = "train",
    *,
    pad_to: int | None = None,
    download: bool = True,
    dtype: torch.dtype = torch.float32,
) -> ImageDataset:
    """Load one split of a dataset as an :class:`ImageDataset`.

    Args:
        name: one of :data:`DATASETS` (spelling variants such as ``"FashionMNIST"`` are accepted).
        data_dir: directory holding the files (``<data_dir>/<name>`` or ``<data_dir>`` itself); default
            ``$HYBRIDC_DATA/<name>`` or ``~/.cache/hybridc/data/<name>``, plus system copies
            (see :mod:`hybridc.data.sources`).
        split: ``"train"`` or ``"test"`` (ImageNet32's ``"test"`` is its official validation set).
        pad_to: zero-pad images to ``pad_to x pad_to`` (e.g. 28 -> 32 for VGG-style nets on
            Fashion-MNIST); ``mean``/``std`` keep the unpadded statistics.
        download: fetch missing files from the official URLs (never for digits, which ships with sklearn).
        dtype: ``torch.float32`` (default, [0, 1]) or another float type, or ``torch.uint8`` for raw
            0..255 pixels (saves memory on ImageNet32: 3.9 GB instead of 15.7 GB for the train split).

    Raises:
        DataError: unknown name or split, missing files that cannot be downloaded, corrupt files.
    """
    canon = canonical_name(name)
    info = DATASETS[canon]
    if split not in SPLITS:
        raise DataError(f"{canon}: unknown split {split!r}; valid splits: {', '.join(SPLITS)}")
    if not (dtype == torch.uint8 or dtype.is_floating_point):
        raise DataError(f"{canon}: dtype must be torch.uint8 or a floating type, got {dtype}")
    if pad_to is not None and pad_to <= 0:
        raise DataError(f"{canon}: pad_to must be a positive image size, got {pad_to}")
    files: list[Path] = []
    if canon == "digits":
        images, labels = load_digits_split(split)
        x = _to_tensor(images, dtype, 1.0)  # already in [0, 1]
    else:
        found = locate_files(SOURCES[canon], split, data_dir, download=download)
        files = list(found.values())
        images, labels = _READERS[canon](found, split)
        if tuple(images.shape[1:]) != info.input_shape:
            raise DataError(
                f"{canon}: expected images of shape {info.input_shape}, found {tuple(images.shape[1:])}"
            )
        x = _to_tensor(images, dtype, 255.0)
    del images
    y = torch.from_numpy(np.ascontiguousarray(labels, dtype=np.int64))
    if pad_to is not None:
        x = _pad(x, pad_to, canon)
    return ImageDataset(x, y, info, split, files)
