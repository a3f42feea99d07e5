"""CIFAR ResNet-18 (He et al., "Deep Residual Learning for Image Recognition", CVPR 2016).

CIFAR variant: a 3x3 stride-1 stem (Conv + BN + ReLU, no max-pool), four stages of two
``BasicBlock`` each with ``base, 2*base, 4*base, 8*base`` channels (64-128-256-512 by default),
stride 2 at the start of stages 2-4 (32 -> 32 -> 16 -> 8 -> 4), then global average pooling,
Flatten and a Linear classifier.

Why it is in the zoo: residual additions create a DAG with skip connections (not a chain), which
is the hard case for partitioning into analog/digital blocks; ResNet-18 is also the standard
mid-sized CIFAR baseline. Weight layers: 1 stem conv + 16 block convs + 3 shortcut 1x1 convs + 1 fc = 21.

Self-contained (imports only torch) so the file can be loaded standalone by path.
"""

from __future__ import annotations

import torch
import torch.nn as nn

INPUT_SHAPE: tuple[int, ...] = (3, 32, 32)


class BasicBlock(nn.Module):
    """``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``.

    The shortcut is a 1x1 conv (with the block's stride) + BN when the stride or the channel count
    changes, else the identity.
    """

    expansion: int = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU()
        self.shortcut: nn.Module
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class ResNet18(nn.Module):
    """CIFAR ResNet-18.

    Args:
        in_channels: channels of the input image.
        num_classes: size of the output.
        base: channels of the first stage (stages use ``base * (1, 2, 4, 8)``); 64 is the standard
            network, smaller values give cheap test versions.
    """

    def __init__(self, in_channels: int = 3, num_classes: int = 10, base: int = 64) -> None:
        super().__init__()
        if base < 1:
            raise ValueError(f"base must be >= 1, got {base}")
        self.num_classes: int = num_classes
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, base, kernel_size=3, stride=1, padding=1, bias=False),
            nn.BatchNorm2d(base),
            nn.ReLU(),
        )
        in_planes = base
        stages: list[nn.Module] = []
        for i, mult in enumerate((1, 2, 4, 8)):
            planes = base * mult
            stride = 1 if i == 0 else 2
            stages.append(nn.Sequential(BasicBlock(in_planes, planes, stride), BasicBlock(planes, planes, 1)))
            in_planes = planes
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(in_planes, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.flatten(self.pool(x)))


def model(**kwargs) -> nn.Module:
    """Build the standard CIFAR ResNet-18 (``base=64``); keyword arguments go to :class:`ResNet18`."""
    return ResNet18(**kwargs)
