"""Progress lines of long commands (issue #14): `hybridc export` names every block on stderr as it is exported
(and `--quiet` silences it), `hybridc.progress.StepProgress` writes numbered start/end lines off a
terminal and a rich bar on one, and the benchmarks' `measuring` rows go to stderr, flushed."""

from __future__ import annotations

import importlib.util
import io
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hybridc.progress import StepProgress

ROOT = Path(__file__).resolve().parents[1]
TINY = ["mlp", "--model-kwargs", '{"sizes": [784, 16, 16, 10]}', "-n", "2"]


def test_export_stderr_names_each_block(tmp_path: Path) -> None:
    out = tmp_path / "out"
    r = subprocess.run(
        [sys.executable, "-m", "hybridc", "export", *TINY, "-o", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    blocks = [b["name"] for b in json.loads((out / "manifest.json").read_text())["blocks"]]
    assert len(blocks) == 4
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("export [")]
    assert len(lines) == 2 * (3 + len(blocks)), r.stderr  # a start and an end line per step, nothing else
    total = 1 + 1 + len(blocks) + 1  # load/compile, samples, blocks, check
    for i, name in enumerate(blocks, start=3):
        kind = "analog" if name.startswith("analog") else "digital"
        tag = f"[{i}/{total}] block {name} ({kind})"
        assert any(ln.endswith(f"{tag} ...") for ln in lines), (tag, lines)
        done = [ln for ln in lines if f"{tag} done in " in ln]
        assert len(done) == 1 and f"blocks/{name}." in done[0], (tag, lines)
    order = [next(j for j, ln in enumerate(lines) if f"block {name} (" in ln) for name in blocks]
    assert order == sorted(order)  # in the order they are exported
    assert any(
        f"[{total}/{total}] check in onnxruntime done in " in ln and ln.endswith(": ok") for ln in lines
    )
    assert "export [" not in r.stdout and "wrote" in r.stdout  # progress on stderr only


def test_export_quiet_prints_no_progress(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from hybridc.cli import app

    r = CliRunner().invoke(app, ["export", *TINY, "--no-check", "-q", "-o", str(tmp_path / "out")])
    assert r.exit_code == 0, r.output
    assert "export [" not in r.stderr and "wrote" in r.stdout


def test_step_progress_plain_lines_and_still_running() -> None:
    buf = io.StringIO()
    p = StepProgress("export", None, stream=buf, rich=False, every=0.3)
    p.start("load x")
    p.done("2 blocks")
    p.set_total(3)
    p.start("block a")
    time.sleep(0.75)  # a long step: a "still running" line
    p.done("blocks/a.onnx (1 kB)")
    p.start("check")
    p.done()
    p.close()
    text = [re.sub(r"^export \[ *[\d.]+ s\] ", "", ln) for ln in buf.getvalue().splitlines()]
    assert text[:2] == ["[1/?] load x ...", "[1/?] load x done in 0.0 s: 2 blocks"]
    assert text[2] == "[2/3] block a ..."
    running = [t for t in text if "still running" in t]
    assert running and all(t.startswith("[2/3] block a: still running") for t in running), text
    assert any(t.startswith("[2/3] block a done in 0.") and t.endswith("blocks/a.onnx (1 kB)") for t in text)
    assert text[-2:] == ["[3/3] check ...", "[3/3] check done in 0.0 s"]


def test_step_progress_rich_bar_prints_results() -> None:
    buf = io.StringIO()
    p = StepProgress("report", 2, stream=buf, rich=True)
    p.start("partition")
    p.done("12 blocks")
    p.start("compile")
    p.done()
    p.close()
    out = buf.getvalue()
    assert (
        "report: [1/2] partition done in" in out
        and "12 blocks" in out
        and "report: [2/2] compile done" in out
    )


@pytest.mark.parametrize("script", ["step_cost.py", "adjoint_solve.py"])
def test_benchmark_rows_announced_on_stderr(script: str, capsys: pytest.CaptureFixture) -> None:
    spec = importlib.util.spec_from_file_location(f"bench_{script[:-3]}", ROOT / "benchmarks" / script)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    with mod.measuring("mlp: block size 2, ep"):
        pass
    cap = capsys.readouterr()
    lines = cap.err.splitlines()
    assert cap.out == "" and len(lines) == 2
    assert lines[0].endswith("] mlp: block size 2, ep ...") and "] mlp: block size 2, ep done in " in lines[1]
