"""Settings declared once: every field of the settings models is a flag of every command that takes it,
generated from the field (type, choices, default, help), so a new field appears everywhere at once and the
flags cannot drift from the models (they did: `--drn-gamma` was missing from partition, export, report)."""

from __future__ import annotations

from typing import Any, Literal

import pytest
import typer
import typer.main
from pydantic import BaseModel, Field
from typer.testing import CliRunner

from hybridc.cli import app
from hybridc.cli.flags import flag_name, settings_flags
from hybridc.plan import PartitionConfig
from hybridc.train.experiment import ExperimentConfig

COMMANDS = typer.main.get_command(app).commands


def _flags(command: str) -> set[str]:
    return {o for p in COMMANDS[command].params for o in p.opts if o.startswith("--")}


@pytest.mark.parametrize("command", ["partition", "gradcheck", "report", "export", "train"])
def test_every_partition_policy_is_a_flag(command: str) -> None:
    missing = {flag_name(f) for f in PartitionConfig.model_fields} - _flags(command)
    assert not missing, f"{command} lacks {sorted(missing)}"


def test_every_experiment_field_is_a_train_flag() -> None:
    flags = _flags("train")
    missing = {flag_name(f) for f in ExperimentConfig.model_fields if f != "model"} - flags
    assert not missing, sorted(missing)


def test_experiment_copies_the_compiler_fields() -> None:
    """The experiment's partition policies, t1/t2/solver_mode and beta are the compiler's fields: same bounds
    and choices (the optional copies keep the choice order of their owner)."""
    from hybridc.energy.settings import GradientConfig, SolverConfig

    for name, owner, field in (
        ("t2", SolverConfig, "t2"),
        ("free_tol", SolverConfig, "free_tol"),
        ("solver_mode", SolverConfig, "mode"),
        ("beta", GradientConfig, "beta"),
    ):
        assert ExperimentConfig.model_fields[name].metadata == owner.model_fields[field].metadata, name
        assert ExperimentConfig.model_fields[name].default == owner.model_fields[field].default, name
    # t1 is optional: not given, each free phase runs to equilibrium; given, exactly T1 steps
    assert ExperimentConfig.model_fields["t1"].metadata == SolverConfig.model_fields["t1"].metadata
    assert ExperimentConfig().t1 is None
    with pytest.raises(Exception, match="greater than or equal to 1"):
        ExperimentConfig(t1=0)
    for name, info in PartitionConfig.model_fields.items():
        copy = ExperimentConfig.model_fields[name]
        assert copy.default is None and copy.metadata == info.metadata, name
    with pytest.raises(Exception, match="'analog' or 'digital'"):
        ExperimentConfig(readout="both")


class _Toy(BaseModel):
    colour: Literal["red", "green"] = Field("green", description="paint colour")
    size: int = Field(3, ge=1, description="how big")
    shiny: bool = Field(False, description="polish it")
    extra: dict[str, Any] = Field(default_factory=dict, description="more", examples=[{"a": 1}])


def test_a_new_field_becomes_a_flag_with_its_help_default_and_value() -> None:
    toy = typer.Typer()
    seen: list[dict[str, Any]] = []

    @toy.command()
    @settings_flags("settings", _Toy)
    def run(name: str, settings: dict[str, Any] | None = None) -> None:
        seen.append(settings or {})

    runner = CliRunner()
    r = runner.invoke(toy, ["--help"], env={"TERMINAL_WIDTH": "1000", "COLUMNS": "1000"})
    assert r.exit_code == 0, r.output
    for text in (
        "--colour",
        "<red|green>",
        "paint colour",
        "[default: green]",
        "--size",
        "[default: 3]",
        "--shiny",
        "--no-shiny",
        "[default: no-shiny]",
        "--extra",
        "'{\"a\": 1}'",
    ):
        assert text in r.output, text
    r = runner.invoke(toy, ["x", "--colour", "red", "--shiny", "--extra", '{"b": 2}'])
    assert r.exit_code == 0, r.output
    assert seen[-1] == {"colour": "red", "shiny": True, "extra": {"b": 2}}  # not given: left to the model
    assert runner.invoke(toy, ["x"]).exit_code == 0 and seen[-1] == {}
    assert runner.invoke(toy, ["x", "--colour", "blue"]).exit_code != 0
