"""Settings declared once: a pydantic field of one settings model (its type, bounds, default, description)
reused by another model, instead of being spelled again.

The experiment file (`ExperimentConfig`) is flat for its users, but its partition policies are the
`PartitionConfig` fields, its relaxation steps the `SolverConfig` fields, and so on: they are copied from
there with `field_of` / `optional_fields`, so a bound or a choice changed in one place is changed
everywhere, and the command-line flags generated from these models (`hybridc.cli.flags`) follow too.
"""

from __future__ import annotations

import copy
from typing import Annotated, Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo


def field_of(model: type[BaseModel], name: str, **changes: Any) -> tuple[Any, FieldInfo]:
    """`(annotation, FieldInfo)` of `model`'s field `name`, for `pydantic.create_model`; `changes` replace
    attributes of the copy (e.g. `description=`)."""
    info = copy.copy(model.model_fields[name])
    for key, value in changes.items():
        setattr(info, key, value)
    return _annotated(info), info


def optional_fields(
    model: type[BaseModel], names: list[str] | None = None
) -> dict[str, tuple[Any, FieldInfo]]:
    """`model`'s fields (all, or `names`) as optional overrides for `pydantic.create_model`: same type,
    bounds and description, default None ("not given": the owner's default applies later), which is what
    `shown_default` reports for them."""
    out = {}
    for name in names or list(model.model_fields):
        base = model.model_fields[name]
        info = copy.copy(base)
        info.default = None
        info.default_factory = None
        info.json_schema_extra = {**(base.json_schema_extra or {}), SHOWN: str(shown_default(base))}  # type: ignore[dict-item]
        # typing caches `X | None` by X's value: `Literal["analog", "digital"] | None` would come back as an earlier
        # `Literal["digital", "analog"] | None` (choices in another field's order); a marker unique to this field
        # keeps its own
        out[name] = (Annotated[_annotated(info), f"optional {model.__name__}.{name}"] | None, info)
    return out


#: json_schema_extra key of a field whose default is None but means something else ("the dataset's own
#: size"): what help texts show as its default.
SHOWN = "shown_default"


def shown_default(info: FieldInfo) -> Any:
    """What a field's default means, for help texts: `SHOWN` in its json_schema_extra, else its default
    (None when it has none worth showing)."""
    extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
    if SHOWN in extra:
        return extra[SHOWN]
    return info.get_default(call_default_factory=True)


def _annotated(info: FieldInfo) -> Any:
    """The bare annotation of a field: pydantic moves `Annotated` metadata (bounds) into the FieldInfo, so
    the annotation alone is the type and the copied FieldInfo keeps the bounds."""
    return info.annotation
