"""VGG-style convolutional nets of the ff-EBM paper, for 32x32 inputs (CIFAR-10/100).

Reference: T. Nest and M. Ernoult, "Towards training digitally-tied analog blocks via hybrid
gradient computation", NeurIPS 2024. They train Feedforward-tied Energy-Based Models (ff-EBMs)
built from VGG-like nets split into analog (equilibrium) and digital (feedforward) blocks.

Why it is in the zoo: these are the exact architectures that hybridc's partitioner and BP-EP
chaining are meant to reproduce, so they are the reference benchmarks of the compiler.

Architectures (``c`` = Conv2d 3x3 padding 1 -> BatchNorm2d -> ReLU, ``P`` = MaxPool2d(2)):

* 6 layers (``layers=6``): ``c128 c256 P c256 P c512 P c512 P`` -> Flatten -> Linear.
  Spatial size 32 -> 32 -> 16 -> 8 -> 4 -> 2, so the Linear sees ``512 * 2 * 2`` features.
* 12 layers (``layers=12``): ``c128 c128 P | c256 c256 P c256 c256 P | c512 c512 c512 P c512 c512 P``
  -> Flatten -> Linear. Five pools, after convs 2, 4, 6, 9 and 11: one at the end of each channel
  stage (convs 2, 6, 11) plus one in the middle of the 256 stage and one in the middle of the 512
  stage, so the spatial size goes 32 -> 16 -> 8 -> 4 -> 2 -> 1 and the Linear sees ``512`` features.

``width`` scales every channel count (``max(1, int(round(c * width)))``) so tests can build tiny
versions. Self-contained (imports only torch) so the file can be loaded standalone by path.
"""

from __future__ import annotations

import torch
import torch.nn as nn

INPUT_SHAPE: tuple[int, ...] = (3, 32, 32)

# Per ``layers`` value: (out channels of each 3x3 conv, 1-based indices of the convs followed by a
# 2x2 max-pool). The final Linear is the last weight layer.
_CONFIGS: dict[int, tuple[tuple[int, ...], tuple[int, ...]]] = {
    6: ((128, 256, 256, 512, 512), (2, 3, 4, 5)),
    12: ((128, 128, 256, 256, 256, 256, 512, 512, 512, 512, 512), (2, 4, 6, 9, 11)),
}


def _scale(c: int, width: float) -> int:
    return max(1, int(round(c * width)))


class VGGPaper(nn.Module):
    """VGG-6 / VGG-12 of the ff-EBM paper (``layers`` counts conv + linear weight layers).

    Args:
        layers: 6 or 12.
        in_channels: channels of the input image.
        num_classes: size of the output.
        width: multiplier on every channel count.
        image_size: input height/width (32 for CIFAR); must be divisible by the total pooling factor.
    """

    def __init__(
        self,
        layers: int = 6,
        in_channels: int = 3,
        num_classes: int = 10,
        width: float = 1.0,
        image_size: int = 32,
    ) -> None:
        super().__init__()
        if layers not in _CONFIGS:
            raise ValueError(f"VGGPaper supports layers=6 or layers=12, got {layers}")
        channels, pool_after = _CONFIGS[layers]
        n_pools = len(pool_after)
        if image_size % (2**n_pools) != 0:
            raise ValueError(f"image_size={image_size} must be divisible by 2**{n_pools} for layers={layers}")
        self.layers: int = layers
        self.num_classes: int = num_classes

        feats: list[nn.Module] = []
        c_in = in_channels
        for i, c in enumerate(channels, start=1):
            c_out = _scale(c, width)
            feats += [nn.Conv2d(c_in, c_out, kernel_size=3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU()]
            if i in pool_after:
                feats.append(nn.MaxPool2d(kernel_size=2, stride=2))
            c_in = c_out
        self.features = nn.Sequential(*feats)
        side = image_size // (2**n_pools)
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(c_in * side * side, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def model(**kwargs) -> nn.Module:
    """Build the 6-layer paper VGG (``VGGPaper(layers=6, ...)``)."""
    kwargs.setdefault("layers", 6)
    return VGGPaper(**kwargs)


def model12(**kwargs) -> nn.Module:
    """Build the 12-layer paper VGG (``VGGPaper(layers=12, ...)``)."""
    kwargs.setdefault("layers", 12)
    return VGGPaper(**kwargs)
