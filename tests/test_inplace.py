"""In-place ops are part of the model: they are rewritten out of place (never dropped), or refused clearly.

Regression tests for issue 15 item 1: `h.mul_(3.0)` between two Linears partitioned into one analog block
[a, c] with no trace of the multiplication, and `h.relu_(); h += 1.0; torch.relu_(h)` lost all three.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from hybridc.api import compile, partition, trace
from hybridc.errors import PlanMismatchError, TraceError
from hybridc.passes.classify import free_nodes
from hybridc.passes.functionalize import mutating_nodes

D = 5


def _x(batch: int = 3) -> torch.Tensor:
    return torch.randn(batch, D, dtype=torch.float64)


class MulInPlace(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.c = nn.Linear(D, D), nn.Linear(D, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        h.mul_(3.0)
        return self.c(h)


class ThreeInPlace(nn.Module):
    """relu_, `+=` through a Python alias taken before, torch.relu_: eager `y` sees all three."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.c = nn.Linear(D, D), nn.Linear(D, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        h.relu_()
        y = h
        h += 1.0
        torch.relu_(h)
        return self.c(y)


class InplaceActivations(nn.Module):
    """nn.ReLU(inplace=True) used twice, F.relu(inplace=True), F.hardtanh(x, -1, 1, True) positionally."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Linear(D, D), nn.Linear(D, D), nn.Linear(D, 2)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.a(x))
        skip = h
        h = F.relu(self.b(h) - 0.1, inplace=True)
        F.hardtanh(h, -1.0, 0.5, True)
        return self.c(self.act(h - 0.2) + skip)


def _same_forward(model: nn.Module, x: torch.Tensor) -> float:
    model = model.double()
    ff = compile(model, x, max_block_size=1, activation="keep")
    with torch.no_grad():
        return float((ff(x) - model(x.clone())).abs().max())


@pytest.mark.parametrize("cls", [MulInPlace, ThreeInPlace, InplaceActivations])
def test_compiled_forward_keeps_inplace_ops(cls: type[nn.Module]) -> None:
    torch.manual_seed(1)
    assert _same_forward(cls(), _x()) < 1e-12


def test_mul_inplace_is_in_a_block_between_the_layers() -> None:
    model, x = MulInPlace().double(), _x()
    plan = partition(model, x, max_block_size=2)
    members = {n for b in plan.blocks for n in b.nodes}
    traced = trace(model, x)
    muls = [n for n in traced.gm.graph.nodes if n.target in ("mul", torch.mul) or "mul" in str(n.target)]
    assert muls and all(n.name in members for n in muls)
    # a block holding both layers (a scaled synapse) must hold the multiplication between them
    for b in plan.blocks:
        if {"a", "c"} <= set(b.nodes):
            assert all(n.name in b.nodes for n in muls)
    assert any("in-place" in note for note in traced.notes)
    # and the plan says so, naming the model's line
    assert any(
        d.action == "substituted" and "mul_" in d.reason and "test_inplace.py:" in d.reason
        for d in plan.decisions
    )


def test_no_mutation_left_and_every_effect_in_a_block() -> None:
    for cls in (MulInPlace, ThreeInPlace, InplaceActivations):
        model, x = cls().double(), _x()
        traced = trace(model, x)
        assert mutating_nodes(traced.gm) == []
        plan = partition(model, x, max_block_size=2)
        free = free_nodes(traced.gm)
        members = {n for b in plan.blocks for n in b.nodes}
        for node in traced.gm.graph.nodes:
            if node.op in ("placeholder", "output", "get_attr") or node in free:
                continue
            assert node.name in members, f"{cls.__name__}: {node.name} is in no block"


def test_a_plan_that_leaves_out_a_node_is_refused() -> None:
    model, x = MulInPlace().double(), _x()
    plan = partition(model, x, max_block_size=1)
    plan = plan.model_copy(deep=True)
    for b in plan.blocks:
        b.nodes = [n for n in b.nodes if "mul" not in n]
    plan.blocks = [b for b in plan.blocks if b.nodes]
    with pytest.raises(PlanMismatchError):
        compile(model, x, plan=plan)


class MutatesParameter(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(D, D)
        self.register_buffer("count", torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.count.add_(1.0)
        return self.a(x)


class MutatesViewOfLiveTensor(nn.Module):
    """`h[:, :2].mul_(2)` changes h, read afterwards: fx cannot follow it, torch.export functionalizes it."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.c = nn.Linear(D, D), nn.Linear(D, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        v = h[:, :2]
        v.mul_(2.0)
        return self.c(h)


class MutatesInput(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(D, D)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x.mul_(2.0)
        return self.a(x)


def test_mutating_a_buffer_is_refused_naming_the_line() -> None:
    with pytest.raises(TraceError, match=r"test_inplace\.py:\d+.*in place"):
        trace(MutatesParameter(), torch.randn(2, D))


def test_mutation_of_a_view_is_functionalized_by_export() -> None:
    torch.manual_seed(2)
    assert _same_forward(MutatesViewOfLiveTensor(), _x()) < 1e-12


def test_mutated_graph_input_is_functionalized_and_the_callers_tensor_is_left_alone() -> None:
    model, x = MutatesInput().double(), _x()
    before = x.clone()
    ff = compile(model, x, max_block_size=1, activation="keep")
    assert torch.equal(x, before)
    with torch.no_grad():
        assert float((ff(x) - model(x.clone())).abs().max()) < 1e-12


# --------------------------------------------------------------------------------------------------
# property: random models with in-place ops, block size 1, keep activations -> the original forward
# --------------------------------------------------------------------------------------------------

OPS = [
    "linear",
    "mul_",
    "add_",
    "relu_",
    "iadd",
    "isub",
    "imul",
    "torch_relu_",
    "f_relu_inplace",
    "relu_module",
    "clamp_",
    "tanh_",
    "sigmoid_",
    "alias_then_mutate",
    "div_",
]


class RandomInplace(nn.Module):
    def __init__(self, program: list[tuple[str, float]]) -> None:
        super().__init__()
        self.program = program
        self.lins = nn.ModuleList([nn.Linear(D, D) for _ in program])
        self.act = nn.ReLU(inplace=True)
        self.head = nn.Linear(D, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.lins[0](x)
        kept = [h]
        for (op, c), lin in zip(self.program, self.lins):
            if op == "linear":
                h = lin(h)
            elif op == "mul_":
                h.mul_(c)
            elif op == "add_":
                h.add_(c)
            elif op == "div_":
                h.div_(1.0 + abs(c))
            elif op == "relu_":
                h.relu_()
            elif op == "iadd":
                h += c
            elif op == "isub":
                h -= c
            elif op == "imul":
                h *= c
            elif op == "torch_relu_":
                torch.relu_(h)
            elif op == "f_relu_inplace":
                h = F.relu(h, inplace=True)
            elif op == "relu_module":
                h = self.act(h)
            elif op == "clamp_":
                h.clamp_(-abs(c), abs(c) + 0.1)
            elif op == "tanh_":
                h.tanh_()
            elif op == "sigmoid_":
                h.sigmoid_()
            elif op == "alias_then_mutate":
                kept.append(h)  # read at the end: must see every later mutation of h
        return self.head(h + sum(kept[1:], torch.zeros_like(h)))


programs = st.lists(
    st.tuples(st.sampled_from(OPS), st.floats(-2.0, 2.0, allow_nan=False)), min_size=1, max_size=7
)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(programs)
def test_random_inplace_models_compile_to_their_forward(program: list[tuple[str, float]]) -> None:
    torch.manual_seed(0)
    model = RandomInplace(program).double()
    x = _x(4)
    with torch.no_grad():
        want = model(x.clone())
    ff = compile(model, x, max_block_size=1, activation="keep")
    with torch.no_grad():
        got = ff(x)
    assert torch.allclose(got, want, rtol=1e-10, atol=1e-10), (program, float((got - want).abs().max()))
