"""Composite activations: an element-wise function of one value written out with several ops.

Models write activations out: GPT-2's `NewGELUActivation` is 0.5·x·(1 + tanh(√(2/π)(x + 0.044715x³))),
SiLU/Swish is `x * torch.sigmoid(x)`, QuickGELU `x * torch.sigmoid(1.702 * x)`. Each contains a product of
two data values, which on its own reads as attention-like (data × data) and would cut an MLP into
single-layer blocks. But both factors are element-wise functions of the *same* tensor, so the whole
subgraph is one activation σ(x). This module finds such subgraphs and names what they compute by
evaluating them on a grid (so that the activation/non_monotone policies apply as for the stock modules).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.fx as fx
import torch.nn.functional as F

from hybridc.passes.ops import ACTIVATIONS
from hybridc.passes.reach import walk

#: Element-wise ops a composite activation may be written with (their other operands must be numbers).
ELEMENTWISE = ACTIVATIONS | {
    "mul",
    "div",
    "add",
    "sub",
    "rsub",
    "neg",
    "pos",
    "pow",
    "erf",
    "exp",
    "expm1",
    "log1p",
    "sqrt",
    "rsqrt",
    "reciprocal",
    "abs",
    "square",
    "clamp",
    "clamp_min",
    "clamp_max",
    "identity",
}

#: Known activations a composite is matched against (name, function, plan key).
_KNOWN: list[tuple[str, Callable[[torch.Tensor], torch.Tensor], str]] = [
    ("gelu", F.gelu, "gelu"),
    ("gelu (tanh approximation)", lambda t: F.gelu(t, approximate="tanh"), "gelu"),
    ("silu", F.silu, "silu"),
    ("quick_gelu x*sigmoid(1.702x)", lambda t: t * torch.sigmoid(1.702 * t), "gelu"),
    ("mish", F.mish, "mish"),
    ("hardswish", F.hardswish, "hardswish"),
    ("relu", F.relu, "relu"),
    ("sigmoid", torch.sigmoid, "sigmoid"),
    ("tanh", torch.tanh, "tanh"),
    ("softplus", F.softplus, "softplus"),
]

#: The key of a composite that matches no known activation: it has no energy form, like a non-monotone one.
UNKNOWN_COMPOSITE = "composite"


@dataclass
class Composite:
    """One recognised composite activation."""

    sink: fx.Node  # its last node: the activation's value
    parts: list[fx.Node]  # its interior nodes, in graph order
    source: fx.Node  # the single value it is a function of (the pre-activation)
    key: str  # the activation it computes (ops key), or UNKNOWN_COMPOSITE
    description: str  # for the plan's decisions


def _is_number(a: object) -> bool:
    return isinstance(a, (int, float)) and not isinstance(a, bool)


def _elementwise(node: fx.Node, key: str, data: set[fx.Node]) -> bool:
    """An element-wise op of data whose other operands are plain numbers (or strings such as
    `approximate="tanh"`), so it can be evaluated on a 1-D grid."""
    if key not in ELEMENTWISE or node not in data or node.op == "get_attr":
        return False
    for a in list(node.args) + list(node.kwargs.values()):
        if isinstance(a, fx.Node):
            if a not in data:
                return False
        elif not (_is_number(a) or a is None or isinstance(a, (str, bool))):
            return False
    return True


def _is_product(node: fx.Node, key: str, data: set[fx.Node]) -> bool:
    return key in ("mul", "div") and sum(isinstance(a, fx.Node) and a in data for a in node.args[:2]) == 2


def _region(
    p: fx.Node, keys: dict[fx.Node, str], data: set[fx.Node], order: dict[fx.Node, int]
) -> list[fx.Node]:
    """The element-wise subgraph ending at `p` whose values are used only inside it (graph order)."""

    def elementwise_inputs(n: fx.Node) -> list[fx.Node]:
        return [a for a in n.all_input_nodes if _elementwise(a, keys[a], data)]

    closure = set(walk([p], elementwise_inputs))
    region: set[fx.Node] = {p}
    for n in sorted(closure - {p}, key=order.__getitem__, reverse=True):  # users before producers
        if n.users and all(u in region for u in n.users):
            region.add(n)
    return sorted(region, key=order.__getitem__)


def _sources(region: list[fx.Node]) -> set[fx.Node]:
    members = set(region)
    return {a for n in region for a in n.all_input_nodes if a not in members}


def _single_source(region: list[fx.Node]) -> tuple[list[fx.Node], fx.Node] | None:
    """The region (or its largest tail) that is a function of one value, with that value.

    `gelu(h + r)` grows back through the residual add to two sources; its tail after the add has one."""
    sources = _sources(region)
    if len(sources) == 1:
        return region, next(iter(sources))
    p = region[-1]
    for i, d in enumerate(region[:-1]):  # earliest first: the largest tail
        reach = {d}
        for n in region[i + 1 :]:
            if any(a in reach for a in n.all_input_nodes):
                reach.add(n)
        tail = [n for n in region[i + 1 :] if n in reach]
        if p in reach and _sources(tail) == {d} and all(u in reach for n in tail[:-1] for u in n.users):
            return tail, d
    return None


def _extend_forward(
    region: list[fx.Node], keys: dict[fx.Node, str], data: set[fx.Node], taken: set[fx.Node]
) -> list[fx.Node]:
    """Take the element-wise ops with numeric operands that follow the region's last node alone."""
    region = list(region)
    while len(region[-1].users) == 1:
        (u,) = region[-1].users
        if (
            u in taken
            or not _elementwise(u, keys.get(u, ""), data)
            or list(u.all_input_nodes) != [region[-1]]
        ):
            break
        region.append(u)
    return region


def _evaluate(region: list[fx.Node], source: fx.Node, gm: fx.GraphModule, t: torch.Tensor) -> torch.Tensor:
    """The region's value with `t` in place of its source (a 1-D grid)."""
    env: dict[fx.Node, object] = {source: t}

    def load(a: object) -> object:
        return env[a] if isinstance(a, fx.Node) else a

    for n in region:
        args = [load(a) for a in n.args]
        kwargs = {k: load(v) for k, v in n.kwargs.items()}
        kwargs.pop("inplace", None)
        if n.op == "call_module":
            env[n] = gm.get_submodule(str(n.target))(*args, **kwargs)
        elif n.op == "call_method":
            name = str(n.target)
            if name.endswith("_") and not name.startswith("__"):
                name = name[:-1]  # the out-of-place twin of an in-place method: the grid stays intact
            env[n] = getattr(args[0], name)(*args[1:], **kwargs)
        else:
            env[n] = n.target(*args, **kwargs)
    out = env[region[-1]]
    if not isinstance(out, torch.Tensor):
        raise TypeError("not a tensor")
    return out


def _identify(fn_values: torch.Tensor, grid: torch.Tensor) -> tuple[str, str]:
    """(key, description) of the function sampled on `grid`."""
    scale = 1.0 + fn_values.abs().max().item()
    for name, ref, key in _KNOWN:
        if (fn_values - ref(grid)).abs().max().item() <= 1e-5 * scale:
            return key, name
    monotone = bool((fn_values.diff() >= -1e-9 * scale).all())
    return (
        UNKNOWN_COMPOSITE,
        f"an element-wise function matching no known activation ({'monotone' if monotone else 'not monotone'})",
    )


def find_composites(
    gm: fx.GraphModule, keys: dict[fx.Node, str], data: set[fx.Node], weights: set[fx.Node]
) -> list[Composite]:
    """Every composite activation of the graph (in graph order of their last node).

    Candidates are data × data products (the op that would otherwise be digital). The subgraph is grown
    backwards through element-wise ops with numeric operands, keeping only nodes whose users all lie inside
    it; it is a composite activation when exactly one value outside feeds it.
    """
    order = {n: i for i, n in enumerate(gm.graph.nodes)}
    grid = torch.linspace(-6.0, 6.0, 1201, dtype=torch.float64)
    taken: set[fx.Node] = set()
    found: list[Composite] = []
    for p in reversed(list(gm.graph.nodes)):
        if p in taken or p in weights or not _is_product(p, keys.get(p, ""), data):
            continue
        if not _elementwise(p, keys[p], data):
            continue
        found_region = _single_source(_region(p, keys, data, order))
        if found_region is None:
            continue
        region, source = found_region
        region = _extend_forward(
            region, keys, data, taken
        )  # `x * relu6(x + 3) / 6`: the scaling belongs to it
        members = set(region)
        try:
            with torch.no_grad():
                values = _evaluate(region, source, gm, grid)
        except Exception:  # noqa: BLE001 - an op we cannot evaluate on a grid: not recognised
            continue
        if values.shape != grid.shape or not torch.isfinite(values).all():
            continue
        key, name = _identify(values.to(torch.float64), grid)
        taken |= members
        found.append(
            Composite(
                sink=region[-1],
                parts=region[:-1],
                source=source,
                key=key,
                description=f"{len(region)} element-wise ops of {source.name} computing {name}",
            )
        )
    found.sort(key=lambda c: order[c.sink])
    return found
