"""Crossbar geometry: how many ROWSxCOLS arrays a weight matrix occupies, and per-sample element counts.

Why separate: the tile rules are the cost model's hardware assumption (stated in `COUNTING_RULES`), shared by
every analog block kind's layout (`hybridc.cost.analog`) and exposed to users and tests on their own.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from hybridc.cost.schema import ReportError


def parse_tile(text: str) -> tuple[int, int]:
    """'256x256' -> (256, 256); '128' -> (128, 128)."""
    parts = text.lower().replace("×", "x").split("x")
    try:
        dims = [int(p) for p in parts]
    except ValueError:
        raise ReportError(f"--tile {text!r} is not ROWSxCOLS (e.g. 256x256)") from None
    if len(dims) == 1:
        dims = dims * 2
    if len(dims) != 2 or min(dims) <= 0:
        raise ReportError(f"--tile {text!r} must be two positive sizes ROWSxCOLS (e.g. 256x256)")
    return dims[0], dims[1]


def crossbar_tiles(rows: int, cols: int, tile: tuple[int, int], groups: int = 1) -> int:
    """Logical ROWSxCOLS tiles for a rows x cols weight matrix per group: groups * ceil * ceil."""
    return groups * math.ceil(rows / tile[0]) * math.ceil(cols / tile[1])


def linear_tiles(in_features: int, out_features: int, tile: tuple[int, int] = (256, 256)) -> int:
    """Logical tiles of Linear(in, out): ceil(in/ROWS) * ceil(out/COLS)."""
    return crossbar_tiles(in_features, out_features, tile)


def conv_tiles(
    c_in: int, c_out: int, kernel: Sequence[int], groups: int = 1, tile: tuple[int, int] = (256, 256)
) -> int:
    """Logical tiles of Conv(c_in, c_out, kernel, groups), unrolled per group as
    (c_in/groups * prod(kernel)) rows x (c_out/groups) columns."""
    return crossbar_tiles(c_in // groups * math.prod(kernel), c_out // groups, tile, groups)


def _numel(shape: Sequence[int] | None) -> int:
    """Elements per sample of a shape that includes the batch dimension."""
    if not shape:
        return 1
    return math.prod(shape[1:])
