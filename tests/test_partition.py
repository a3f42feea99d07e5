"""The partition pass on the zoo and on models it was not tuned on: block structure, policies, decisions,
determinism, JSON round-trip, plan validation."""

from __future__ import annotations

import networkx as nx
import pytest
import torch

from hybridc.api import partition, trace
from hybridc.errors import PartitionError, PlanMismatchError, TraceError
from hybridc.passes.plan_builder import validate_plan
from hybridc.plan import Plan

from .conftest import small_zoo
from .fixtures.unseen_models import UNSEEN, DataDependent


def _plan(name: str, n: int, **pol) -> Plan:
    lm = small_zoo(name)
    return partition(lm.model, lm.example_inputs, max_block_size=n, **pol)


def _analog_sizes(plan: Plan) -> list[int]:
    return [len(b.weight_layers) for b in plan.analog_blocks]


def check_invariants(plan: Plan, model: torch.nn.Module, example: tuple) -> None:
    """Every compute node in exactly one block; analog blocks within size; block graph acyclic;
    JSON round-trip exact; the same plan from the same model."""
    gm = trace(model, example).gm
    compute = [n.name for n in gm.graph.nodes if n.op not in ("placeholder", "output")]
    listed = [n for b in plan.blocks for n in b.nodes]
    assert sorted(listed) == sorted(compute)
    assert all(1 <= s <= plan.config.max_block_size for s in _analog_sizes(plan))
    producer = {o.node: b.name for b in plan.blocks for o in b.outputs}
    g = nx.DiGraph()
    g.add_nodes_from(b.name for b in plan.blocks)
    for b in plan.blocks:
        for r in b.inputs:
            if r.node in producer:
                g.add_edge(producer[r.node], b.name)
    assert nx.is_directed_acyclic_graph(g)
    # blocks are listed in an execution order
    order = {b.name: i for i, b in enumerate(plan.blocks)}
    assert all(order[u] < order[v] for u, v in g.edges)
    assert Plan.from_json(plan.to_json()) == plan
    assert Plan.from_json(plan.to_json()).to_json() == plan.to_json()
    again = partition(model, example, **plan.config.model_dump())
    assert again.to_json() == plan.to_json()
    validate_plan(plan, trace(model, example))


@pytest.mark.parametrize("name", ["mlp", "vgg-paper", "resnet18", "transformer", "vit"])
@pytest.mark.parametrize("n", [1, 2, 4])
def test_zoo_invariants(name: str, n: int) -> None:
    lm = small_zoo(name)
    plan = partition(lm.model, lm.example_inputs, max_block_size=n)
    check_invariants(plan, lm.model, lm.example_inputs)


def test_mlp_structure() -> None:
    assert _analog_sizes(_plan("mlp", 1)) == [1, 1, 1]
    plan = _plan("mlp", 2)
    assert _analog_sizes(plan) == [2, 1]
    first = plan.analog_blocks[0]
    assert [str(n.activation) for n in first.neurons] == ["hardsigmoid(slope=0.5)", "identity"]
    assert _analog_sizes(_plan("mlp", 4)) == [3]


def test_vgg_paper_splits_are_the_papers() -> None:
    """--max-block-size 6/3/2/1 with a digital readout make the paper's 1/2/3/6-block splits of the 6 weight
    layers (conv1-5 + fc 256), each block followed by a digital part (the next block's entry or the readout)."""
    for n, sizes in [(6, [6]), (3, [3, 3]), (2, [2, 2, 2]), (1, [1] * 6)]:
        plan = _plan("vgg-paper", n, readout="digital", norm="drop")
        assert _analog_sizes(plan) == sizes, n
        assert "readout" not in {w for b in plan.analog_blocks for w in b.weight_layers}
        assert any(d.reason == "the model's readout (readout policy digital)" for d in plan.decisions) or any(
            "readout" in b.nodes for b in plan.blocks if b.kind == "digital"
        )
    # readout analog (the default): the readout joins the last chain
    assert sum(_analog_sizes(_plan("vgg-paper", 3, norm="drop"))) == 7


def test_readout_policy_stops_at_residual_adds() -> None:
    """Only a layer that alone produces the output is a readout: a residual sum of two layers is not."""

    class Res(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b, self.c = torch.nn.Linear(4, 4), torch.nn.Linear(4, 4), torch.nn.Linear(4, 3)

        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            h = torch.relu(self.a(x))
            return {"logits": self.c(h).flatten(1), "res": self.b(h) + h}

    plan = partition(Res(), torch.randn(2, 4), max_block_size=4, readout="digital")
    analog = {w for b in plan.analog_blocks for w in b.weight_layers}
    assert "c" not in analog and {"a", "b"} <= analog


def test_vgg_structure() -> None:
    # 5 convs + fc form one chain (max-pools absorbed, inner batchnorms removed), cut uniformly
    assert _analog_sizes(_plan("vgg-bn", 1)) == [1] * 6
    assert _analog_sizes(_plan("vgg-bn", 2)) == [2, 2, 2]
    assert _analog_sizes(_plan("vgg-bn", 4)) == [3, 3]
    plan = _plan("vgg-bn", 4)
    actions = {d.action for d in plan.decisions}
    assert {"removed", "absorbed", "substituted"} <= actions
    # max-pool after an activation: the neuron sits after the pool (sigma and max commute)
    pooled = [
        n
        for b in plan.analog_blocks
        for n in b.neurons
        if "features" in n.node and n.activation.kind == "hardsigmoid" and n.preactivation == "self"
    ]
    assert pooled


def test_resnet_structure() -> None:
    plan4 = _plan("resnet18", 4)
    assert max(_analog_sizes(plan4)) == 4
    assert sum(_analog_sizes(plan4)) == 21  # every conv and the fc in some analog block
    assert _analog_sizes(_plan("resnet18", 1)) == [1] * 21
    assert sum(_analog_sizes(_plan("resnet18", 2))) == 21
    # split policy: every batchnorm is a boundary, so no block can hold two convs
    assert _analog_sizes(_plan("resnet18", 4, norm="split")) == [1] * 21
    drop = _plan("resnet18", 4, norm="drop")
    removed = [d for d in drop.decisions if d.action == "removed"]
    assert len(removed) == 20  # all batchnorms (stem + 16 block + 3 shortcut)


@pytest.mark.parametrize("n", [1, 2, 4])
def test_transformer_structure(n: int) -> None:
    plan = _plan("transformer", n)
    assert plan.model.trace == "export"  # the stock encoder layer has Python control flow
    mlps = [b for b in plan.analog_blocks if any("linear1" in w for w in b.weight_layers)]
    if n == 1:
        assert _analog_sizes(plan) == [1] * 6  # embed, 2x(linear1, linear2), head
    else:
        assert len(mlps) == 2
        for b in mlps:
            assert len(b.weight_layers) == 2 and b.weight_layers[1].endswith("linear2")
            assert [n.activation.kind for n in b.neurons] == ["hardsigmoid", "identity"]
    kept = [d for d in plan.decisions if d.action == "kept_digital"]
    assert any("attention" in d.reason for d in kept)
    assert any("layer_norm" in d.reason for d in kept)
    digital_nodes = [n for b in plan.blocks if b.kind == "digital" for n in b.nodes]
    assert any("layer_norm" in n for n in digital_nodes)
    assert any("scaled_dot_product" in n for n in digital_nodes)


def test_vit_gelu_substituted_or_refused() -> None:
    plan = _plan("vit", 2)
    subs = [d for d in plan.decisions if d.action == "substituted"]
    assert subs and all("gelu" in d.reason for d in subs)
    keep = _plan("vit", 2, activation="keep")
    assert any("not monotone" in d.reason for d in keep.decisions if d.action == "substituted")
    assert all(n.activation.kind in ("relu", "identity") for b in keep.analog_blocks for n in b.neurons)
    refuse = _plan("vit", 2, activation="keep", non_monotone="refuse")
    assert max(_analog_sizes(refuse)) == 1  # GELU stays digital, so each MLP Linear is alone
    assert any("not monotone" in d.reason for d in refuse.decisions if d.action == "kept_digital")


def test_attention_policy_analog_projections() -> None:
    lm = small_zoo("vit")
    digital = partition(lm.model, lm.example_inputs, max_block_size=2)
    analog = partition(lm.model, lm.example_inputs, max_block_size=2, attention="analog")
    assert len(analog.analog_blocks) >= len(digital.analog_blocks)
    inline = UNSEEN["inline_attention"]
    m = inline[0]()
    x = torch.randn(2, *inline[1])
    p_dig = partition(m, x, max_block_size=2)
    assert not any(w in ("q", "k", "v", "o") for b in p_dig.analog_blocks for w in b.weight_layers)
    p_an = partition(m, x, max_block_size=2, attention="analog")
    assert {"q", "k", "v", "o"} <= {w for b in p_an.analog_blocks for w in b.weight_layers}


def test_pool_policy_digital_cuts_chains() -> None:
    sizes = _analog_sizes(_plan("vgg-bn", 4, pool="digital"))
    assert sizes == [2, 1, 1, 1, 1]  # pools after convs 2, 3, 4 and 5 cut the chain (fc alone too)


@pytest.mark.parametrize("name", list(UNSEEN))
@pytest.mark.parametrize("n", [1, 3])
def test_unseen_models(name: str, n: int) -> None:
    cls, shape = UNSEEN[name]
    model = cls()
    example = (torch.randn(2, *shape),)
    plan = partition(model, example, max_block_size=n)
    check_invariants(plan, model, example)
    weights = [w for b in plan.analog_blocks for w in b.weight_layers]
    kept = {d.node for d in plan.decisions if d.action == "kept_digital"}
    assert weights, "some weight layer should be analog"
    # every Linear/Conv outside attention is in exactly one analog block, or recorded as digital
    for mod_name, mod in model.named_modules():
        if isinstance(mod, (torch.nn.Linear, torch.nn.Conv2d)) and "attn" not in mod_name:
            in_blocks = weights.count(mod_name)
            assert in_blocks == 1 or any(mod_name.replace(".", "_") in k for k in kept), mod_name


def test_unseen_specific_structures() -> None:
    cls, shape = UNSEEN["functional_mlp"]
    plan = partition(cls(), torch.randn(2, *shape), max_block_size=3)
    assert [b.weight_layers for b in plan.analog_blocks] == [["w1", "w2", "w3"]]
    plan = partition(cls(), torch.randn(2, *shape), max_block_size=2)
    assert [b.weight_layers for b in plan.analog_blocks] == [["w1", "w2"], ["w3"]]  # relu after w2 is a tail
    cls, shape = UNSEEN["shape_control_flow"]
    plan = partition(cls(), torch.randn(2, *shape), max_block_size=3)
    assert plan.model.trace == "export"
    assert _analog_sizes(plan) == [3]


def test_untraceable_model_is_one_clear_error() -> None:
    with pytest.raises(TraceError) as exc:
        partition(DataDependent(), torch.randn(2, 8), max_block_size=2)
    msg = str(exc.value)
    assert "unseen_models.py" in msg and "x.sum() > 0" in msg
    assert "Traceback" not in msg


@pytest.mark.parametrize("bad", [0, -3])
def test_invalid_block_size(bad: int) -> None:
    with pytest.raises(PartitionError, match="max_block_size"):
        _plan("mlp", bad)


def test_plan_mismatch_is_refused() -> None:
    plan = _plan("mlp", 2)
    other = small_zoo("vgg-paper")
    with pytest.raises(PlanMismatchError, match="does not match"):
        validate_plan(plan, trace(other.model, other.example_inputs))
    # same layers, different sizes: the structure hash catches it
    from hybridc.load import load_model

    wider = load_model("mlp", sizes=(784, 64, 48, 10))
    with pytest.raises(PlanMismatchError, match="differ"):
        validate_plan(plan, trace(wider.model, wider.example_inputs))
    # a hand-edited plan that drops a node
    edited = Plan.model_validate(plan.model_dump())
    edited.blocks[0].nodes = edited.blocks[0].nodes[1:] if edited.blocks[0].nodes[1:] else []
    lm = small_zoo("mlp")
    with pytest.raises(PlanMismatchError, match="not in any block"):
        validate_plan(edited, trace(lm.model, lm.example_inputs))


def test_plan_json_is_schema_valid() -> None:
    plan = _plan("resnet18", 4)
    data = plan.model_dump(mode="json")
    assert data["version"] == 1 and data["config"]["max_block_size"] == 4
    for b in data["blocks"]:
        assert b["kind"] in ("analog", "digital")
        assert all("shape" in r for r in b["inputs"] + b["outputs"])
    with pytest.raises(Exception, match="extra"):
        Plan.model_validate({**data, "surprise": 1})
