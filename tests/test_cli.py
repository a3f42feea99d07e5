"""The command line, run as users run it: output formats, and one clear message for every bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from hybridc.plan import Plan

FIXTURES = Path(__file__).parent / "fixtures"


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "hybridc", *args], capture_output=True, text=True, cwd=cwd, timeout=600
    )


def test_partition_table_json_dot(tmp_path: Path) -> None:
    r = run("partition", "mlp", "--max-block-size", "2")
    assert r.returncode == 0, r.stderr
    assert "analog1" in r.stdout and "decisions" in r.stdout and "net.1" in r.stdout
    r = run("partition", "mlp", "-n", "2", "--format", "json")
    assert r.returncode == 0, r.stderr
    plan = Plan.from_json(r.stdout)
    assert plan.config.max_block_size == 2
    out = tmp_path / "g.dot"
    r = run("partition", "mlp", "-n", "2", "--format", "dot", "-o", str(out))
    assert r.returncode == 0, r.stderr
    dot = out.read_text()
    assert dot.startswith("digraph") and "#f6b26b" in dot and "#9fc5e8" in dot


def test_partition_model_file_with_factory(tmp_path: Path) -> None:
    src = tmp_path / "net.py"
    src.write_text(
        "import torch.nn as nn\n"
        "INPUT_SHAPE = (12,)\n"
        "def build():\n"
        "    return nn.Sequential(nn.Linear(12, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 3))\n"
        "def other():\n"
        "    return nn.Sequential(nn.Linear(12, 3))\n"
    )
    r = run("partition", str(src), "-n", "3", "-f", "json")
    assert r.returncode == 0, r.stderr
    assert [len(b.weight_layers) for b in Plan.from_json(r.stdout).analog_blocks] == [3]
    r = run("partition", f"{src}:other", "-f", "json")
    assert r.returncode == 0, r.stderr
    assert [len(b.weight_layers) for b in Plan.from_json(r.stdout).analog_blocks] == [1]


def test_zoo_file_by_path() -> None:
    import hybridc.models as zoo

    path = Path(zoo.__file__).parent / "resnet.py"
    r = run("partition", str(path), "--max-block-size", "4", "-f", "json")
    assert r.returncode == 0, r.stderr
    assert max(len(b.weight_layers) for b in Plan.from_json(r.stdout).analog_blocks) == 4


def _one_clear_error(r: subprocess.CompletedProcess, *needles: str) -> None:
    assert r.returncode != 0
    assert "Traceback" not in r.stderr, r.stderr
    text = r.stderr + r.stdout
    for n in needles:
        assert n in text, text


@pytest.mark.parametrize("n", ["0", "-2"])
def test_bad_block_size(n: str) -> None:
    _one_clear_error(run("partition", "mlp", "--max-block-size", n), "max_block_size")


def test_bad_inputs(tmp_path: Path) -> None:
    _one_clear_error(run("partition", "nosuchmodel"), "neither a zoo model", "resnet18")
    _one_clear_error(run("partition", str(tmp_path / "missing.py")), "missing.py")
    empty = tmp_path / "empty.py"
    empty.write_text("x = 1\n")
    _one_clear_error(run("partition", str(empty), "--input-shape", "4"), "Add a `def model()")
    two = tmp_path / "two.py"
    two.write_text(
        "import torch.nn as nn\nclass A(nn.Linear):\n    def __init__(self):\n"
        "        super().__init__(2, 2)\nclass B(A):\n    pass\n"
    )
    _one_clear_error(run("partition", str(two), "--input-shape", "2"), "A, B")
    _one_clear_error(run("partition", "mlp", "--input-shape", "3,x"), "--input-shape")
    _one_clear_error(run("partition", "mlp", "--norm", "sometimes"), "sometimes")
    _one_clear_error(
        run("partition", f"{FIXTURES / 'unseen_models.py'}:DataDependent", "--input-shape", "8"),
        "cannot capture the graph",
        "x.sum() > 0",
    )
    _one_clear_error(run("partition", "mlp", "--input-shape", "3,32,32"), "does not run on the example input")


def test_gradcheck_json() -> None:
    r = run(
        "gradcheck",
        str(FIXTURES / "small_mlp.py"),
        "--max-block-size",
        "1",
        "--activation",
        "keep",
        "--format",
        "json",
        "--batch",
        "2",
    )
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["forward_max_abs_diff"] is not None and data["forward_max_abs_diff"] <= 1e-10
    assert {"name", "cos_ep_id", "relerr_ep_id", "cos_id_bptt", "cos_ep_autograd"} <= set(data["params"][0])
    assert all(p["cos_ep_autograd"] >= 0.9999 for p in data["params"])


def test_gradcheck_table_and_plot(tmp_path: Path) -> None:
    png = tmp_path / "g.png"
    r = run(
        "gradcheck",
        str(FIXTURES / "small_mlp.py"),
        "--max-block-size",
        "2",
        "--batch",
        "2",
        "--plot",
        str(png),
    )
    assert r.returncode == 0, r.stderr
    assert "cos EP·ID" in r.stdout and "n/a (multi-layer blocks)" in r.stdout
    assert png.stat().st_size > 1000
