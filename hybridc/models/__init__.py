"""hybridc's model zoo: ordinary PyTorch models that the compiler is benchmarked and tested on.

Each model lives in its own self-contained file (importing only torch) that defines the model
class(es), a per-sample ``INPUT_SHAPE`` and a ``model(**kwargs)`` factory, so the files can also be
passed to the compiler by path like any user model.

=================  ==============================================  ==============
name               model                                           input shape
=================  ==============================================  ==============
``mlp``            784-1024-1024-10 ReLU MLP (``mlp.py``)          (1, 28, 28)
``vgg-paper``      ff-EBM paper VGG, 6 layers (``vgg.py``)          (3, 32, 32)
``vgg-paper-12``   ff-EBM paper VGG, 12 layers (``vgg.py``)         (3, 32, 32)
``resnet18``       CIFAR ResNet-18 (``resnet.py``)                  (3, 32, 32)
``transformer``    stock nn.TransformerEncoder classifier           (1, 28, 28)
                   (``transformer.py``; not fx-traceable)
``vit``            small from-scratch ViT (``vit.py``)              (1, 28, 28)
=================  ==============================================  ==============
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch.nn as nn

from hybridc.errors import ModelLoadError

from . import mlp, resnet, transformer, vgg, vit

_DIR = Path(__file__).resolve().parent

ZOO: dict[str, Callable[..., nn.Module]] = {
    "mlp": mlp.model,
    "vgg-paper": vgg.model,
    "vgg-paper-12": vgg.model12,
    "resnet18": resnet.model,
    "transformer": transformer.model,
    "vit": vit.model,
}

ZOO_INPUT_SHAPES: dict[str, tuple[int, ...]] = {
    "mlp": mlp.INPUT_SHAPE,
    "vgg-paper": vgg.INPUT_SHAPE,
    "vgg-paper-12": vgg.INPUT_SHAPE,
    "resnet18": resnet.INPUT_SHAPE,
    "transformer": transformer.INPUT_SHAPE,
    "vit": vit.INPUT_SHAPE,
}

_ZOO_FILES: dict[str, str] = {
    "mlp": "mlp.py",
    "vgg-paper": "vgg.py",
    "vgg-paper-12": "vgg.py",
    "resnet18": "resnet.py",
    "transformer": "transformer.py",
    "vit": "vit.py",
}

__all__ = ["ZOO", "ZOO_INPUT_SHAPES", "build_zoo_model", "zoo_names", "zoo_path"]


def zoo_names() -> list[str]:
    """Names of the zoo models, in registry order."""
    return list(ZOO)


def _check(name: str) -> None:
    if name not in ZOO:
        raise ModelLoadError(f"unknown zoo model {name!r}; valid names: {', '.join(zoo_names())}")


def zoo_path(name: str) -> Path:
    """The file that defines zoo model ``name`` (vgg-paper and vgg-paper-12 share ``vgg.py``)."""
    _check(name)
    return _DIR / _ZOO_FILES[name]


def build_zoo_model(name: str, **kwargs) -> nn.Module:
    """Build zoo model ``name`` with its factory; ``kwargs`` override the factory's defaults.

    Raises:
        ModelLoadError: ``name`` is not a zoo model (the message lists the valid names), or the
            factory rejected ``kwargs``.
    """
    _check(name)
    try:
        return ZOO[name](**kwargs)
    except (TypeError, ValueError) as e:
        raise ModelLoadError(f"could not build zoo model {name!r} with arguments {kwargs}: {e}") from e
