"""The input preprocessing a trained model expects: raw dataset images -> what the model was trained on.

Training feeds a model `(resize(x) - mean) / std`, per channel, where `x` are the dataset's images in
[0, 1] (C x H x W), `resize` is a bilinear resampling to the model's input size (only when the run fitted a
zoo model to a dataset smaller than it accepts, e.g. 8x8 digits upsampled to 16x16 for VGG) and mean/std
are the dataset's published per-channel statistics (`hybridc.data.DATASETS`). A model handed to a user
(`hybridc.load_run`), an export's manifest and its full ONNX model carry exactly this transform, so raw
pixels give the trained accuracy.

`InputTransform` is the description (JSON-able, stored in checkpoints and manifests); `Preprocess` is the
module that applies it (its buffers follow `.to(device)`, and it exports to ONNX as Resize/Sub/Div).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["InputTransform", "Preprocess", "input_transform", "resize_images"]

#: the resampling the trainer uses to fit images to a model's input size (see `resize_images`)
RESIZE_MODE = "bilinear"


def resize_images(x: torch.Tensor, size: tuple[int, int] | None) -> torch.Tensor:
    """(N, C, H, W) images resampled to `size` (bilinear, align_corners=False, no antialiasing: the same
    op as ONNX Resize linear/half_pixel); unchanged when `size` is None or already theirs."""
    if size is None or tuple(x.shape[-2:]) == tuple(size):
        return x
    dtype = x.dtype
    out = F.interpolate(
        x.float() if not x.is_floating_point() else x, size=tuple(size), mode=RESIZE_MODE, align_corners=False
    )
    return out.to(dtype) if dtype.is_floating_point else out


@dataclass(frozen=True)
class InputTransform:
    """raw images (`raw_shape`, values in [0, 1]) -> model input: resize to `size` (None: as they are),
    then subtract `mean` and divide by `std` per channel."""

    raw_shape: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    size: tuple[int, int] | None = None
    mode: str = RESIZE_MODE

    @property
    def model_shape(self) -> tuple[int, int, int]:
        """Per-sample shape the model receives."""
        c, h, w = self.raw_shape
        return (c, *self.size) if self.size is not None else (c, h, w)

    def describe(self) -> str:
        """One line for run headers and reports."""
        c, h, w = self.raw_shape
        resize = f"resized {h}x{w} -> {self.size[0]}x{self.size[1]} ({self.mode}), " if self.size else ""
        mean = ", ".join(f"{m:.4g}" for m in self.mean)
        std = ", ".join(f"{s:.4g}" for s in self.std)
        return f"{resize}normalised (x - [{mean}]) / [{std}]"

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> InputTransform:
        size = d.get("size")
        return cls(
            raw_shape=tuple(int(v) for v in d["raw_shape"]),
            mean=tuple(float(v) for v in d["mean"]),
            std=tuple(float(v) for v in d["std"]),
            size=tuple(int(v) for v in size) if size is not None else None,
            mode=str(d.get("mode", RESIZE_MODE)),
        )

    def module(self) -> Preprocess:
        return Preprocess(self)


def input_transform(data: str, size: tuple[int, int] | None = None) -> InputTransform:
    """The transform a run on dataset `data` applies (its statistics; `size`: the fitted model input size,
    None or the dataset's own size = no resize)."""
    from hybridc.data.datasets import DATASETS, canonical_name

    info = DATASETS[canonical_name(data)]
    if size is not None and tuple(size) == tuple(info.input_shape[1:]):
        size = None
    return InputTransform(
        raw_shape=tuple(info.input_shape),
        mean=tuple(info.mean),
        std=tuple(info.std),
        size=tuple(size) if size is not None else None,
    )


class Preprocess(nn.Module):
    """Applies an `InputTransform` to a batch (N, C, H, W) of raw images in [0, 1]. Images already of the
    model's size are not resampled, so it also accepts pre-resized inputs."""

    def __init__(self, transform: InputTransform):
        super().__init__()
        self.transform = transform
        c = transform.raw_shape[0]
        mean = torch.tensor(transform.mean, dtype=torch.float32)
        std = torch.tensor(transform.std, dtype=torch.float32)
        if mean.numel() == 1:
            mean, std = mean.expand(c).clone(), std.expand(c).clone()
        self.register_buffer("mean", mean.reshape(1, c, 1, 1), persistent=False)
        self.register_buffer("std", std.reshape(1, c, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = resize_images(x, self.transform.size)
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)

    def extra_repr(self) -> str:
        return self.transform.describe()
