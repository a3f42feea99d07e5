"""scikit-learn's bundled 8x8 handwritten digits (UCI "optdigits" test set): no download needed.

1797 images of 8x8 pixels with integer intensities 0..16 and 10 classes. There is no official
train/test split, so one is fixed here: a stratified split with a fixed seed (1438 train / 359 test),
so that every run and every machine sees the same partition and accuracies are comparable.
"""

from __future__ import annotations

import numpy as np

from hybridc.errors import DataError

__all__ = ["DIGITS_TEST_SIZE", "DIGITS_SPLIT_SEED", "load_digits_split"]

DIGITS_TEST_SIZE = 359  # 20% of 1797, rounded up as sklearn does
DIGITS_SPLIT_SEED = 0
DIGITS_MAX_VALUE = 16.0


def load_digits_split(split: str) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(images float32 (N, 1, 8, 8) in [0, 1], labels int64 (N,))`` for ``split`` "train" or "test".

    Samples keep their original sklearn order within each split (indices sorted), which makes the
    split easy to reproduce outside hybridc.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    if split not in ("train", "test"):
        raise DataError(f"digits: unknown split {split!r}; valid splits: train, test")
    bunch = load_digits()
    images = np.asarray(bunch.images, dtype=np.float32)
    labels = np.asarray(bunch.target, dtype=np.int64)
    train_idx, test_idx = train_test_split(
        np.arange(len(labels)),
        test_size=DIGITS_TEST_SIZE,
        stratify=labels,
        random_state=DIGITS_SPLIT_SEED,
        shuffle=True,
    )
    idx = np.sort(train_idx if split == "train" else test_idx)
    return (images[idx] / DIGITS_MAX_VALUE)[:, None, :, :], labels[idx]
