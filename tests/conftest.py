"""Shared fixtures: small zoo variants keep the default suite fast on 2 CPU cores."""

from __future__ import annotations

import pytest
import torch

from hybridc.load import load_model

#: zoo models at test size: same architecture, fewer channels
SMALL = {
    "mlp": {"sizes": (784, 48, 48, 10)},
    "vgg-paper": {"width": 0.0625},
    "vgg-bn": {"width": 0.0625},
    "resnet18": {"base": 4},
    "transformer": {"d_model": 16, "nhead": 2, "dim_feedforward": 32},
    "vit": {"dim": 16, "heads": 2},
}


def small_zoo(name: str):  # noqa: ANN201
    return load_model(name, **SMALL.get(name, {}))


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


#: The smoke subset (`python -m pytest -m smoke`, well under a minute): one fast file per stage a user meets
#: first — the public API, help and errors of the CLI, the zoo, partition, the plan, EP against ID, a run.
SMOKE_FILES = frozenset(
    {
        "test_public_api.py",
        "test_cli_help.py",
        "test_cli_errors.py",
        "test_zoo.py",
        "test_partition_passes.py",
        "test_gradcheck_batch.py",
        "test_cli_eval.py",
    }
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.name in SMOKE_FILES:
            item.add_marker(pytest.mark.smoke)
