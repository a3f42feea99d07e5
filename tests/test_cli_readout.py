"""`--readout analog|digital` wherever the other partition policies are offered (partition, gradcheck,
report, export, train): shown with its default in --help and passed into PartitionConfig as `readout`.
Under "digital" the weight layer producing the model's output stays digital (the ff-EBM paper's readout)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import typer.main
from typer.testing import CliRunner

from hybridc.cli import app, main
from hybridc.plan import PartitionConfig

SMALL = ["mlp", "--model-kwargs", '{"sizes": [784, 16, 10]}']
#: every command that offers partition policies (the ones with --norm)
POLICY_COMMANDS = sorted(
    name
    for name, cmd in typer.main.get_command(app).commands.items()
    if any("--norm" in p.opts for p in cmd.params)
)


def _main(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    captured = capsys.readouterr()
    return exc.value.code, captured.out, captured.err


def test_every_policy_command_offers_readout() -> None:
    assert {"partition", "gradcheck", "report", "export", "train"} <= set(POLICY_COMMANDS)
    default = PartitionConfig.model_fields["readout"].default
    for name in POLICY_COMMANDS:
        r = CliRunner().invoke(app, [name, "--help"], env={"TERMINAL_WIDTH": "1000", "COLUMNS": "1000"})
        rows = [ln for ln in r.output.splitlines() if re.match(r"^│\s+--readout\s", ln)]
        assert len(rows) == 1, (name, r.output)
        assert "analog|digital" in rows[0] and f"[default: {default}]" in rows[0], rows[0]


@pytest.mark.parametrize("readout", ["analog", "digital"])
def test_partition_readout_reaches_the_plan(readout: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _main(["partition", *SMALL, "--readout", readout, "-f", "json"], capsys)
    assert code == 0, err
    plan = json.loads(out)
    assert plan["config"]["readout"] == readout
    last = next(
        b
        for b in plan["blocks"]
        if "net.3" in b["weight_layers"] or any(n.startswith("net_3") for n in b.get("nodes", []))
    )
    assert last["kind"] == readout


def test_gradcheck_readout(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _main(["gradcheck", *SMALL, "--readout", "digital", "-f", "json", "-q"], capsys)
    assert code == 0, err
    analog = {p["name"]: p["analog"] for p in json.loads(out)["params"]}
    assert analog == {"net.1.weight": True, "net.1.bias": True, "net.3.weight": False, "net.3.bias": False}


def test_report_readout(capsys: pytest.CaptureFixture[str]) -> None:
    analog_weights = {}
    for readout in ("analog", "digital"):
        code, out, err = _main(["report", *SMALL, "--readout", readout, "-f", "json"], capsys)
        assert code == 0, err
        analog_weights[readout] = sum(
            b["weights"] for b in json.loads(out)["blocks"] if b["kind"] == "analog"
        )
    assert (
        analog_weights["analog"] - analog_weights["digital"] == 16 * 10
    )  # the 16 -> 10 readout left the array


def test_export_readout_refused_for_a_run_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A run directory exports as trained: --readout, like every partition flag, is named and refused."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "plan.json").write_text("{}")
    (run / "config.json").write_text("{}")
    code, out, err = _main(["export", str(run), "--readout", "digital", "-o", str(tmp_path / "x")], capsys)
    assert code == 2 and err.count("error: ") == 1 and "drop --readout" in err, err


def test_bad_readout_is_one_error_line(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _main(["partition", "mlp", "--readout", "hybrid"], capsys)
    assert code == 2 and err.count("\n") == 1 and "'--readout'" in err and "'analog', 'digital'" in err


def test_train_readout(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from hybridc.train.experiment import ExperimentConfig

    if "readout" not in ExperimentConfig.model_fields:
        pytest.skip("ExperimentConfig has no readout field yet (requested in /tmp/coord/requests.md)")
    out = tmp_path / "run"
    code, _, err = _main(
        [
            "train",
            "--train-subset",
            "64",
            "--test-subset",
            "32",
            "--batch-size",
            "32",
            "--epochs",
            "1",
            "--t1",
            "4",
            "--t2",
            "2",
            "--model-kwargs",
            '{"sizes": [64, 16, 10]}',
            "--readout",
            "digital",
            "--no-progress",
            "--out",
            str(out),
        ],
        capsys,
    )
    assert code == 0, err
    plan = json.loads((out / "plan.json").read_text())
    assert plan["config"]["readout"] == "digital"
    assert json.loads((out / "config.json").read_text())["readout"] == "digital"
    assert plan["blocks"][-1]["kind"] == "digital"
