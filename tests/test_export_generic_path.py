"""A model compiled on the generic (autograd) path, `solver={"fast_path": "off"}`, exports like any other: the
export builds the transposed step over what every relaxation step reads (the block's per-step `core` synapses
after its once-per-phase prefix). It used to build it over the whole synapse graph, so the exported step was fed
the prepared inputs it does not take and the export failed with a misleading "any batch size" message."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from hybridc.api import compile as hc_compile
from hybridc.export.exporter import export_ffebm


def test_fast_path_off_model_exports_and_verifies(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3))
    ff = hc_compile(model, torch.randn(2, 6), max_block_size=2, solver={"fast_path": "off", "t1": 30})
    block = next(iter(ff.analog_blocks.values()))
    assert block.fast is None and block.core is not block.synapses
    result = export_ffebm(ff, tmp_path / "out", full=True)
    assert result.published and result.report is not None and result.report.ok, result.report
    fast_on = hc_compile(model, torch.randn(2, 6), max_block_size=2, solver={"t1": 30})
    fast_on.load_state_dict(ff.state_dict())
    x = torch.randn(4, 6)
    torch.testing.assert_close(ff(x), fast_on(x), rtol=0, atol=1e-6)  # the two paths compute one model
