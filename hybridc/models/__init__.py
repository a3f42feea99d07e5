"""hybridc's model zoo: ordinary PyTorch models that the compiler is benchmarked and tested on.

Each model lives in its own self-contained file (importing only torch) that defines the model
class(es), a per-sample ``INPUT_SHAPE`` and a ``model(**kwargs)`` factory, so the files can also be
passed to the compiler by path like any user model.

`ZOO_TABLE` below is the one table of zoo facts (name, file, what it is, native input shape, and how it is
fitted to a dataset); `ZOO`, `ZOO_INPUT_SHAPES` and `zoo_facts()` (what `hybridc zoo` prints) are read
from it. Fitting (`fit_zoo_model`): `hybridc train MODEL --data D` fills the data-dependent factory
arguments (input channels, classes, image size, patch size) from the dataset, and where the architecture
cannot take the dataset's images as they are (VGG's four 2x2 pools need a side divisible by 16: 8x8
digits), the images are upsampled (bilinear) to the smallest size it accepts. The run header says which.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch.nn as nn

from hybridc.errors import ModelLoadError

from . import mlp, resnet, transformer, vgg, vit

_DIR = Path(__file__).resolve().parent

Shape = tuple[int, int, int]


@dataclass(frozen=True)
class ZooFit:
    """How a zoo model meets a dataset: its factory arguments, and the image size the data is resampled
    to first (None: the images as they are)."""

    kwargs: dict[str, Any]
    input_size: tuple[int, int] | None = None
    how: str = "as is"


def _image_side(
    shape: Shape, kwargs: dict[str, Any], accepts: Callable[[int], bool]
) -> tuple[int, str | None]:
    """The side an image model runs at: the user's `image_size`, else the data's own side, else the smallest
    larger side the architecture accepts (up to 4x). Returns (side, None) or raises ModelLoadError."""
    _, h, w = shape
    if "image_size" in kwargs:
        return int(kwargs["image_size"]), None
    if h != w:
        raise ModelLoadError(f"images of {h}x{w} are not square; give model_kwargs image_size to resize them")
    for side in range(h, 4 * h + 1):
        if accepts(side):
            return side, None if side == h else f"input upsampled {h}x{w} -> {side}x{side}"
    raise ModelLoadError(
        f"no image size from {h} to {4 * h} fits this architecture; give model_kwargs image_size"
    )


def _fit_mlp(shape: Shape, classes: int, kwargs: dict[str, Any]) -> ZooFit:
    n_in = math.prod(shape)
    out = dict(kwargs)
    out.setdefault("sizes", [n_in, 1024, 1024, classes])
    out.setdefault("in_shape", list(shape))
    sizes = list(out["sizes"])
    if sizes[0] != n_in or sizes[-1] != classes:
        raise ModelLoadError(
            f"model_kwargs.sizes {sizes} do not fit the data: the first size must be {n_in} "
            f"(= {'x'.join(map(str, shape))}) and the last {classes} (classes)"
        )
    return ZooFit(out, None, f"sizes {'-'.join(map(str, sizes))}")


def _fit_vgg(factory: Callable[..., nn.Module]) -> Callable[[Shape, int, dict[str, Any]], ZooFit]:
    def fit(shape: Shape, classes: int, kwargs: dict[str, Any]) -> ZooFit:
        out = dict(kwargs)
        out.setdefault("in_channels", shape[0])
        out.setdefault("num_classes", classes)

        def accepts(side: int) -> bool:  # the factory checks the size before building anything large
            try:
                factory(**(out | {"image_size": side, "width": 1e-6}))
            except (ValueError, TypeError):
                return False
            return True

        side, how = _image_side(shape, out, accepts)
        out["image_size"] = side
        size = (side, side) if side != shape[1] else None
        return ZooFit(out, size, how or "as is")

    return fit


def _fit_resnet(shape: Shape, classes: int, kwargs: dict[str, Any]) -> ZooFit:
    out = dict(kwargs)
    out.setdefault("in_channels", shape[0])
    out.setdefault("num_classes", classes)
    return ZooFit(out, None, "as is (global average pool)")


def _fit_vit(shape: Shape, classes: int, kwargs: dict[str, Any]) -> ZooFit:
    """Image size = the data's; the default 7x7 patches where they divide it (28x28: 4x4 patches), else
    patches of side/4 (the same 4x4 grid: 8x8 digits -> 2x2 patches), else the data is resized to 28x28."""
    _, h, w = shape
    out = dict(kwargs)
    out.setdefault("in_channels", shape[0])
    out.setdefault("num_classes", classes)
    size = None
    how = "as is"
    if "image_size" not in out:
        if h != w:
            raise ModelLoadError(
                f"images of {h}x{w} are not square; give model_kwargs image_size to resize them"
            )
        out["image_size"] = h
    side = int(out["image_size"])
    if "patch_size" not in out:
        if side % 7 == 0:
            out["patch_size"] = 7
        elif side % 4 == 0:
            out["patch_size"] = side // 4
            how = f"patch_size={side // 4} (4x4 patches)"
        else:
            out["image_size"], out["patch_size"], side = 28, 7, 28
            how = f"input resized {h}x{w} -> 28x28"
    if side != h:
        size = (side, side)
        how = f"input resized {h}x{w} -> {side}x{side}" + ("" if how == "as is" else f", {how}")
    return ZooFit(out, size, how)


def _fit_transformer(shape: Shape, classes: int, kwargs: dict[str, Any]) -> ZooFit:
    c, h, w = shape
    out = dict(kwargs)
    out.setdefault("num_classes", classes)
    out.setdefault("tokens", c * h)
    out.setdefault("features", w)
    return ZooFit(out, None, f"{out['tokens']} tokens of {out['features']} features (image rows)")


@dataclass(frozen=True)
class ZooModel:
    """One zoo entry: its factory, file, a one-line description, native input shape and fitting rule."""

    name: str
    factory: Callable[..., nn.Module]
    file: str
    summary: str
    input_shape: tuple[int, ...]
    fit: Callable[[Shape, int, dict[str, Any]], ZooFit] = field(repr=False)
    note: str = ""


ZOO_TABLE: tuple[ZooModel, ...] = (
    ZooModel("mlp", mlp.model, "mlp.py", "ReLU MLP, 784-1024-1024-10 by default", mlp.INPUT_SHAPE, _fit_mlp),
    ZooModel(
        "vgg-paper",
        vgg.model,
        "vgg.py",
        "the ff-EBM paper's 6-layer VGG",
        vgg.INPUT_SHAPE,
        _fit_vgg(vgg.model),
    ),
    ZooModel(
        "vgg-paper-12",
        vgg.model12,
        "vgg.py",
        "the ff-EBM paper's 12-layer VGG",
        vgg.INPUT_SHAPE,
        _fit_vgg(vgg.model12),
    ),
    ZooModel(
        "vgg-bn",
        vgg.model_bn,
        "vgg.py",
        "6-layer VGG with Conv-BN-ReLU after every conv (the zoo's vgg-paper before it matched the paper)",
        vgg.INPUT_SHAPE,
        _fit_vgg(vgg.model_bn),
    ),
    ZooModel("resnet18", resnet.model, "resnet.py", "CIFAR ResNet-18", resnet.INPUT_SHAPE, _fit_resnet),
    ZooModel(
        "transformer",
        transformer.model,
        "transformer.py",
        "stock nn.TransformerEncoder classifier (image rows as tokens)",
        transformer.INPUT_SHAPE,
        _fit_transformer,
        "not fx-traceable: traced by torch.export",
    ),
    ZooModel("vit", vit.model, "vit.py", "small from-scratch ViT", vit.INPUT_SHAPE, _fit_vit),
)

ZOO: dict[str, Callable[..., nn.Module]] = {m.name: m.factory for m in ZOO_TABLE}
ZOO_INPUT_SHAPES: dict[str, tuple[int, ...]] = {m.name: m.input_shape for m in ZOO_TABLE}

__all__ = [
    "ZOO",
    "ZOO_INPUT_SHAPES",
    "ZOO_TABLE",
    "ZooFit",
    "ZooModel",
    "build_zoo_model",
    "fit_zoo_model",
    "zoo_entry",
    "zoo_facts",
    "zoo_names",
    "zoo_path",
]


def zoo_names() -> list[str]:
    """Names of the zoo models, in registry order."""
    return list(ZOO)


def _check(name: str) -> None:
    if name not in ZOO:
        raise ModelLoadError(f"unknown zoo model {name!r}; valid names: {', '.join(zoo_names())}")


def zoo_entry(name: str) -> ZooModel:
    """The table row of zoo model `name`."""
    _check(name)
    return next(m for m in ZOO_TABLE if m.name == name)


def zoo_path(name: str) -> Path:
    """The file that defines zoo model ``name`` (vgg-paper and vgg-paper-12 share ``vgg.py``)."""
    return _DIR / zoo_entry(name).file


def fit_zoo_model(name: str, shape: Shape, classes: int, kwargs: dict[str, Any] | None = None) -> ZooFit:
    """Factory arguments (the user's `kwargs` kept, the data-dependent ones filled in) and input resizing for
    zoo model `name` on images of per-sample `shape` (C, H, W) with `classes` classes. Raises ModelLoadError
    when it cannot fit (the message says why). Fitting a fitted shape changes nothing, so a run rebuilt from
    its recorded input shape gets the same model."""
    return zoo_entry(name).fit(tuple(int(d) for d in shape), int(classes), dict(kwargs or {}))


def zoo_facts() -> list[dict[str, Any]]:
    """What `hybridc zoo` prints: per model its name, file, description, native input shape, and per dataset
    how it is fitted to it (`fits[dataset]`: "as is", "input upsampled 8x8 -> 16x16", ... or
    "does not fit: <reason>")."""
    from hybridc.data.datasets import DATASETS

    rows = []
    for m in ZOO_TABLE:
        fits: dict[str, str] = {}
        for ds in DATASETS.values():
            try:
                fits[ds.name] = m.fit(tuple(ds.input_shape), ds.num_classes, {}).how
            except ModelLoadError as exc:
                fits[ds.name] = f"does not fit: {exc}"
        rows.append(
            {
                "name": m.name,
                "file": m.file,
                "summary": m.summary,
                "input_shape": m.input_shape,
                "note": m.note,
                "fits": fits,
            }
        )
    return rows


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
