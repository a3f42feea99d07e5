"""`hybridc gradcheck` from the command line: --output picks the loss's tensor in a dict output, progress
lines per phase with residuals on stderr (plain lines when not a terminal), structurally-zero tensors shown
as such and left out of the summary, and the figure written."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

MODEL = """
import torch
from torch import nn

INPUT_SHAPE = (6,)


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 12), nn.ReLU())
        self.head = nn.Linear(12, 3)
        self.aux = nn.Linear(12, 2)
        nn.init.zeros_(self.aux.weight)  # zero-init: nothing below `aux` gets a gradient from it

    def forward(self, x):
        h = self.body(x)
        return {"features": h, "logits": self.head(h), "aux": self.aux(h)}
"""


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "hybridc", "gradcheck", *args], capture_output=True, text=True, timeout=600
    )


@pytest.mark.slow
def test_output_option_progress_and_structural_zeros(tmp_path: Path) -> None:
    path = tmp_path / "dict_model.py"
    path.write_text(MODEL)
    png = tmp_path / "g.png"
    r = run(str(path), "--max-block-size", "3", "--output", "aux", "--plot", str(png))
    assert r.returncode == 0, r.stderr
    for phase in ("compile", "free phase", "EP", "ID", "BPTT"):
        assert f"] {phase} done in" in r.stderr, r.stderr
    assert "residual" in r.stderr and "adjoint residual" in r.stderr
    assert "on output aux" in r.stdout and "zero" in r.stdout
    assert "structurally zero left out" in r.stdout
    assert png.stat().st_size > 10_000

    r = run(str(path), "--max-block-size", "3", "--output", "logits", "--format", "json", "--quiet")
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""
    data = json.loads(r.stdout)
    assert data["output"] == "logits"
    rows = {p["name"]: p for p in data["params"]}
    assert rows["aux.weight"]["structural_zero"] and not rows["body.0.weight"]["structural_zero"]
    assert all(
        p["cos_ep_id"] >= 0.9999 and p["relerr_ep_id"] <= 1e-5
        for p in data["params"]
        if not p["structural_zero"]
    )


def test_unknown_output_is_one_error_line(tmp_path: Path) -> None:
    path = tmp_path / "dict_model.py"
    path.write_text(MODEL)
    r = run(str(path), "--max-block-size", "3", "--output", "logit", "--quiet")
    assert r.returncode == 2
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "logits" in lines[0], r.stderr


def test_bptt_steps_zero_skips_the_bptt_reference(tmp_path: Path) -> None:
    """BPTT's memory grows with the steps it unrolls (a float64 check to 1e-13 can need tens of GB):
    `--bptt-steps 0` leaves it out and changes nothing else."""
    from hybridc.gradcheck import gradcheck
    from hybridc.load import load_model

    path = tmp_path / "dict_model.py"
    path.write_text(MODEL)
    lm = load_model(str(path))
    full = gradcheck(lm.model, lm.example_inputs, max_block_size=3, output="logits")
    skipped = gradcheck(lm.model, lm.example_inputs, max_block_size=3, output="logits", bptt_steps=0)
    assert skipped.bptt_steps == 0 and all(p.cos_id_bptt is None for p in skipped.params)
    assert all(p.cos_id_bptt is not None for p in full.params)
    for a, b in zip(full.params, skipped.params):
        assert (a.name, a.cos_ep_id, a.relerr_ep_id) == (b.name, b.cos_ep_id, b.relerr_ep_id)
    r = run(str(path), "--max-block-size", "3", "--output", "logits", "--bptt-steps", "0")
    assert r.returncode == 0, r.stderr
    assert "BPTT skipped" in r.stdout and "] BPTT done" not in r.stderr
    assert "] EP done in" in r.stderr
