"""`hybridc gradcheck`'s progress (hybridc.gradcheck_progress.PhaseProgress): plain lines off a terminal, one
per phase start and end plus a "still running" line only after `every` seconds without output (a phase that
has just started prints none), and a rich bar with the phases' results on a terminal."""

from __future__ import annotations

import io
import time

from hybridc.gradcheck_progress import PHASES, PhaseProgress


def test_plain_lines_start_done_and_still_running() -> None:
    buf = io.StringIO()
    p = PhaseProgress(list(PHASES), stream=buf, rich=False, every=0.3)
    p.start("compile")
    p.done("compile", "3 analog blocks")
    p.start("free phase")
    time.sleep(0.75)  # a long phase: at least one "still running" line
    p.done("free phase", "residual analog0 1e-14")
    p.start("EP")
    p.done("EP")
    p.close()
    lines = buf.getvalue().splitlines()
    assert all(ln.startswith("gradcheck [") for ln in lines), lines
    text = [ln.split("] ", 1)[1] for ln in lines]
    assert text[:2] == ["compile ...", "compile done in 0.0 s: 3 analog blocks"]
    running = [t for t in text if "still running" in t]
    assert running and all(t.startswith("free phase: still running") for t in running), text
    assert 1 <= len(running) <= 3
    assert any(t.startswith("free phase done in 0.") and t.endswith("residual analog0 1e-14") for t in text)
    assert text[-2:] == ["EP ...", "EP done in 0.0 s"]


def test_short_phases_print_no_still_running_line() -> None:
    """The ticker used to fire on a fixed clock: a phase started just before a tick printed "still running
    (0 s)". Now only silence of `every` seconds triggers a line."""
    buf = io.StringIO()
    p = PhaseProgress(list(PHASES), stream=buf, rich=False, every=1.0)
    for phase in PHASES:
        p.start(phase)
        time.sleep(0.1)
        p.done(phase)
    p.close()
    assert "still running" not in buf.getvalue()
    assert buf.getvalue().count(" done in ") == len(PHASES)


def test_rich_bar_prints_each_phase_result() -> None:
    buf = io.StringIO()
    p = PhaseProgress(["compile", "EP"], stream=buf, rich=True)
    p.start("compile")
    p.done("compile", "2 analog blocks")
    p.start("EP")
    p.done("EP")
    p.close()
    out = buf.getvalue()
    assert "gradcheck: compile done in" in out and "2 analog blocks" in out and "gradcheck: EP done in" in out
