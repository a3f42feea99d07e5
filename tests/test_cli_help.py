"""`hybridc --help` as users read it: every option that has a default shows it (the rich renderer used to eat
"[...]" as markup), every option has help text, flags carry no "<bool>" placeholder, -h works like --help,
and --version prints the package version."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import typer.main
from typer.testing import CliRunner

from hybridc.cli import app

COMMANDS = sorted(typer.main.get_command(app).commands)

#: options that have no default by nature: a file or directory to read or write, a run to resume.
NO_DEFAULT = {
    "--output",
    "--plan",
    "--resume",
    "--config",
    "--constants",
    "--checkpoint",
    "--plot",
    "--model-kwargs",
}


def _help(*args: str) -> list[str]:
    """The rendered help, one terminal line per option (a very wide terminal: no wrapping)."""
    r = CliRunner().invoke(app, [*args, "--help"], env={"TERMINAL_WIDTH": "1000", "COLUMNS": "1000"})
    assert r.exit_code == 0, r.output
    return r.output.splitlines()


def _row(lines: list[str], option: str) -> str:
    rows = [ln for ln in lines if re.match(rf"^│\s+(\*\s+)?{re.escape(option)}\s", ln)]
    assert len(rows) == 1, (option, rows)
    return rows[0]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_default_is_shown(command: str) -> None:
    lines = _help(command)
    params = typer.main.get_command(app).commands[command].params
    checked = 0
    for p in params:
        if p.param_type_name != "option":
            continue
        name = next(o for o in p.opts if o.startswith("--"))
        row = _row(lines, name)
        text = row.split("  ", 1)[-1]
        assert re.search(r"[a-z]{3}", text.split(name, 1)[-1]), f"{command} {name} has no help text: {row}"
        assert "<bool>" not in row, f"{command} {name} shows a <bool> placeholder: {row}"
        if p.required or name in NO_DEFAULT or (p.is_flag and not p.secondary_opts):
            continue
        assert "[default: " in row, f"{command} {name} does not show its default: {row.strip()}"
        checked += 1
    assert checked > 0 or command in ("zoo",)


def test_defaults_are_the_config_models_defaults() -> None:
    """The help reads the defaults from the config models, so it shows what actually runs."""
    from hybridc.plan import PartitionConfig
    from hybridc.train.experiment import ExperimentConfig

    lines = _help("train")
    for field, flag in (
        ("epochs", "--epochs"),
        ("batch_size", "--batch-size"),
        ("lr", "--lr"),
        ("beta", "--beta"),
        ("optimizer", "--optimizer"),
        ("device", "--device"),
        ("data", "--data"),
        ("algorithm", "--algorithm"),
        ("schedule", "--schedule"),
    ):
        assert f"[default: {ExperimentConfig.model_fields[field].default}]" in _row(lines, flag), flag
    for field in ("norm", "layer_norm", "pool", "attention", "activation", "eb_kind", "max_block_size"):
        flag = "--" + field.replace("_", "-")
        assert f"[default: {PartitionConfig.model_fields[field].default}]" in _row(lines, flag), flag
    assert "[default: 0.8; 0.9 for the embedded default]" in _row(lines, "--feedback-gain")


def test_short_help_and_version() -> None:
    import hybridc

    runner = CliRunner()
    assert runner.invoke(app, ["-h"]).output == runner.invoke(app, ["--help"]).output
    assert runner.invoke(app, ["partition", "-h"]).exit_code == 0
    for flag in ("--version", "-V"):
        r = runner.invoke(app, [flag])
        assert r.exit_code == 0 and r.output.strip() == f"hybridc {hybridc.__version__}"
    pyproject = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    assert f'version = "{hybridc.__version__}"' in pyproject


def test_version_without_package_metadata() -> None:
    """A source tree that was never installed reads the version from pyproject.toml."""
    code = (
        "import importlib.metadata as m\n"
        "def missing(name):\n    raise m.PackageNotFoundError(name)\n"
        "m.version = missing\n"
        "import hybridc\nprint(hybridc.__version__)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    pyproject = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    assert f'version = "{r.stdout.strip()}"' in pyproject and r.stdout.strip() != "0.0.0+unknown"


def test_every_model_building_command_takes_model_kwargs() -> None:
    """--model-kwargs wherever a zoo model is built (it used to be on train and export only), and train's
    --input-size shows what runs when it is not given."""
    commands = typer.main.get_command(app).commands
    for name in ("partition", "gradcheck", "report", "export", "train"):
        assert any("--model-kwargs" in p.opts for p in commands[name].params), name
    assert "[default: the data's own size" in _row(_help("train"), "--input-size")
