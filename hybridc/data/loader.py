"""Batch iterator that keeps a whole dataset on the training device.

For datasets of small images (MNIST-like, CIFAR, ImageNet32 as uint8) the entire split fits in GPU
memory, so the fastest loader is no loader: move the tensors once, then every batch is a single
``index_select`` with a permutation, and augmentation is a few vectorised tensor ops on the device.
No worker processes, no host-to-device copies per step.

Reproducibility and resumption: the sample order of epoch ``k`` is a permutation drawn from a CPU
``torch.Generator`` seeded with a hash of ``(seed, k)`` (so it is the same on CPU and CUDA), and the
augmentation of batch ``b`` of epoch ``k`` draws from a device generator seeded with a hash of
``(seed, k, b)``. Hence the whole stream depends only on ``seed`` and the position, and
:meth:`DeviceLoader.state_dict` needs only ``(seed, epoch, batch)`` to resume mid-epoch exactly.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["AUGMENTS", "DeviceLoader", "random_crop_flip"]

AUGMENTS = ("none", "crop-flip")
_MASK64 = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def derive_seed(*parts: int) -> int:
    """Mix integers into a well-spread 63-bit seed (nearby inputs give unrelated seeds)."""
    h = 0
    for p in parts:
        h = _splitmix64(h ^ (int(p) & _MASK64))
    return h >> 1


def random_crop_flip(x: Tensor, generator: torch.Generator | None = None, padding: int = 4) -> Tensor:
    """Random crop after zero padding plus random horizontal flip, per sample, without a Python loop.

    Equivalent to torchvision's ``RandomCrop(H, padding)`` followed by ``RandomHorizontalFlip()``
    applied to each image of the (B, C, H, W) batch ``x``: output pixel (i, j) of sample b is
    ``padded[b, :, i + dy_b, (W - 1 - j if flip_b else j) + dx_b]`` with offsets in [0, 2*padding].
    Runs on ``x``'s device; ``generator`` must live on that device.
    """
    if x.ndim != 4:
        raise ValueError(f"random_crop_flip expects a (B, C, H, W) batch, got shape {tuple(x.shape)}")
    b, c, h, w = x.shape
    dev = x.device
    padded = F.pad(x, (padding, padding, padding, padding))
    offsets = torch.randint(0, 2 * padding + 1, (2, b), generator=generator, device=dev)
    flip = torch.randint(0, 2, (b,), generator=generator, device=dev).bool()
    cols = torch.arange(w, device=dev)
    cols = torch.where(flip[:, None], cols.flip(0)[None, :], cols[None, :]) + offsets[1][:, None]  # (B, W)
    rows = torch.arange(h, device=dev)[None, :] + offsets[0][:, None]  # (B, H)
    bi = torch.arange(b, device=dev)[:, None, None, None]
    ci = torch.arange(c, device=dev)[None, :, None, None]
    return padded[bi, ci, rows[:, None, :, None], cols[:, None, None, :]]


class DeviceLoader:
    """Iterate ``(x, y)`` batches of a dataset held entirely on ``device``.

    Args:
        x: (N, C, H, W) images, float in [0, 1] or uint8 in 0..255 (rescaled to [0, 1] per batch).
        y: (N,) int64 labels.
        batch_size: samples per batch; the last one is smaller unless ``drop_last``.
        shuffle: a fresh permutation each epoch (else the stored order).
        drop_last: skip the final incomplete batch.
        seed: base seed of all randomness; alternatively ``generator``, from which one seed is drawn
            at construction. Default 0, so runs are reproducible unless asked otherwise.
        device: where the data is kept and batches are produced (default: where ``x`` is).
        augment: ``"none"`` or ``"crop-flip"`` (4-pixel zero-pad random crop + horizontal flip).
        normalize: ``(mean, std)`` per channel, applied after augmentation (so padding is black), or None.

    Iterating yields the batches of the current epoch from the current position, then advances the
    epoch; abandoning an iteration part-way keeps the position (that is what makes resumption work),
    so call :meth:`set_epoch` to restart an epoch deliberately.
    """

    def __init__(
        self,
        x: Tensor,
        y: Tensor,
        batch_size: int,
        *,
        shuffle: bool = True,
        drop_last: bool = False,
        seed: int | None = None,
        generator: torch.Generator | None = None,
        device: str | torch.device | None = None,
        augment: str = "none",
        normalize: tuple[Sequence[float], Sequence[float]] | None = None,
        padding: int = 4,
    ) -> None:
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"x has {x.shape[0]} samples but y has {y.shape[0]}")
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if augment not in AUGMENTS:
            raise ValueError(f"unknown augment {augment!r}; valid: {', '.join(AUGMENTS)}")
        if augment != "none" and x.ndim != 4:
            raise ValueError(f"augment={augment!r} needs (N, C, H, W) images, got shape {tuple(x.shape)}")
        if seed is not None and generator is not None:
            raise ValueError("pass either seed or generator, not both")
        if generator is not None:
            seed = int(torch.randint(0, 2**62, (1,), generator=generator).item())
        self.device = torch.device(device) if device is not None else x.device
        self.x = x.to(self.device)
        self.y = y.to(self.device, dtype=torch.int64)
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        self.drop_last = bool(drop_last)
        self.augment = augment
        self.padding = int(padding)
        self.seed = int(seed) if seed is not None else 0
        self._epoch = 0
        self._batch = 0
        self._aug_gen = torch.Generator(device=self.device) if augment != "none" else None
        self._mean: Tensor | None = None
        self._std: Tensor | None = None
        if normalize is not None:
            mean, std = (
                torch.as_tensor(v, dtype=torch.float32, device=self.device).reshape(-1) for v in normalize
            )
            channels = x.shape[1] if x.ndim >= 2 else 1
            for label, v in (("mean", mean), ("std", std)):
                if v.numel() not in (1, channels):
                    raise ValueError(f"normalize {label} has {v.numel()} values for {channels} channels")
            if bool((std <= 0).any()):
                raise ValueError("normalize std must be positive")
            shape = (1, -1) + (1,) * max(x.ndim - 2, 0)
            self._mean, self._std = mean.reshape(shape), std.reshape(shape)

    # ---------------------------------------------------------------------------------------- sizes
    @property
    def num_samples(self) -> int:
        return int(self.x.shape[0])

    def __len__(self) -> int:
        """Number of batches per epoch."""
        n, bs = self.num_samples, self.batch_size
        return n // bs if self.drop_last else -(-n // bs)

    @property
    def epoch(self) -> int:
        """Epoch the next batch belongs to."""
        return self._epoch

    def set_epoch(self, epoch: int) -> None:
        """Position the loader at the start of ``epoch``."""
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        self._epoch, self._batch = int(epoch), 0

    # ---------------------------------------------------------------------------------------- order
    def epoch_order(self, epoch: int) -> Tensor | None:
        """Sample order of ``epoch`` (on the device), or None when not shuffling (identity order)."""
        if not self.shuffle:
            return None
        g = torch.Generator(device="cpu")
        g.manual_seed(derive_seed(self.seed, 0, epoch))
        return torch.randperm(self.num_samples, generator=g).to(self.device)

    def _transform(self, xb: Tensor, epoch: int, batch: int) -> Tensor:
        if xb.dtype == torch.uint8:
            xb = xb.to(torch.float32).div_(255.0)
        elif not xb.is_floating_point():
            xb = xb.to(torch.float32)
        if self._aug_gen is not None:
            self._aug_gen.manual_seed(derive_seed(self.seed, 1, epoch, batch))
            xb = random_crop_flip(xb, self._aug_gen, self.padding)
        if self._mean is not None and self._std is not None:
            xb = (xb - self._mean) / self._std
        return xb

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        epoch, start = self._epoch, self._batch
        nb, bs, n = len(self), self.batch_size, self.num_samples
        order = self.epoch_order(epoch) if start < nb else None
        for b in range(start, nb):
            lo, hi = b * bs, min((b + 1) * bs, n)
            if order is None:
                xb, yb = self.x[lo:hi], self.y[lo:hi]
            else:
                idx = order[lo:hi]
                xb, yb = self.x.index_select(0, idx), self.y.index_select(0, idx)
            xb = self._transform(xb, epoch, b)
            # Advance before yielding, so a state_dict() taken after receiving this batch resumes after it.
            if b + 1 == nb:
                self._epoch, self._batch = epoch + 1, 0
            else:
                self._batch = b + 1
            yield xb, yb
        if start >= nb and self._epoch == epoch:  # empty epoch (no batches): still counts as one
            self._epoch, self._batch = epoch + 1, 0

    # ---------------------------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue the batch stream exactly: seed and position (plus checks)."""
        return {
            "seed": self.seed,
            "epoch": self._epoch,
            "batch": self._batch,
            "num_samples": self.num_samples,
            "batch_size": self.batch_size,
            "shuffle": self.shuffle,
            "drop_last": self.drop_last,
            "augment": self.augment,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume from :meth:`state_dict`; refuses a state saved for a different dataset size or batching."""
        for key in ("num_samples", "batch_size", "shuffle", "drop_last"):
            if key in state and state[key] != getattr(self, key):
                raise ValueError(
                    f"loader state was saved with {key}={state[key]!r} but this loader has {getattr(self, key)!r}; "
                    "the batch order would not match"
                )
        batch = int(state.get("batch", 0))
        if not 0 <= batch <= len(self):
            raise ValueError(f"loader state batch={batch} outside 0..{len(self)}")
        self.seed = int(state["seed"])
        self._epoch = int(state["epoch"])
        self._batch = batch
