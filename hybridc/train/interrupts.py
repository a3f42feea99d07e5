"""Stopping a run cleanly: Ctrl-C and SIGTERM become a request the trainer honours at the next batch
boundary, so the checkpoint it then writes is consistent."""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any


class StopFlag:
    """Ctrl-C (SIGINT) and SIGTERM request a stop at the next batch boundary instead of killing the step:
    the trainer then saves a consistent checkpoint. A second Ctrl-C raises KeyboardInterrupt at once, unless
    it follows the first within `debounce_s` (torchrun forwards the terminal's SIGINT to workers that already
    received it from the terminal: that is one Ctrl-C, not two)."""

    def __init__(self, debounce_s: float = 2.0) -> None:
        self.requested = False
        self.debounce_s = debounce_s
        self._first = 0.0
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, _frame: Any) -> None:
        now = time.monotonic()
        if self.requested and signum == signal.SIGINT and now - self._first > self.debounce_s:
            raise KeyboardInterrupt
        if not self.requested:
            self.requested, self._first = True, now

    @contextlib.contextmanager
    def installed(self) -> Iterator[StopFlag]:
        if threading.current_thread() is not threading.main_thread():
            yield self  # signal handlers can only be set from the main thread; KeyboardInterrupt still works
            return
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)
        try:
            yield self
        finally:
            for sig, prev in self._previous.items():
                signal.signal(sig, prev)
