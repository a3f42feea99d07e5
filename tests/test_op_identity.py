"""One op vocabulary: the transpose op table (keyed by spelling) names every spelling by the identity that
hybridc.passes.ops gives it, so passes, costs and transposes cannot drift apart.

The table stays keyed by spelling (each spelling binds its arguments its own way), but every entry carries
the identity its spelling has, and that identity must be ``ops.spelling_key(spelling)``, the function that
``ops.op_key`` reads nodes with. These tests check the pairing in both directions and that a wrong
registration fails at import time instead of silently forking the vocabulary.
"""

from __future__ import annotations

import operator
from collections import defaultdict
from functools import partial

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.fx import GraphModule, Node, symbolic_trace

from hybridc.energy.transpose import rules as R
from hybridc.energy.transpose import table
from hybridc.passes import ops

#: Adjoints of ops that only move values (reshape back, permute back, crop, scatter a piece into zeros):
#: their forward does no arithmetic on the data (expand's adjoint sums, as the transpose of a copy must).
MOVEMENT_ADJOINTS = frozenset(
    {
        R.identity_adjoint,
        R.cast_adjoint,
        R.reshape_adjoint,
        R.expand_adjoint,
        R.transpose_adjoint,
        R.t_adjoint,
        R.permute_adjoint,
        R.movedim_adjoint,
        R.tensor_attr_adjoint,
        R.pieces_adjoint,
        R.select_adjoint,
        R.slice_adjoint,
    }
)

#: Identities whose spellings need more than one adjoint, and why (every other identity has exactly one).
SEVERAL_ADJOINTS = {
    # ops.py folds casts (`x.to`, `x.float()`, `aten._to_copy`, `x.type_as(y)`) into "identity": their
    # transpose casts the gradient back to the input's dtype/device, a plain identity does not
    "identity": frozenset({R.identity_adjoint, R.cast_adjoint}),
    # ops.py names movedim/moveaxis a permute (they are one); they bind (source, destination), not dims
    "permute": frozenset({R.permute_adjoint, R.movedim_adjoint}),
}

#: Identities outside ops.PURE_SHAPE_OPS whose spellings still only move values, and why.
MOVEMENT_OUTSIDE_PURE_SHAPE = {
    "pos": "`+x`: ops.py keeps it among the affine SHAPE_OPS",
    "meta": "getattr nodes are ops.py's 'meta' (x.shape, ...); the table also transposes x.T / x.mT",
}


def _function(adjoint):
    """The function under any ``functools.partial`` layers (max-pool's ``nd=2``, sub's ``signs``)."""
    while isinstance(adjoint, partial):
        adjoint = adjoint.func
    return adjoint


def test_every_table_spelling_has_ops_identity() -> None:
    wrong = {
        key: (entry.identity, ops.spelling_key(key))
        for key, entry in table.TABLE.items()
        if ops.spelling_key(key) != entry.identity
    }
    assert wrong == {}


def test_table_entries_are_identity_rule_signature() -> None:
    for entry in table.TABLE.values():
        assert isinstance(entry, table.Entry)
        assert isinstance(entry.identity, str) and entry.identity
        assert isinstance(entry.rule, R.Rule)


def test_every_pure_shape_op_is_in_the_table() -> None:
    """The fast path can transpose every op the passes treat as pure data movement."""
    assert ops.PURE_SHAPE_OPS - {e.identity for e in table.TABLE.values()} == set()


def test_pure_shape_spellings_carry_no_data_arithmetic() -> None:
    offenders = {
        key: entry.rule
        for key, entry in table.TABLE.items()
        if entry.identity in ops.PURE_SHAPE_OPS
        and (
            _function(entry.rule.adjoint) not in MOVEMENT_ADJOINTS
            or entry.rule.data_args != ("input",)  # one data operand: nothing is summed or multiplied
            or entry.rule.exclusive
            or entry.rule.stochastic  # dropout scales by a random mask
        )
    }
    assert offenders == {}


def test_movement_rules_outside_pure_shape_ops_are_the_named_ones() -> None:
    outside = {
        entry.identity
        for entry in table.TABLE.values()
        if _function(entry.rule.adjoint) in MOVEMENT_ADJOINTS and entry.identity not in ops.PURE_SHAPE_OPS
    }
    assert outside == set(MOVEMENT_OUTSIDE_PURE_SHAPE)


def test_spellings_of_one_identity_share_one_adjoint() -> None:
    adjoints: dict[str, set] = defaultdict(set)
    for entry in table.TABLE.values():
        adjoints[entry.identity].add(_function(entry.rule.adjoint))
    several = {identity: frozenset(fns) for identity, fns in adjoints.items() if len(fns) > 1}
    assert several == SEVERAL_ADJOINTS


def test_registering_under_a_wrong_identity_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    snapshot = dict(table.TABLE)
    monkeypatch.setattr(table, "TABLE", dict(snapshot))  # whatever happens, the real table is untouched
    with pytest.raises(ValueError, match=r"add.*registered as 'view'.*names it 'add'"):
        table._register("view", R.Rule(R.reshape_adjoint), "input, *args", torch.add)
    # a batch with one wrong spelling registers none of them
    with pytest.raises(ValueError, match=r"'Tensor\.view'.*registered as 'flatten'.*names it 'view'"):
        table._register("flatten", R.Rule(R.reshape_adjoint), "input, *args", torch.flatten, "Tensor.view")
    assert table.TABLE == snapshot
    assert all(table.TABLE[k] is snapshot[k] for k in snapshot)


def test_registering_under_ops_identity_works(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(table, "TABLE", {})
    rule = R.Rule(R.reshape_adjoint)
    table._register("view", rule, "input, *args", "Tensor.view", torch.ops.aten.view.default, None)
    assert set(table.TABLE) == {"Tensor.view", torch.ops.aten.view.default}
    assert table.TABLE["Tensor.view"].identity == "view" and table.TABLE["Tensor.view"].rule is rule


def test_method_spellings_need_the_tensor_prefix() -> None:
    assert ops.spelling_key("Tensor.reshape_as") == "view"
    with pytest.raises(ValueError, match="Tensor.<method>"):
        ops.spelling_key("view")


def test_long_names_and_reflected_operators_fold_into_the_short_identity() -> None:
    assert ops.spelling_key(torch.multiply) == ops.spelling_key("Tensor.__rmul__") == "mul"
    assert ops.spelling_key(torch.subtract) == "sub" and ops.spelling_key("Tensor.__radd__") == "add"
    assert ops.spelling_key(torch.true_divide) == ops.spelling_key(torch.divide) == "div"
    assert ops.spelling_key(torch.concatenate) == ops.spelling_key(torch.concat) == "cat"
    assert ops.spelling_key(torch.negative) == "neg"
    assert ops.spelling_key(F.max_pool3d_with_indices) == "max_pool"
    assert ops.spelling_key(torch.ops.aten.adaptive_max_pool3d.default) == "adaptive_max_pool"
    assert ops.spelling_key(torch.ops.aten._adaptive_avg_pool3d.default) == "adaptive_avg_pool"
    assert ops.spelling_key(nn.ConvTranspose2d) == "conv_transpose"
    assert ops.spelling_key(int) == "int"  # a class called as a function is not a module spelling


class _Net(nn.Module):
    """A module, a function, a method, an operator and a getattr (``y.T``): every kind of spelling."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.conv(x))
        y = torch.cat([y, -y], dim=1).flatten(1)
        return operator.add(y.T.T, y.view(y.size(0), -1)) * 2


def _spelling(node: Node, gm: GraphModule):
    if node.op == "call_module":
        return type(gm.get_submodule(node.target))
    if node.op == "call_method":
        return f"Tensor.{node.target}"
    return node.target


@pytest.mark.parametrize("capture", ["fx", "export"])
def test_op_key_is_spelling_key_of_the_nodes_spelling(capture: str) -> None:
    net, x = _Net().eval(), torch.randn(2, 1, 5, 5)
    gm = symbolic_trace(net) if capture == "fx" else torch.export.export(net, (x,)).graph_module
    calls = [n for n in gm.graph.nodes if n.op.startswith("call_")]
    assert calls
    for node in calls:
        assert ops.op_key(node, gm) == ops.spelling_key(_spelling(node, gm)), node.format_node()
