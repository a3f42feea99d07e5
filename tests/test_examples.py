"""The example files the README points to validate against the models that read them."""

from __future__ import annotations

from pathlib import Path

import yaml

from hybridc.cost.constants import load_constants
from hybridc.train.experiment import ExperimentConfig

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def test_experiment_example_validates() -> None:
    cfg = ExperimentConfig(**yaml.safe_load((EXAMPLES / "exp.yaml").read_text()))
    assert cfg.model == "mlp" and cfg.readout == "digital" and cfg.feedback_gain == 0.9


def test_energy_example_overrides() -> None:
    consts = load_constants(EXAMPLES / "energy.yaml")
    assert consts.digital_precision == "int8"
