"""`hybridc report`: the cost model's counts on hand-computable models, the constants file, the JSON schema
and the command line on the zoo's ResNet-18."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from hybridc.cost.constants import ConfigError, EnergyConstants, load_constants
from hybridc.cost.report import CostReport, conv_tiles, cost_report, crossbar_tiles, linear_tiles, parse_tile

T1, T2 = 20, 5


def _mlp() -> nn.Module:
    return nn.Sequential(
        nn.Linear(784, 1024), nn.ReLU(), nn.Linear(1024, 1024), nn.ReLU(), nn.Linear(1024, 10)
    )


@pytest.fixture(scope="module")
def mlp_report() -> CostReport:
    torch.manual_seed(0)
    return cost_report(_mlp(), torch.randn(2, 784), max_block_size=2, t1=T1, t2=T2)


def test_tile_formulas() -> None:
    assert (
        parse_tile("256x256") == (256, 256)
        and parse_tile("128") == (128, 128)
        and parse_tile("64X32") == (64, 32)
    )
    assert linear_tiles(784, 1024) == 4 * 4
    assert linear_tiles(1024, 10) == 4 * 1
    assert linear_tiles(256, 256) == 1 and linear_tiles(257, 256) == 2
    # conv unrolled per group: (Cin/g*k*k) rows x (Cout/g) cols
    assert conv_tiles(3, 64, (3, 3)) == 1  # 27 x 64
    assert conv_tiles(64, 128, (3, 3)) == 3  # 576 x 128
    assert conv_tiles(256, 512, (3, 3)) == 9 * 2  # 2304 x 512
    assert conv_tiles(64, 64, (3, 3), groups=64) == 64  # depthwise: 9 x 1 per group
    assert conv_tiles(300, 30, (3, 3), groups=10) == 10 * 2  # 270 x 3 per group
    assert crossbar_tiles(1000, 1000, (100, 500)) == 10 * 2


def test_mlp_counts_by_hand(mlp_report: CostReport) -> None:
    """Linear(784,1024)-ReLU-Linear(1024,1024)-ReLU-Linear(1024,10), max block size 2:
    analog [L1 -> hardsigmoid -> L2] | digital [ReLU] | analog [L3]."""
    blocks = {b.name: b for b in mlp_report.blocks}
    kinds = [b.kind for b in mlp_report.blocks]
    assert kinds == ["analog", "digital", "analog"]
    a1, dig, a2 = mlp_report.blocks
    l1, l2, l3 = 784 * 1024, 1024 * 1024, 1024 * 10
    # tiles: 16 + 16 logical, x2 for the differential pair; 4 x 1 logical for Linear(1024, 10)
    assert [la.logical_tiles for la in a1.layers] == [16, 16] and a1.tiles == 64
    assert a2.logical_tiles == 4 and a2.tiles == 8
    assert mlp_report.total.tiles == 72
    assert [la.reads for la in a1.layers] == ["input", "neuron"]
    # F = both layers forward; B = only L2 (L1 reads the clamped input)
    assert a1.forward_macs == l1 + l2 and a1.transposed_macs == l2
    assert a1.inference.analog_macs == T1 * (l1 + 2 * l2) == 57_999_360
    # the first block's input is the graph input: no dPhi/dx pass in training
    assert not a1.input_needs_grad
    assert a1.training.analog_macs == (T1 + 2 * T2) * (l1 + 2 * l2)
    assert a1.training.digital_flops == 2 * 2 * (l1 + l2)  # one forward-sized pass per nudged phase
    # DAC: 784 inputs; + nudge on the 1024 output neurons per nudged phase
    assert (a1.inference.dac, a1.training.dac) == (784, 784 + 2 * 1024)
    # ADC: 1024 outputs; + both nudged states of both neuron layers
    assert (a1.inference.adc, a1.training.adc) == (1024, 1024 + 2 * (1024 + 1024))
    # the last block reads a value that depends on parameters: its dPhi/dx is needed in training
    assert a2.input_needs_grad
    assert a2.forward_macs == l3 and a2.transposed_macs == 0
    assert a2.inference.analog_macs == T1 * l3
    assert a2.training.analog_macs == (T1 + 2 * T2) * l3 + 2 * l3
    assert (a2.inference.dac, a2.training.dac) == (1024, 1024 + 2 * 10)
    assert (a2.inference.adc, a2.training.adc) == (10, 10 + 2 * 10 + 2 * 1024)
    # digital ReLU: one FLOP per element, x3 in training
    assert (dig.inference.digital_flops, dig.training.digital_flops) == (1024, 3 * 1024)
    assert set(blocks) == {b.name for b in mlp_report.blocks}


def test_mlp_energy_and_totals(mlp_report: CostReport) -> None:
    c = EnergyConstants()
    e_adc = 20e-3 * 2**7
    e_flop = (0.9 + 3.7) / 2
    assert math.isclose(c.e_adc_pj, e_adc) and math.isclose(c.e_flop_pj, e_flop)
    a1 = mlp_report.blocks[0]
    inf = a1.inference
    want = inf.analog_macs * 0.01 + inf.adc * e_adc + inf.dac * 0.2
    assert math.isclose(inf.energy_pj.total, want, rel_tol=1e-9)
    tr = a1.training
    want = tr.analog_macs * 0.01 + tr.adc * e_adc + tr.dac * 0.2 + tr.digital_flops * e_flop
    assert math.isclose(tr.energy_pj.total, want, rel_tol=1e-9)
    assert tr.energy_pj.memory == 0.0  # only with include_memory
    tot = mlp_report.total
    for phase in ("inference", "training"):
        got = getattr(tot, phase)
        assert got.analog_macs == sum(getattr(b, phase).analog_macs for b in mlp_report.blocks)
        assert math.isclose(
            got.energy_pj.total, sum(getattr(b, phase).energy_pj.total for b in mlp_report.blocks)
        )
    # all-digital reference: 2 FLOPs per weight MAC + the ReLUs the plan kept digital
    fwd = 2 * (784 * 1024 + 1024 * 1024 + 1024 * 10) + 1024
    assert (
        tot.all_digital["inference"].digital_flops == fwd
        and tot.all_digital["training"].digital_flops == 3 * fwd
    )


def test_conv_model_tiles_and_macs() -> None:
    """Conv(3->300, 3x3) -> ReLU -> grouped Conv(300->30, 3x3, groups=10), one analog block, 8x8 input."""
    model = nn.Sequential(
        nn.Conv2d(3, 300, 3, padding=1), nn.ReLU(), nn.Conv2d(300, 30, 3, padding=1, groups=10)
    )
    rep = cost_report(model, torch.randn(2, 3, 8, 8), max_block_size=2, t1=3, t2=2)
    (blk,) = [b for b in rep.blocks if b.kind == "analog"]
    c1, c2 = blk.layers
    assert (c1.rows, c1.cols, c1.groups, c1.logical_tiles) == (27, 300, 1, 2)
    assert (c2.rows, c2.cols, c2.groups, c2.logical_tiles) == (270, 3, 10, 20)
    assert blk.tiles == 2 * 22 and blk.weights == 27 * 300 + 270 * 3 * 10
    assert c1.macs == 64 * 300 * 27 and c2.macs == 64 * 30 * 270
    assert blk.inference.analog_macs == 3 * (c1.macs + 2 * c2.macs)
    assert blk.inference.dac == 3 * 64 and blk.inference.adc == 30 * 64


def test_drn_block_uses_doubled_inputs() -> None:
    """DRN: conductances (2*784) x 1024 and 1024 x 1024, one device per weight; sources gamma*[x, -x]."""
    rep = cost_report(_mlp(), torch.randn(2, 784), max_block_size=2, eb_kind="drn", t1=T1, t2=T2)
    a1 = rep.blocks[0]
    assert a1.eb_kind == "drn"
    assert [(la.rows, la.cols) for la in a1.layers] == [(1568, 1024), (1024, 1024)]
    assert a1.tiles == a1.logical_tiles == 7 * 4 + 4 * 4
    assert a1.devices == a1.weights == 1568 * 1024 + 1024 * 1024
    assert a1.inference.dac == 2 * 784
    assert a1.inference.analog_macs == T1 * (1568 * 1024 + 2 * 1024 * 1024)


class _Attn(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(8, 16)
        self.attn = nn.MultiheadAttention(16, 2, batch_first=True)
        self.out = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)
        a, _ = self.attn(h, h, h, need_weights=False)
        return self.out(a)


def test_digital_attention_flops() -> None:
    """The attention module stays digital; its FLOPs include projections and the attention core:
    2 * (4*T*E^2 + 2*T^2*E) for T tokens of width E."""
    rep = cost_report(_Attn(), torch.randn(2, 5, 8), max_block_size=1)
    digital = [b for b in rep.blocks if b.kind == "digital"]
    t, e = 5, 16
    assert sum(b.inference.digital_flops for b in digital) == 2 * (4 * t * e * e + 2 * t * t * e)
    analog = [b for b in rep.blocks if b.kind == "analog"]
    assert [la.macs for b in analog for la in b.layers] == [t * 8 * 16, t * 16 * 4]


def test_tile_size_and_devices_per_weight(mlp_report: CostReport) -> None:
    model = _mlp()
    consts = load_constants(None)
    consts = consts.model_copy(
        update={"dhn_devices_per_weight": consts.dhn_devices_per_weight.model_copy(update={"value": 1.0})}
    )
    rep = cost_report(
        model, torch.randn(2, 784), max_block_size=2, tile=(128, 512), constants=consts, t1=T1, t2=T2
    )
    a1 = rep.blocks[0]
    assert [la.logical_tiles for la in a1.layers] == [7 * 2, 8 * 2] and a1.tiles == 30
    # counts other than tiles do not depend on the tile size
    assert a1.inference.analog_macs == mlp_report.blocks[0].inference.analog_macs


def test_constants_file_override(tmp_path: Path) -> None:
    f = tmp_path / "c.json"
    f.write_text(
        json.dumps(
            {
                "analog_mac_pj": 0.05,
                "adc_enob": {"value": 6, "source": "my 6-bit SAR"},
                "digital_precision": "int8",
            }
        )
    )
    c = load_constants(f)
    assert c.analog_mac_pj.value == 0.05 and "c.json" in c.analog_mac_pj.source
    assert (
        c.adc_enob.value == 6 and c.adc_enob.source == "my 6-bit SAR" and c.adc_enob.unit == "effective bits"
    )
    assert math.isclose(c.e_adc_pj, 20e-3 * 64)
    assert math.isclose(c.e_flop_pj, (0.03 + 0.2) / 2)  # Horowitz int8
    assert c.dac_pj == EnergyConstants().dac_pj  # untouched
    y = tmp_path / "c.yaml"
    y.write_text("digital_mult_pj: 1.5\ndac_pj: {value: 0.5}\n")
    c = load_constants(y, digital_precision="fp16")
    assert c.mult_pj().value == 1.5 and c.add_pj().value == 0.4 and c.dac_pj.value == 0.5
    rep = cost_report(_mlp(), torch.randn(2, 784), max_block_size=2, constants=c)
    assert rep.constants["dac_pj"].value == 0.5 and rep.settings.digital_precision == "fp16"


@pytest.mark.parametrize(
    "content, match",
    [
        ({"analog_mac": 0.1}, "analog_mac"),  # typo: unknown key
        ({"adc_enob": {"value": 6, "sauce": "x"}}, "sauce"),  # unknown key inside a constant
        ({"dac_pj": -1}, "dac_pj"),
        ({"digital_precision": "fp8"}, "digital_precision"),
        ({"dhn_devices_per_weight": 1.5}, "dhn_devices_per_weight"),
    ],
)
def test_constants_file_rejects(tmp_path: Path, content: dict, match: str) -> None:
    f = tmp_path / "bad.json"
    f.write_text(json.dumps(content))
    with pytest.raises(ConfigError, match=match):
        load_constants(f)


def test_constants_file_unreadable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_constants(tmp_path / "missing.json")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_constants(bad)


def test_every_default_constant_cites_a_source() -> None:
    for name, c in EnergyConstants().table().items():
        assert c.value >= 0 and c.unit and len(c.source) > 20, name


# ---- the command line (in-process: the CLI is the same typer app users run) --------------------------------
runner = CliRunner()


def _invoke(*args: str):  # noqa: ANN202
    from hybridc.cli import app

    return runner.invoke(app, list(args), catch_exceptions=False)


def test_cli_json_schema(tmp_path: Path) -> None:
    r = _invoke("report", "mlp", "--max-block-size", "2", "--format", "json", "--t1", "10", "--t2", "3")
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert set(data) == {"settings", "constants", "conventions", "blocks", "total"}
    rep = CostReport.model_validate(data)
    assert (rep.settings.t1, rep.settings.t2, rep.settings.tile_rows, rep.settings.tile_cols) == (
        10,
        3,
        256,
        256,
    )
    for key in ("analog_mac_pj", "adc_walden_fom_fj", "dac_pj", "digital_add_pj", "digital_mult_pj"):
        assert data["constants"][key]["source"]
    blk = data["blocks"][1]
    assert blk["kind"] == "analog" and {"tiles", "layers", "inference", "training"} <= set(blk)
    for phase in ("inference", "training"):
        assert set(blk[phase]) == {
            "analog_macs",
            "digital_flops",
            "dac",
            "adc",
            "memory_accesses",
            "energy_pj",
        }
        assert set(blk[phase]["energy_pj"]) == {"analog_mac", "adc", "dac", "digital", "memory", "total"}
    # --memory adds SRAM energy; a constants file is applied; tile flag parsed
    cfile = tmp_path / "e.yaml"
    cfile.write_text("analog_mac_pj: 0.02\n")
    r = _invoke(
        "report", "mlp", "-n", "2", "-f", "json", "--memory", "--constants", str(cfile), "--tile", "128x128"
    )
    assert r.exit_code == 0, r.output
    rep2 = CostReport.model_validate_json(r.stdout)
    assert rep2.total.inference.energy_pj.memory > 0 and rep2.constants["analog_mac_pj"].value == 0.02
    assert rep2.total.tiles > rep.total.tiles


def test_cli_bad_inputs(tmp_path: Path) -> None:
    from hybridc.errors import HybridcError

    bad = tmp_path / "bad.json"
    bad.write_text('{"adc_bits": 8}')
    with pytest.raises(HybridcError, match="adc_bits"):
        _invoke("report", "mlp", "--constants", str(bad))
    with pytest.raises(HybridcError, match="ROWSxCOLS"):
        _invoke("report", "mlp", "--tile", "axb")


def test_cli_resnet18_table() -> None:
    r = _invoke("report", "resnet18", "--max-block-size", "4", "--hide-constants")
    assert r.exit_code == 0, r.output
    out = r.stdout
    assert "resnet18: hardware cost per sample" in out and re.search(r"T1=\d+", out)
    for name in ("analog0", "digital1", "analog11", "total", "energy breakdown", "all-digital reference"):
        assert name in out, name
    assert "ceil(in/ROWS)" in out  # counting rules in the caption
    total_line = next(line for line in out.splitlines() if line.startswith("│ total"))
    cells = [c.strip() for c in total_line.strip("│").split("│")]
    assert cells[2] == "21"  # all 21 weight layers of ResNet-18 (20 convs/shortcuts + fc) are analog
    assert int(cells[3].replace(",", "")) > 0


def test_equilibrium_free_phase_is_counted_at_its_measured_steps() -> None:
    """A model compiled to run each free phase to equilibrium (the default) is counted at the steps each
    block's free phase took on the example batch (at most its step cap), unless --t1 fixes the count."""
    torch.manual_seed(0)
    model, x = _mlp(), torch.randn(2, 784)
    rep = cost_report(model, x, max_block_size=2, t2=T2)
    fixed = cost_report(model, x, max_block_size=2, t1=T1, t2=T2)
    for b, f in zip(rep.blocks, fixed.blocks):
        if b.kind != "analog":
            continue
        per_step = f.inference.analog_macs // T1
        assert b.inference.analog_macs % per_step == 0
        steps = b.inference.analog_macs // per_step
        assert 1 <= steps <= rep.settings.t1, (steps, rep.settings.t1)
        assert (
            steps % 5 == 0
        )  # an equilibrium phase stops at a convergence check (every check_every = 5 steps)
    assert rep.settings.t1 != T1 or any(b.kind == "analog" for b in rep.blocks)
