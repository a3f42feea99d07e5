"""Progress of a gradient check on stderr, one phase at a time (compile, free phase, EP, ID, BPTT, autograd),
with each phase's residuals when it ends: `hybridc.progress.StepProgress` labelled "gradcheck", one step per
phase, the phases naming themselves (a gradient check of a large model spends minutes in a phase: off a
terminal a "still running" line follows after `every` seconds of silence)."""

from __future__ import annotations

from typing import TextIO

from hybridc.progress import StepProgress

PHASES = ("compile", "free phase", "EP", "ID", "BPTT", "autograd")


class PhaseProgress(StepProgress):
    """`start(phase)` / `done(phase, detail)` from `hybridc.gradcheck.gradcheck`; `close()` at the end."""

    def __init__(
        self, phases: list[str], stream: TextIO | None = None, rich: bool | None = None, every: float = 15.0
    ):
        super().__init__("gradcheck", len(phases), stream, rich, every, numbered=False)
        self.phases = phases

    def done(self, phase: str, detail: str = "") -> None:  # type: ignore[override]
        """Phase `phase` (the one started last) ended, with `detail` (its residuals)."""
        super().done(detail)
