"""Image-classification tensors for the paper benchmarks: a dataset padded to 32×32, normalised by its
training split's per-channel mean/std, with a fixed random training subset.

One helper for `benchmarks/splitting.py` and `benchmarks/paper_gradients.py` (both reproduce the ff-EBM
paper's experiments on 32×32 inputs: Fashion-MNIST padded from 28×28 on this machine, CIFAR-10 where its files
are present). Fallback to Fashion-MNIST, when asked, because it is the data set that is always on disk here.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import torch

from hybridc.data.datasets import load_dataset
from hybridc.errors import DataError

FALLBACK = "fashion-mnist"


@dataclass(frozen=True)
class Split32:
    """Normalised 32×32 tensors: the data set's name (after any fallback), train and test images/labels."""

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor


def load_32(
    name: str = FALLBACK,
    train_subset: int | None = None,
    test_subset: int | None = None,
    subset_seed: int = 0,
    fallback: bool = True,
) -> Split32:
    """`name`'s train/test splits padded to 32×32, normalised with the training split's mean/std.

    `train_subset`: that many training images drawn without replacement by a generator seeded `subset_seed`
    (the same subset every run); `test_subset`: the first that many test images. With `fallback`, a data set
    whose files are missing is replaced by Fashion-MNIST (said on stderr); Fashion-MNIST itself missing is a
    `DataError`. Nothing is downloaded.
    """
    try:
        train = load_dataset(name, split="train", pad_to=32, download=False)
        test = load_dataset(name, split="test", pad_to=32, download=False)
    except DataError:
        if not fallback or name == FALLBACK:
            raise
        print(f"{name} files not found: using Fashion-MNIST padded to 32×32", file=sys.stderr)
        return load_32(FALLBACK, train_subset, test_subset, subset_seed, fallback=False)
    mean = torch.tensor(train.mean).view(1, -1, 1, 1)
    std = torch.tensor(train.std).view(1, -1, 1, 1)
    (xtr, ytr), (xte, yte) = train.tensors, test.tensors
    if train_subset:
        idx = torch.randperm(len(xtr), generator=torch.Generator().manual_seed(subset_seed))[:train_subset]
        xtr, ytr = xtr[idx], ytr[idx]
    if test_subset:
        xte, yte = xte[:test_subset], yte[:test_subset]
    return Split32(name, (xtr - mean) / std, ytr, (xte - mean) / std, yte)
