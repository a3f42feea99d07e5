"""Multi-layer perceptron for 28x28 single-channel images (MNIST / Fashion-MNIST).

Why it is in the zoo: the simplest ff-EBM candidate. Every ``Linear`` + activation pair is a
natural analog (resistive crossbar) block, and the whole model is a plain ``nn.Sequential``,
so it exercises the tracer and the partitioner on the easiest possible graph.

This file is self-contained (it imports only torch) so it can be loaded standalone by path.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn as nn

INPUT_SHAPE: tuple[int, ...] = (1, 28, 28)

_ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "gelu": nn.GELU,
    "hardsigmoid": nn.Hardsigmoid,
}


class MLP(nn.Module):
    """``Flatten -> (Linear -> activation) * (n-2) -> Linear``.

    Args:
        sizes: layer widths, input first and number of classes last; ``sizes[0]`` must equal the
            number of elements of one input sample (``prod(in_shape)``).
        activation: one of ``relu``, ``tanh``, ``sigmoid``, ``gelu``, ``hardsigmoid``.
        in_shape: per-sample input shape (no batch dimension).
    """

    def __init__(
        self,
        sizes: Sequence[int] = (784, 1024, 1024, 10),
        activation: str = "relu",
        in_shape: Sequence[int] = (1, 28, 28),
    ) -> None:
        super().__init__()
        sizes = [int(s) for s in sizes]
        if len(sizes) < 2:
            raise ValueError(f"MLP needs at least two sizes (input and output), got {sizes}")
        if activation not in _ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; choose one of {sorted(_ACTIVATIONS)}")
        n_in = math.prod(int(d) for d in in_shape)
        if sizes[0] != n_in:
            raise ValueError(
                f"sizes[0]={sizes[0]} does not match prod(in_shape)={n_in} for in_shape={tuple(in_shape)}"
            )
        self.in_shape: tuple[int, ...] = tuple(int(d) for d in in_shape)
        self.sizes: tuple[int, ...] = tuple(sizes)
        self.activation: str = activation
        self.num_classes: int = sizes[-1]

        layers: list[nn.Module] = [nn.Flatten()]
        for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
            layers.append(nn.Linear(fan_in, fan_out))
            if i < len(sizes) - 2:
                layers.append(_ACTIVATIONS[activation]())
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def model(**kwargs) -> nn.Module:
    """Build the default zoo MLP (784-1024-1024-10, ReLU); keyword arguments go to :class:`MLP`."""
    return MLP(**kwargs)
