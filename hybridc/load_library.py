"""Model specs from model libraries: `timm:NAME[,key=value...]` and `hf:MODEL_TYPE[,key=value...]`.

Both build a randomly initialised model (never a download: the network is not touched) and an example batch
made from the model's own configuration:

* `timm:resnet18,img_size=32` -> `timm.create_model("resnet18", pretrained=False, img_size=32)`; the example is
  pixels of the model's `pretrained_cfg["input_size"]` (or `img_size` / `in_chans` when given).
* `hf:bert,hidden_size=64,num_hidden_layers=2` -> `AutoConfig.for_model("bert", hidden_size=64, ...)` and the
  Auto class of the task the architecture has: image classification for vision models, sequence
  classification for text encoders, causal LM for decoder-only models, the text encoder for encoder-decoder
  models (T5), else the base model. `task=...` picks another (see `HF_TASKS`). `hf:BertConfig` (a config class)
  and `hf:T5EncoderModel` (a model class) are accepted too. Text models get token ids within the vocabulary
  (their embeddings stay digital); vision models pixel values of `num_channels` x `image_size`.

Values in `key=value` are read as Python literals where they parse (`2`, `0.5`, `True`, `None`, `[1,1]`,
`(2,2)`), else kept as strings; lists may hold commas inside their brackets.
"""

from __future__ import annotations

import ast
import inspect
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from hybridc.errors import ModelLoadError

LIBRARY_PREFIXES = ("timm:", "hf:")
DEFAULT_SEQ_LEN = 8

# task name -> the transformers.models.auto.modeling_auto mapping that lists its model class per model type
HF_TASKS: dict[str, str] = {
    "image-classification": "MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES",
    "sequence-classification": "MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES",
    "causal-lm": "MODEL_FOR_CAUSAL_LM_MAPPING_NAMES",
    "masked-lm": "MODEL_FOR_MASKED_LM_MAPPING_NAMES",
    "text-encoding": "MODEL_FOR_TEXT_ENCODING_MAPPING_NAMES",
    "base": "MODEL_MAPPING_NAMES",
}


@dataclass
class LibrarySpec:
    """A parsed `LIBRARY:NAME,key=value,...` spec."""

    library: str  # "timm" or "hf"
    name: str
    kwargs: dict[str, Any]


def is_library_spec(spec: str) -> bool:
    """Whether MODEL names a library model (`timm:` or `hf:`) rather than a zoo name or a file."""
    return spec.startswith(LIBRARY_PREFIXES)


def _split_top_level(text: str) -> list[str]:
    """Split on commas that are not inside brackets or parentheses ('a=[1,2],b=3' -> ['a=[1,2]', 'b=3'])."""
    parts, depth, cur = [], 0, []
    for ch in text:
        if ch in "[(":
            depth += 1
        elif ch in "])":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur))
    return [p.strip() for p in parts if p.strip()]


def parse_value(text: str) -> Any:
    """'2' -> 2, '0.5' -> 0.5, 'true'/'True' -> True, 'none' -> None, '[1,1]' -> [1, 1], other text -> str."""
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("none", "null"):
        return None
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text
    return value


def parse_library_spec(spec: str) -> LibrarySpec:
    """'hf:bert,hidden_size=64' -> LibrarySpec('hf', 'bert', {'hidden_size': 64}); one-line errors otherwise."""
    library, _, rest = spec.partition(":")
    parts = _split_top_level(rest)
    if not parts or "=" in parts[0]:
        raise ModelLoadError(
            f"MODEL {spec!r} names no model after '{library}:' (e.g. "
            f"{'timm:resnet18,img_size=32' if library == 'timm' else 'hf:bert,hidden_size=64'})"
        )
    kwargs: dict[str, Any] = {}
    for part in parts[1:]:
        key, eq, value = part.partition("=")
        key = key.strip()
        if not eq or not key.isidentifier():
            raise ModelLoadError(
                f"MODEL {spec!r}: {part!r} is not a key=value override (e.g. hidden_size=64)"
            )
        if key in kwargs:
            raise ModelLoadError(f"MODEL {spec!r}: {key!r} is given twice")
        kwargs[key] = parse_value(value.strip())
    return LibrarySpec(library=library, name=parts[0], kwargs=kwargs)


# ---------------------------------------------------------------------------------------------------- timm


def _import_timm() -> Any:
    try:
        import timm
    except ModuleNotFoundError as exc:
        if exc.name == "timm":
            raise ModelLoadError(
                "timm: models need the timm package, which is not installed: "
                "pip install 'hybridc[models]' timm (timm needs a torchvision built for this "
                "torch), or use an hf: model"
            ) from None
        raise ModelLoadError(
            f"timm is installed but does not import: {type(exc).__name__}: {exc} (timm imports "
            "torchvision: install the torchvision build that matches this torch), or use an hf: "
            "model"
        ) from None
    except Exception as exc:
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise ModelLoadError(
            f"timm is installed but does not import: {type(exc).__name__}: {first} (timm imports "
            "torchvision: install the torchvision build that matches this torch), or use an hf: "
            "model"
        ) from None
    return timm


def _timm_input_shape(model: nn.Module, kwargs: dict[str, Any]) -> tuple[int, ...]:
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None) or {}
    c, h, w = tuple(cfg.get("input_size", (3, 224, 224)))
    c = int(kwargs.get("in_chans", c))
    size = kwargs.get("img_size")
    if size is not None:
        h, w = (size, size) if isinstance(size, int) else tuple(size)
    return (c, int(h), int(w))


def build_timm(
    spec: LibrarySpec, input_shape: tuple[int, ...] | None, batch: int
) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """timm.create_model(name, pretrained=False, **kwargs) and pixels of its input size."""
    timm = _import_timm()
    if spec.name not in timm.list_models():
        close = timm.list_models(f"*{spec.name}*")[:8]
        raise ModelLoadError(
            f"timm has no model {spec.name!r}"
            + (f"; similar: {', '.join(close)}" if close else "; see timm.list_models()")
        )
    try:
        model = timm.create_model(spec.name, pretrained=False, **spec.kwargs)
    except Exception as exc:
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise ModelLoadError(
            f"timm.create_model({spec.name!r}, {spec.kwargs}) failed: {type(exc).__name__}: {first}"
        ) from None
    shape = input_shape or _timm_input_shape(model, spec.kwargs)
    return model, (torch.randn(batch, *shape),)


# ------------------------------------------------------------------------------------------ Hugging Face


def _import_transformers() -> Any:
    try:
        import transformers
    except ModuleNotFoundError as exc:
        if exc.name == "transformers":
            raise ModelLoadError(
                "hf: models need the transformers package, which is not installed: "
                "pip install 'hybridc[models]'"
            ) from None
        raise ModelLoadError(f"transformers does not import: {type(exc).__name__}: {exc}") from None
    except Exception as exc:
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise ModelLoadError(f"transformers does not import: {type(exc).__name__}: {first}") from None
    return transformers


def _mapping(task: str) -> dict[str, Any]:
    from transformers.models.auto import modeling_auto

    return getattr(modeling_auto, HF_TASKS[task])


def _first(names: Any) -> str:
    return names[0] if isinstance(names, (tuple, list)) else names


def _resolve_name(transformers: Any, name: str) -> tuple[str, str | None]:
    """(model_type, model class name or None) for a model type, a config class or a model class name."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    if name in CONFIG_MAPPING_NAMES:
        return name, None
    by_class = {cls: mt for mt, cls in CONFIG_MAPPING_NAMES.items()}
    if name in by_class:
        return by_class[name], None
    obj = getattr(transformers, name, None) if name[:1].isupper() else None
    config_class = getattr(obj, "config_class", None)
    model_type = getattr(config_class, "model_type", None)
    if inspect.isclass(obj) and issubclass(obj, nn.Module) and model_type in CONFIG_MAPPING_NAMES:
        return model_type, name
    lowered = name.lower().replace("-", "_")
    close = sorted(mt for mt in CONFIG_MAPPING_NAMES if lowered in mt.replace("-", "_"))[:8]
    raise ModelLoadError(
        f"transformers has no model type, config class or model class {name!r}"
        + (
            f"; similar model types: {', '.join(close)}"
            if close
            else " (model types are e.g. bert, gpt2, vit; see transformers.CONFIG_MAPPING)"
        )
    )


def _default_task(model_type: str, config: Any) -> str:
    """The task whose model class is the natural one to compile for `model_type` (see the module docstring)."""
    if model_type in _mapping("image-classification"):
        return "image-classification"
    decoder_only = model_type in _mapping("causal-lm") and model_type not in _mapping("masked-lm")
    if decoder_only:
        return "causal-lm"
    if getattr(config, "is_encoder_decoder", False) and model_type in _mapping("text-encoding"):
        return "text-encoding"
    if model_type in _mapping("sequence-classification"):
        return "sequence-classification"
    return "base"


def _check_config_keys(config_class: Any, kwargs: dict[str, Any], spec: str) -> None:
    """transformers configs accept any key silently; a misspelt size must not be ignored."""
    default = config_class()
    known = set(default.to_dict()) | set(getattr(config_class, "attribute_map", {}))
    known |= set(inspect.signature(config_class.__init__).parameters) - {"self", "kwargs"}
    bad = sorted(k for k in kwargs if k not in known and not hasattr(default, k))
    if bad:
        sizes = [
            k
            for k in (
                "hidden_size",
                "num_hidden_layers",
                "num_attention_heads",
                "intermediate_size",
                "image_size",
                "vocab_size",
            )
            if k in known
        ]
        raise ModelLoadError(
            f"MODEL {spec!r}: {config_class.__name__} has no field {', '.join(map(repr, bad))}"
            + (f" (its sizes are e.g. {', '.join(sizes)})" if sizes else "")
        )


def _hf_example(
    model: nn.Module, config: Any, input_shape: tuple[int, ...] | None, batch: int, spec: str
) -> tuple[torch.Tensor, ...]:
    main = getattr(model, "main_input_name", "input_ids")
    if main == "input_ids":
        if input_shape is not None and len(input_shape) != 1:
            raise ModelLoadError(
                f"MODEL {spec!r} reads token ids: --input-shape is the sequence length (e.g. 8), "
                f"not {','.join(map(str, input_shape))}"
            )
        seq = input_shape[0] if input_shape else DEFAULT_SEQ_LEN
        limit = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
        if isinstance(limit, int) and seq > limit > 0:
            raise ModelLoadError(
                f"MODEL {spec!r}: sequence length {seq} exceeds max_position_embeddings {limit}"
            )
        vocab = int(getattr(config, "vocab_size", 0) or 0)
        if vocab <= 0:
            raise ModelLoadError(f"MODEL {spec!r}: the config has no vocab_size to draw token ids from")
        gen = torch.Generator().manual_seed(0)
        return (torch.randint(0, vocab, (batch, seq), generator=gen),)
    if main == "pixel_values":
        if input_shape is None:
            size = getattr(config, "image_size", 224)
            h, w = (size, size) if isinstance(size, int) else tuple(size)
            input_shape = (int(getattr(config, "num_channels", 3)), int(h), int(w))
        return (torch.randn(batch, *input_shape),)
    raise ModelLoadError(
        f"MODEL {spec!r}: {type(model).__name__} reads {main!r}; hybridc makes example inputs "
        "for token ids (text) and pixel values (vision) only: use a text or vision model, or "
        "write a model file with example_input()"
    )


def _apply_input_shape(
    config_class: Any, kwargs: dict[str, Any], input_shape: tuple[int, ...] | None, model_type: str
) -> dict[str, Any]:
    """For vision configs, --input-shape C,H,W sets num_channels/image_size unless the spec gives them."""
    if input_shape is None or len(input_shape) != 3 or model_type not in _mapping("image-classification"):
        return kwargs
    known = set(config_class().to_dict())
    out = dict(kwargs)
    if "num_channels" in known:
        out.setdefault("num_channels", input_shape[0])
    if "image_size" in known and input_shape[1] == input_shape[2]:
        out.setdefault("image_size", input_shape[1])
    return out


def hf_config_and_class(
    spec: LibrarySpec, input_shape: tuple[int, ...] | None, text: str
) -> tuple[Any, Any, str]:
    """The config (spec keys checked, --input-shape applied) and the model class `spec` names, without
    building the model (fitting to a dataset asks what the model reads before building it)."""
    transformers = _import_transformers()
    from transformers import AutoConfig

    model_type, class_name = _resolve_name(transformers, spec.name)
    kwargs = dict(spec.kwargs)
    task = kwargs.pop("task", None)
    if task is not None and class_name is not None:
        raise ModelLoadError(f"MODEL {text!r} names the model class {class_name}: drop task={task}")
    if task is not None and task not in HF_TASKS:
        raise ModelLoadError(f"MODEL {text!r}: task={task!r} is not one of {', '.join(HF_TASKS)}")
    config_class = type(AutoConfig.for_model(model_type))
    _check_config_keys(config_class, kwargs, text)
    kwargs = _apply_input_shape(config_class, kwargs, input_shape, model_type)
    try:
        config = AutoConfig.for_model(model_type, **kwargs)
    except Exception as exc:
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise ModelLoadError(
            f"MODEL {text!r}: {config_class.__name__}({kwargs}) failed: {type(exc).__name__}: {first}"
        ) from None
    if class_name is None:
        task = task or _default_task(model_type, config)
        names = _mapping(task).get(model_type)
        if names is None:
            have = [t for t in HF_TASKS if model_type in _mapping(t)]
            raise ModelLoadError(
                f"MODEL {text!r}: {model_type} has no {task} model; it has: {', '.join(have)}"
            )
        class_name = _first(names)
    model_class = getattr(transformers, class_name, None)
    if model_class is None:
        raise ModelLoadError(f"MODEL {text!r}: transformers lists {class_name} but does not export it")
    return config, model_class, class_name


def build_hf(
    spec: LibrarySpec, input_shape: tuple[int, ...] | None, batch: int, text: str
) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """A randomly initialised transformers model for `spec` and an example batch made from its config."""
    config, model_class, class_name = hf_config_and_class(spec, input_shape, text)
    try:
        model = model_class(config)
    except Exception as exc:
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise ModelLoadError(
            f"MODEL {text!r}: {class_name}(config) failed: {type(exc).__name__}: {first}"
        ) from None
    return model, _hf_example(model, config, input_shape, batch, text)


def with_kwargs(spec: LibrarySpec, extra: dict[str, Any] | None, text: str) -> LibrarySpec:
    """`spec` with `extra` keyword overrides added (an experiment's `model_kwargs`, or the arguments a run fitted
    to its data); a key given in both with different values is an error (which one would be meant?)."""
    if not extra:
        return spec
    clash = sorted(k for k, v in extra.items() if k in spec.kwargs and spec.kwargs[k] != v)
    if clash:
        both = ", ".join(
            f"{k}={spec.kwargs[k]!r} in the spec but {extra[k]!r} in model_kwargs" for k in clash
        )
        raise ModelLoadError(f"MODEL {text!r}: {both}; give each setting once")
    return LibrarySpec(spec.library, spec.name, {**spec.kwargs, **extra})


def build_library_model(
    spec: str, input_shape: tuple[int, ...] | None, batch: int, extra_kwargs: dict[str, Any] | None = None
) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """Model and example inputs for a `timm:` or `hf:` spec (random init, no network access); `extra_kwargs`
    are keyword overrides on top of the spec's own (see `with_kwargs`)."""
    parsed = with_kwargs(parse_library_spec(spec), extra_kwargs, spec)
    if parsed.library == "timm":
        return build_timm(parsed, input_shape, batch)
    return build_hf(parsed, input_shape, batch, spec)


def library_label(spec: str) -> str:
    """A short, path-safe name of a library model for run-directory names and titles: `hf:vit,...` -> `hf-vit`."""
    library, _, rest = spec.partition(":")
    name = _split_top_level(rest)[0] if rest.strip() else "model"
    return f"{library}-" + "".join(ch if ch.isalnum() or ch in "-_." else "-" for ch in name)
