"""The public surface: ``import hybridc`` is cheap and gives the documented entry points."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import torch.nn as nn

import hybridc


def test_import_is_cheap_and_versioned() -> None:
    code = "import sys, hybridc; print(hybridc.__version__); print('torch' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    assert out[0][0].isdigit()
    assert out[1] == "False"  # the CLI's --version and `import hybridc` do not pay for torch


def test_every_public_name_resolves() -> None:
    for name in hybridc.__all__:
        assert getattr(hybridc, name) is not None, name
    with pytest.raises(AttributeError, match="no attribute 'partiton'"):
        hybridc.partiton  # noqa: B018


def test_partition_compile_gradcheck_through_the_package() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    x = torch.randn(4, 6)
    plan = hybridc.partition(model, x, max_block_size=2)
    assert isinstance(plan, hybridc.Plan)
    ffebm = hybridc.compile(model, x, plan=plan)
    assert isinstance(ffebm, hybridc.FFEBM)
    assert ffebm(x).shape == (4, 3)


def test_ffebm_block_graph_is_public() -> None:
    """Export and the cost model read a compiled model through `input_names`, `io(name)` and `run`, the
    one block loop (they used to reach into private fields and loop over the blocks themselves)."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.LayerNorm(8), nn.Linear(8, 3)
    )
    ff = hybridc.compile(model, torch.randn(2, 6), max_block_size=2)
    assert len(ff.input_names) == 1 and len(ff.blocks) >= 2
    x = torch.randn(4, 6)
    env = ff.run([x])
    produced = [o for name in ff.blocks for o in ff.io(name)[1]]
    assert set(produced) | set(ff.input_names) == set(env)
    for name in ff.blocks:  # every block reads names that exist before it
        assert set(ff.io(name)[0]) <= set(env)
    assert torch.equal(env[produced[-1]], ff(x))
    seen: list[str] = []
    ff.run([x], call=lambda name, block, xs: (seen.append(name), block(*xs))[1])
    assert seen == list(ff.blocks)
