"""The one float type of every hybridc setting: a finite number (no inf, no nan), with its range per field.

Every float field of a plan, a solver/gradient setting, an experiment config and a constants file is
`FiniteFloat` (its range set by the field's `Field(gt=..., le=...)`), so the same bad value gets the same
clear error whether it comes from a flag, an experiment file or a hand-edited JSON plan; before this, an
infinite hardsigmoid slope was accepted, written to JSON as `null`, and the run could be neither resumed nor
exported. Command-line values that are not fields of a model (e.g. `--tol`) go through `check_float`.
"""

from __future__ import annotations

import math
from typing import Annotated

from pydantic import Field

from hybridc.errors import HybridcError

#: a float that must be finite; give the range where it is used: `x: FiniteFloat = Field(1.0, gt=0)`
FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]


class SettingError(HybridcError):
    """A numeric setting is not finite or out of its range."""


def check_float(
    value: float,
    name: str,
    *,
    gt: float | None = None,
    ge: float | None = None,
    lt: float | None = None,
    le: float | None = None,
) -> float:
    """`value` if finite and within the bounds given, else a SettingError naming `name` and the range."""
    bounds = [
        f"> {gt:g}" if gt is not None else "",
        f">= {ge:g}" if ge is not None else "",
        f"< {lt:g}" if lt is not None else "",
        f"<= {le:g}" if le is not None else "",
    ]
    wanted = " and ".join(b for b in bounds if b)
    ok = (
        math.isfinite(value)
        and (gt is None or value > gt)
        and (ge is None or value >= ge)
        and (lt is None or value < lt)
        and (le is None or value <= le)
    )
    if not ok:
        raise SettingError(f"{name} must be a finite number{' ' + wanted if wanted else ''}, not {value!r}")
    return float(value)
