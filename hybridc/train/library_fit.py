"""Fitting a library model (`timm:...`, `hf:...`, see `hybridc.load_library`) to a training dataset: the
keyword overrides that make it read the data's channels and image size and predict its classes, checked against
what the user gave (the counterpart of the zoo's `hybridc.models.ZooFit`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hybridc.errors import ModelLoadError
from hybridc.load_library import LibrarySpec, hf_config_and_class, parse_library_spec, with_kwargs


@dataclass(frozen=True)
class LibraryFit:
    """How a library model meets a dataset (the counterpart of `hybridc.models.ZooFit`): the keyword overrides
    added to the spec (the data-dependent ones filled in; the spec's own are not repeated), the image size the
    data is resized to first (None: as it is) and a note saying what was fitted."""

    kwargs: dict[str, Any]
    input_size: tuple[int, int] | None = None
    how: str = "as is"


def _fitted(
    given: dict[str, Any],
    key: str,
    value: Any,
    known: set[str],
    out: dict[str, Any],
    notes: list[str],
    text: str,
    what: str,
) -> None:
    """Fill `key` with the data's `value` unless the user gave it; a given value that contradicts the data
    (a classifier with 5 labels for 10 classes) is an error, not silently overridden."""
    if key not in known:
        return
    if key in given:
        if given[key] != value:
            raise ModelLoadError(
                f"MODEL {text!r} sets {key}={given[key]!r}, but the data has {value} {what}: "
                f"drop {key} (hybridc fits it to the data) or set it to {value}"
            )
        return
    out[key] = value
    notes.append(f"{key}={value}")


def _fit_patch(default: Any, side: int) -> int | None:
    """A patch size for images of `side` when the config's `default` does not tile them: side/4 (a 4x4 grid of
    patches, the zoo ViT's rule) where 4 divides the side, else the largest divisor leaving at least 2x2
    patches. None: the default tiles the side (kept)."""
    if not isinstance(default, int) or default <= 0 or (side % default == 0 and default < side):
        return None
    if side % 4 == 0 and side >= 8:
        return side // 4
    divisors = [d for d in range(min(default, side // 2), 0, -1) if side % d == 0]
    return divisors[0] if divisors else None


def _fit_hf(
    spec: LibrarySpec,
    given: dict[str, Any],
    shape: tuple[int, int, int],
    classes: int,
    input_size: int | None,
    text: str,
) -> LibraryFit:
    c, h, w = shape
    config, model_class, class_name = hf_config_and_class(spec, None, text)
    main = getattr(model_class, "main_input_name", "input_ids")
    if main != "pixel_values":
        raise ModelLoadError(
            f"MODEL {text!r} is {'a text model' if main == 'input_ids' else 'not an image model'} ({class_name} "
            f"reads {'token ids' if main == 'input_ids' else main}), "
            f"but the training data are images ({c}x{h}x{w}): train an hf vision model (hf:vit, hf:convnext, "
            "hf:resnet, ...); text models can be partitioned, compiled, gradchecked and exported, not trained"
        )
    defaults = type(config)().to_dict()
    known = set(defaults) | {"num_labels"}
    out: dict[str, Any] = {}
    notes: list[str] = []
    _fitted(given, "num_labels", classes, known, out, notes, text, "classes")
    _fitted(given, "num_channels", c, known, out, notes, text, "channel(s)")
    size = _resize(given, "image_size", (h, w), input_size, text, notes)
    if "image_size" in known and "image_size" not in given:
        if size is not None:  # resized to input_size
            out["image_size"] = input_size
            notes.append(f"image_size={input_size}")
        else:
            out["image_size"] = h if h == w else [h, w]
            notes.append(f"image_size={out['image_size']} (the data's)")
    side = (size or (h, w))[0]
    if "patch_size" in known and "patch_size" not in given:
        patch = _fit_patch(defaults.get("patch_size"), side)
        if patch is not None:
            out["patch_size"] = patch
            notes.append(f"patch_size={patch} ({side // patch}x{side // patch} patches)")
    return LibraryFit(out, size, ", ".join(notes) or "as is")


def _fit_timm(
    given: dict[str, Any], shape: tuple[int, int, int], classes: int, input_size: int | None, text: str
) -> LibraryFit:
    """timm models take num_classes and in_chans; the image size only where the user names it (img_size,
    which also resizes the data) or gives input_size (CNNs pool globally and take any size)."""
    c, h, w = shape
    out: dict[str, Any] = {}
    notes: list[str] = []
    known = {"num_classes", "in_chans"}
    _fitted(given, "num_classes", classes, known, out, notes, text, "classes")
    _fitted(given, "in_chans", c, known, out, notes, text, "channel(s)")
    size = _resize(given, "img_size", (h, w), input_size, text, notes)
    return LibraryFit(out, size, ", ".join(notes) or "as is")


def _resize(
    given: dict[str, Any], key: str, hw: tuple[int, int], input_size: int | None, text: str, notes: list[str]
) -> tuple[int, int] | None:
    """The size the data is resized to before the model (None: kept at `hw`): the config's `key`
    (image_size / img_size) where the user set it, which must agree with `input_size`, else `input_size`.
    Appends the note the run header shows."""
    h, w = hw
    if key in given:
        s = given[key]
        side = (int(s), int(s)) if isinstance(s, int) else tuple(int(v) for v in s)
        if input_size is not None and side != (input_size, input_size):
            raise ModelLoadError(f"MODEL {text!r} sets {key}={s!r} but input_size is {input_size}: give one")
        if side == hw:
            return None
        notes.append(f"input resized {h}x{w} -> {side[0]}x{side[1]} ({key})")
        return side  # type: ignore[return-value]
    if input_size is not None and (input_size, input_size) != hw:
        notes.append(f"input resized {h}x{w} -> {input_size}x{input_size} (input_size)")
        return (input_size, input_size)
    return None


def fit_library_model(
    spec: str,
    shape: tuple[int, ...],
    classes: int,
    extra_kwargs: dict[str, Any] | None = None,
    input_size: int | None = None,
) -> LibraryFit:
    """How library model `spec` (plus `extra_kwargs`) is fitted to images of per-sample `shape` (C, H, W) and
    `classes` classes, resized to `input_size` x `input_size` first where given.

    hf vision models: num_labels = classes, num_channels = C, image_size = the data's side (or the size the data
    is resized to), and, where the config's patch_size does not tile that side, patch_size = side/4 (a 4x4
    grid of patches). A value the user gave is kept (a contradicting num_labels/num_channels is an error);
    `image_size` given resizes the data to it. timm models: num_classes and in_chans. Text models (they read
    token ids) are refused: the training datasets are images. Fitting a fitted spec changes nothing, so a run
    rebuilt from its recorded model_kwargs gets the same model. Raises ModelLoadError (one line)."""
    parsed = with_kwargs(parse_library_spec(spec), extra_kwargs, spec)
    c, h, w = (int(d) for d in shape)
    if parsed.library == "timm":
        fit = _fit_timm(parsed.kwargs, (c, h, w), int(classes), input_size, spec)
    else:
        fit = _fit_hf(parsed, parsed.kwargs, (c, h, w), int(classes), input_size, spec)
    own = parse_library_spec(spec).kwargs
    recorded = {k: v for k, v in (extra_kwargs or {}).items() if k not in own} | fit.kwargs
    return LibraryFit(recorded, fit.input_size, fit.how)
