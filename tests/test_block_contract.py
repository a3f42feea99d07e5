"""Every energy-based block kind answers the block-kind contract of `EnergyBlock` (`from_plan`,
`needs_feedback_guard`, `feedback_layers`, `synapse_graph`, `export_unsupported_reason`, `crossbar_layout`,
`non_negative_weights`) the way the feedback guard, the cost report, the exporter and the compiled model's
construction relied on when they still tested a block's class."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from torch import nn

from hybridc.api import compile
from hybridc.cost.constants import EnergyConstants
from hybridc.cost.report import cost_of_compiled
from hybridc.energy.block import EnergyBlock
from hybridc.energy.compensation import _block_graph
from hybridc.energy.contraction import feedback_layers, feedback_norms
from hybridc.energy.dhn import DHNBlock
from hybridc.energy.drn import DRNBlock
from hybridc.errors import UnsupportedOpError
from hybridc.runtime.ffebm import BLOCK_KINDS


def _mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Flatten(), nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 3)
    )


X = torch.randn(2, 3, 4)


@pytest.fixture(scope="module")
def dhn() -> tuple:
    ff = compile(_mlp(), X, max_block_size=3)
    name, blk = next(iter(ff.analog_blocks.items()))
    assert isinstance(blk, DHNBlock) and len(blk.neuron_names) == 3
    return ff, name, blk


@pytest.fixture(scope="module")
def drn() -> tuple:
    ff = compile(_mlp(), X, max_block_size=3, eb_kind="drn", drn_gamma=2.0)
    name, blk = next(iter(ff.analog_blocks.items()))
    assert isinstance(blk, DRNBlock) and len(blk.neuron_names) == 3
    return ff, name, blk


def test_each_kind_is_built_from_its_plan_block(dhn: tuple, drn: tuple) -> None:
    """FFEBM builds every analog block through `BLOCK_KINDS[eb_kind].from_plan`: a DHN takes the plan's
    activations, a DRN the plan block's kind parameters."""
    assert set(BLOCK_KINDS) == {"dhn", "drn"}
    for ff, name, blk in (dhn, drn):
        pb = ff.plan.block(name)
        assert type(blk) is BLOCK_KINDS[pb.eb_kind]
        assert blk.neuron_names == [nr.node for nr in pb.neurons]
    ff, name, blk = dhn
    assert blk.activation_specs == [nr.activation for nr in ff.plan.block(name).neurons]
    ff, name, blk = drn
    assert ff.plan.block(name).eb_params["gamma"] == 2.0 and blk.gamma == 2.0


def test_feedback_guard_questions(dhn: tuple, drn: tuple) -> None:
    """A multi-layer DHN is guarded through the weights of its per-step core (not the input layer); a
    single-layer DHN and a DRN are not, and `feedback_norms` measures exactly the guarded blocks."""
    ff, name, blk = dhn
    assert blk.needs_feedback_guard
    names = [n for n, _ in blk.feedback_layers()]
    assert names == [n for n, _ in feedback_layers(blk)] and len(names) == 2
    first = next(m for m in blk.synapses.modules() if isinstance(m, nn.Linear))
    assert all(w is not first.weight for _, w in blk.feedback_layers())
    assert set(feedback_norms(ff)) == {name}

    single = compile(_mlp(), X, max_block_size=1)
    assert single.analog_blocks and not any(b.needs_feedback_guard for b in single.analog_blocks.values())
    assert feedback_norms(single) == {}

    ff, name, blk = drn
    assert not blk.needs_feedback_guard and blk.feedback_layers() == []
    assert feedback_norms(ff) == {}


def test_synapse_graph(dhn: tuple, drn: tuple) -> None:
    """A DHN's pre-activations are its synapse graph (what the guard's compensation walks); a DRN has none."""
    ff, name, blk = dhn
    assert blk.synapse_graph is blk.synapses
    assert _block_graph(ff, name) is blk.synapses
    ff, name, blk = drn
    assert blk.synapse_graph is None and _block_graph(ff, name) is None


def test_export_reason(dhn: tuple, drn: tuple, tmp_path: Path) -> None:
    """A DHN exports (None); a DRN answers with the sentence the exporter's error ends with."""
    from hybridc.export.exporter import export_ffebm

    assert dhn[2].export_unsupported_reason() is None
    ff, name, blk = drn
    reason = blk.export_unsupported_reason()
    assert isinstance(reason, str) and "DHN" in reason and "eb_kind dhn" in reason
    message = f"analog block {name} is a drn block (DRNBlock); {reason}"
    with pytest.raises(UnsupportedOpError, match=re.escape(message)):
        export_ffebm(ff, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_crossbar_layout(dhn: tuple, drn: tuple) -> None:
    """A DHN is laid out from its synapse graph's weight ops (signed: a differential pair per weight), a DRN
    from its conductance chain (doubled inputs, one device per weight); the report uses exactly these."""
    consts = EnergyConstants()
    pair = int(consts.dhn_devices_per_weight.value)
    for (ff, name, blk), doubled in ((dhn, False), (drn, True)):
        ins, _ = ff.io(name)
        shapes = {
            r.node: r.shape for r in [*ff.plan.graph_inputs, *(r for b in ff.plan.blocks for r in b.outputs)]
        }
        in_refs = [(list(shapes[i]), "float32") for i in ins]
        layers, sizes = blk.crossbar_layout(
            in_refs, [False], list(ff.plan.block(name).weight_layers), (256, 256), consts
        )
        assert [(la.rows, la.cols) for la in layers] == (
            [(24, 8), (8, 6), (6, 3)] if doubled else [(12, 8), (8, 6), (6, 3)]
        )
        assert [la.reads for la in layers] == ["input", "neuron", "neuron"]
        assert all(la.devices == la.weights * (1 if doubled else pair) for la in layers)
        assert sizes["dac"] == (24 if doubled else 12) and sizes["B"] == 8 * 6 + 6 * 3
        report = cost_of_compiled(ff, t1=3, t2=2)
        assert next(b for b in report.blocks if b.name == name).layers == layers


def test_non_negative_weights(dhn: tuple, drn: tuple) -> None:
    """DRN conductances are physical (≥ 0, what device effects keep them); DHN weights are signed."""
    from hybridc.analog.nonideal import _non_negative

    assert not dhn[2].non_negative_weights and not _non_negative(dhn[2])
    assert drn[2].non_negative_weights and _non_negative(drn[2])
    assert EnergyBlock.non_negative_weights is False
