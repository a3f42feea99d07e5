"""Progress of a gradient check on stderr, one phase at a time (compile, free phase, EP, ID, BPTT, autograd),
with each phase's residuals when it ends: a rich progress bar (elapsed, ETA over the phases) on a terminal;
on a log file or CI, plain lines: one per phase start and end, and a "still running" line whenever a phase
has printed nothing for `every` seconds (a gradient check of a large model spends minutes in a phase; a
phase shorter than that prints only its start and end)."""

from __future__ import annotations

import sys
import threading
import time
from typing import TextIO

PHASES = ("compile", "free phase", "EP", "ID", "BPTT", "autograd")


class PhaseProgress:
    """`start(phase)` / `done(phase, detail)` from `hybridc.gradcheck.gradcheck`; `close()` at the end."""

    def __init__(self, phases: list[str], stream: TextIO | None = None, rich: bool | None = None,
                 every: float = 15.0):
        self.stream = stream or sys.stderr
        self.phases = phases
        self.rich = self.stream.isatty() if rich is None else rich
        self.every = every
        self.t0 = time.perf_counter()
        self._phase: str | None = None
        self._phase_t0 = self.t0
        self._last_line = self.t0
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None
        self._bar = None
        if self.rich:
            from rich.console import Console
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

            self._bar = Progress(TextColumn("gradcheck: {task.description}"), BarColumn(), TimeElapsedColumn(),
                                 TextColumn("ETA"), TimeRemainingColumn(),
                                 console=Console(file=self.stream), transient=False)
            self._task = self._bar.add_task("starting", total=len(phases))
            self._bar.start()

    def start(self, phase: str) -> None:
        self._phase, self._phase_t0 = phase, time.perf_counter()
        if self._bar is not None:
            self._bar.update(self._task, description=phase)
            return
        self._line(f"{phase} ...")
        if self._ticker is None:
            self._ticker = threading.Thread(target=self._tick, daemon=True)
            self._ticker.start()

    def done(self, phase: str, detail: str = "") -> None:
        took = time.perf_counter() - self._phase_t0
        text = f"{phase} done in {took:.1f} s" + (f": {detail}" if detail else "")
        self._phase = None
        if self._bar is not None:
            self._bar.console.print(f"gradcheck: {text}", highlight=False)
            self._bar.advance(self._task)
        else:
            self._line(text)

    def close(self) -> None:
        self._stop.set()
        if self._bar is not None:
            self._bar.update(self._task, description="done")
            self._bar.stop()

    def _tick(self) -> None:
        """Background thread (plain lines only): wakes every second at most, and writes a line for the running
        phase once nothing was written for `every` seconds."""
        while not self._stop.wait(min(1.0, self.every)):
            phase = self._phase
            if phase is not None and time.perf_counter() - self._last_line >= self.every:
                self._line(f"{phase}: still running ({time.perf_counter() - self._phase_t0:.0f} s)")

    def _line(self, text: str) -> None:
        self._last_line = time.perf_counter()
        self.stream.write(f"gradcheck [{self._last_line - self.t0:6.1f} s] {text}\n")
        self.stream.flush()
