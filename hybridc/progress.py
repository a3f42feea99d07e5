"""Step-by-step progress on stderr for long commands (`hybridc export`, one step per block; `hybridc report`
and `hybridc gradcheck`, one per phase; the benchmarks, one per measured row). On a terminal a rich bar (elapsed, ETA over the steps) with each step's result printed above it; on a
log file or CI plain lines, one when a step starts and one when it ends, plus a "still running" line whenever
a step has printed nothing for `every` seconds (so a minutes-long ONNX export of a big block is not silent).
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO


class StepProgress:
    """`start(step)` / `done(detail)` for each of `total` steps, `close()` at the end.

    Plain lines read `<label> [  12.3 s] [3/9] block digital2 (digital) ...` and
    `<label> [  14.0 s] [3/9] block digital2 (digital) done in 1.7 s`; `numbered=False` leaves out the
    `[3/9]` (phases or rows that name themselves)."""

    def __init__(
        self,
        label: str,
        total: int | None,
        stream: TextIO | None = None,
        rich: bool | None = None,
        every: float = 15.0,
        numbered: bool = True,
    ):
        self.label = label
        self.numbered = numbered
        self.total = None if total is None else max(int(total), 1)  # None: not known yet ("[1/?]")
        self.stream = stream or sys.stderr
        self.rich = bool(getattr(self.stream, "isatty", lambda: False)()) if rich is None else rich
        self.every = every
        self.t0 = time.perf_counter()
        self.index = 0
        self._step: str | None = None
        self._step_t0 = self.t0
        self._last_line = self.t0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None
        self._bar = None
        if self.rich:
            from rich.console import Console
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

            self._bar = Progress(
                TextColumn(f"{label}: {{task.description}}"),
                BarColumn(),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                console=Console(file=self.stream),
                transient=False,
            )
            self._task = self._bar.add_task("starting", total=self.total)  # None: an indeterminate bar
            self._bar.start()

    def set_total(self, total: int) -> None:
        """Change the number of steps (a caller that ran steps of its own before handing the progress on)."""
        self.total = max(int(total), self.index, 1)
        if self._bar is not None:
            self._bar.update(self._task, total=self.total)

    def _tag(self, step: str) -> str:
        return f"[{self.index}/{self.total or '?'}] {step}" if self.numbered else step

    def start(self, step: str) -> None:
        """A step begins: a plain line (or the bar's description) names it and its position."""
        self.index += 1
        self._step, self._step_t0 = step, time.perf_counter()
        if self._bar is not None:
            self._bar.update(self._task, description=self._tag(step))
            return
        self._line(f"{self._tag(step)} ...")
        if self._ticker is None:
            self._ticker = threading.Thread(target=self._tick, daemon=True)
            self._ticker.start()

    def done(self, detail: str = "") -> None:
        """The current step ended: its time and `detail` (a result worth seeing) on one line."""
        step = self._step or "?"
        took = time.perf_counter() - self._step_t0
        text = f"{self._tag(step)} done in {took:.1f} s" + (f": {detail}" if detail else "")
        self._step = None
        if self._bar is not None:
            self._bar.console.print(f"{self.label}: {text}", highlight=False, markup=False)
            self._bar.advance(self._task)
        else:
            self._line(text)

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        """`start(name)` ... `done()` around a block of work (a benchmark's measured row)."""
        self.start(name)
        yield
        self.done()

    def close(self) -> None:
        """Stop the ticker and the bar (call it in a `finally`)."""
        self._stop.set()
        if self._bar is not None:
            self._bar.update(self._task, description="done")
            self._bar.stop()

    def _tick(self) -> None:
        """Background thread (plain lines only): a line for the running step after `every` s of silence."""
        while not self._stop.wait(min(1.0, self.every)):
            step = self._step
            if step is not None and time.perf_counter() - self._last_line >= self.every:
                self._line(f"{self._tag(step)}: still running ({time.perf_counter() - self._step_t0:.0f} s)")

    def _line(self, text: str) -> None:
        with self._lock:
            self._last_line = time.perf_counter()
            self.stream.write(f"{self.label} [{self._last_line - self.t0:7.1f} s] {text}\n")
            self.stream.flush()


__all__ = ["StepProgress"]
