"""The partition passes record what they decide in `node.meta["hybridc"]` as documented
(hybridc/passes/node_meta.py), the plan says the same, and the reachability walk agrees with networkx."""

from __future__ import annotations

import networkx as nx
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from hybridc.api import make_config, trace
from hybridc.passes.chains import chains, mark_chains
from hybridc.passes.eligibility import mark_eligibility
from hybridc.passes.node_meta import META_KEY, PartitionMeta, compute_nodes, data_inputs, is_free, rec
from hybridc.passes.partition import partition_graph
from hybridc.passes.reach import descendants, walk


class MLP3(nn.Module):
    """LayerNorm (digital under the default layer_norm=split) -> three Linear layers with ReLUs -> softmax."""

    def __init__(self) -> None:
        super().__init__()
        self.ln = nn.LayerNorm(6)
        self.fc1 = nn.Linear(6, 8)
        self.fc2 = nn.Linear(8, 8)
        self.fc3 = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.fc1(self.ln(x)))
        h = torch.relu(self.fc2(h))
        return torch.softmax(self.fc3(h), dim=-1)


def _partition(max_block_size: int, **policies: object):  # noqa: ANN202
    traced = trace(MLP3(), torch.randn(2, 6))
    plan = partition_graph(traced, make_config(max_block_size, **policies), [[2, 6]])
    return traced.gm, plan, {n.name: n for n in traced.gm.graph.nodes}


@pytest.mark.parametrize(("n", "groups"), [(1, [0, 1, 2]), (2, [0, 0, 1]), (3, [0, 0, 0])])
def test_weight_nodes_get_their_chain_group_and_block(n: int, groups: list[int]) -> None:
    gm, plan, _ = _partition(n)
    weights = [x for x in compute_nodes(gm) if rec(x).info.kind == "weight"]
    assert [str(w.target) for w in weights] == ["fc1", "fc2", "fc3"]
    assert all(isinstance(rec(w), PartitionMeta) and rec(w).eligible for w in weights)
    assert [rec(w).chain for w in weights] == [0, 0, 0]  # one chain: linked through the ReLUs
    assert [rec(w).group for w in weights] == groups
    for w in weights:
        block = plan.block(rec(w).block)
        assert rec(w).block_kind == block.kind == "analog"
        assert str(w.target) in block.weight_layers
        assert rec(w).digital_group is None


def test_digital_nodes_get_their_group_and_block() -> None:
    gm, plan, by_name = _partition(2)
    for name in ("ln", "softmax"):
        r = rec(by_name[name])
        assert not r.eligible and r.reason  # layer_norm=split; softmax has no energy form
        assert r.chain is None and r.group is None
        assert r.digital_group is not None and r.block_kind == "digital"
        assert name in plan.block(r.block).nodes
    # the LayerNorm (depth 0, before any analog block) and the softmax (after two) are different groups
    assert rec(by_name["ln"]).digital_group[0] == 0
    assert rec(by_name["softmax"]).digital_group[0] == 2
    kept = [d for d in rec(by_name["ln"]).decisions if d.action == "kept_digital"]
    assert len(kept) == 1 and "layer_norm policy split" in kept[0].reason


def test_neurons_identity_and_decisions_are_the_plans() -> None:
    gm, plan, by_name = _partition(2)
    for b in plan.blocks:
        assert b.nodes == [x.name for x in compute_nodes(gm) if rec(x).block == b.name]
        if b.kind == "analog":
            assert b.neurons == [
                rec(x).neuron for x in compute_nodes(gm) if rec(x).block == b.name and rec(x).neuron
            ]
    relu = rec(by_name["relu"])
    assert relu.neuron is not None and relu.neuron.activation.kind == "hardsigmoid"
    assert relu.neuron.preactivation == "input"
    assert [d.action for d in relu.decisions] == ["substituted"]
    # the last weight of a block is an identity neuron when nothing follows it inside the block
    assert rec(by_name["fc3"]).neuron.activation.kind == "identity"
    assert plan.decisions == [d for x in gm.graph.nodes if META_KEY in x.meta for d in rec(x).decisions]


def test_removed_norm_is_marked_identity() -> None:
    traced = trace(MLP3(), torch.randn(2, 6))
    plan = partition_graph(traced, make_config(2, layer_norm="drop"), [[2, 6]])
    ln = next(x for x in traced.gm.graph.nodes if x.name == "ln")
    assert rec(ln).identity == "removed" and rec(ln).eligible
    assert "ln" in plan.block(rec(ln).block).identity_nodes


def test_repartitioning_replaces_every_record() -> None:
    traced = trace(MLP3(), torch.randn(2, 6))
    partition_graph(traced, make_config(3), [[2, 6]])
    first = {x.name: rec(x) for x in compute_nodes(traced.gm)}
    assert [d.action for d in first["relu"].decisions] == ["substituted"]  # hardsigmoid replaces the ReLU
    partition_graph(traced, make_config(1, activation="keep"), [[2, 6]])
    for x in compute_nodes(traced.gm):
        assert rec(x) is not first[x.name]
    weights = [x for x in compute_nodes(traced.gm) if rec(x).info.kind == "weight"]
    assert [rec(w).group for w in weights] == [0, 1, 2]
    relu = rec(next(x for x in traced.gm.graph.nodes if x.name == "relu"))
    assert relu.decisions == [] and relu.group is None and relu.neuron is None  # one-layer blocks: digital


def test_chains_are_cut_by_a_split_norm() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.BatchNorm1d(4), nn.Linear(4, 4), nn.Linear(4, 2))
    gm = trace(model.eval(), torch.randn(3, 4)).gm
    mark_eligibility(gm, make_config(2, norm="split"))
    mark_chains(gm)
    assert [[str(w.target) for w in c] for c in chains(gm)] == [["0"], ["3", "4"]]
    mark_eligibility(gm, make_config(2, norm="entry"))
    mark_chains(gm)
    assert [[str(w.target) for w in c] for c in chains(gm)] == [["0", "3", "4"]]


def test_data_inputs_look_through_free_nodes() -> None:
    class Reshape(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.fc(x)
            return h.view(x.size(0), -1) + x

    gm = trace(Reshape(), torch.randn(3, 4)).gm
    mark_eligibility(gm, make_config(2))
    by_name = {n.name: n for n in gm.graph.nodes}
    view = by_name["view"]
    assert any(is_free(a) for a in view.all_input_nodes)  # x.size(0) is a shape query
    assert set(data_inputs(view)) == {by_name["fc"]}  # the graph input behind the size is not a producer


# ---- reachability ----------------------------------------------------------------------------------------

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def dags(draw: st.DrawFn) -> nx.DiGraph:
    """A random DAG on 1..14 vertices: each edge from a lower to a higher number present or not."""
    n = draw(st.integers(1, 14))
    pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]
    present = draw(st.lists(st.booleans(), min_size=len(pairs), max_size=len(pairs)))
    g = nx.DiGraph()
    g.add_nodes_from(range(n))
    g.add_edges_from(e for e, keep in zip(pairs, present) if keep)
    return g


@FAST
@given(g=dags(), data=st.data())
def test_reach_agrees_with_networkx(g: nx.DiGraph, data: st.DataObject) -> None:
    nodes = list(g.nodes)
    succ = lambda v: list(g.successors(v))  # noqa: E731
    starts = data.draw(st.lists(st.sampled_from(nodes), min_size=1, max_size=3))
    expected = set(starts).union(*(nx.descendants(g, s) for s in starts))
    for bfs in (False, True):
        got = list(walk(starts, succ, breadth_first=bfs))
        assert len(got) == len(set(got))  # each node once
        assert set(got) == expected
    a, b = data.draw(st.sampled_from(nodes)), data.draw(st.sampled_from(nodes))
    assert (b in walk(succ(a), succ)) == (a != b and nx.has_path(g, a, b))  # "does a reach b"
    # through a subset only: networkx on the graph with the other vertices' out-edges removed
    through = set(data.draw(st.lists(st.sampled_from(nodes), max_size=len(nodes))))
    h = nx.DiGraph()
    h.add_nodes_from(nodes)
    h.add_edges_from((u, v) for u, v in g.edges if u in through)
    expected = set(starts).union(*(nx.descendants(h, s) for s in starts))
    assert set(walk(starts, succ, expand=through.__contains__)) == expected


@FAST
@given(g=dags(), data=st.data())
def test_breadth_first_visits_by_distance(g: nx.DiGraph, data: st.DataObject) -> None:
    start = data.draw(st.sampled_from(list(g.nodes)))
    dist = nx.single_source_shortest_path_length(g, start)
    order = [dist[v] for v in walk([start], lambda v: list(g.successors(v)), breadth_first=True)]
    assert order == sorted(order)


def test_descendants_agree_with_networkx_on_an_fx_graph() -> None:
    gm = trace(MLP3(), torch.randn(2, 6)).gm
    g = nx.DiGraph((a, n) for n in gm.graph.nodes for a in n.all_input_nodes)
    for n in gm.graph.nodes:
        assert descendants(n) == {n} | (nx.descendants(g, n) if n in g else set())
