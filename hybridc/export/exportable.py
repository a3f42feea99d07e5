"""What an export accepts, checked before any work is done: the settings (ONNX opset, reference batch,
tolerance) and the model (analog blocks whose relaxation can be exported, no simulated device effects); and,
once the files are written, that every ONNX file is in the opset the manifest records (onnx writes a newer
request as its own newest opset without a word, see `max_opset`).

Kept apart from the export driver (`hybridc.export.exporter`) so that `hybridc export` can validate its
options before compiling, and `hybridc verify` can run the opset check, without importing the driver.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

from hybridc.errors import UnsupportedOpError
from hybridc.export.manifest import ExportError

if TYPE_CHECKING:
    from torch import nn

    from hybridc.runtime.ffebm import FFEBM

#: most reference samples stored (they are run through every file by verify)
MAX_SAMPLE_BATCH = 4096


def max_opset() -> int:
    """The newest ONNX opset the exporter writes as asked (newer requests come out as 18, silently)."""
    import onnx

    return int(onnx.defs.onnx_opset_version())


def validate_export_settings(opset: int, batch: int, tol: float) -> None:
    """ExportError for an opset outside [17, max_opset()], a batch outside [1, MAX_SAMPLE_BATCH], or a
    tolerance that is not a finite positive number: checked before any work."""
    top = max_opset()
    if not 17 <= opset <= top:
        raise ExportError(f"--opset {opset} is not supported: hybridc exports opsets 17 to {top}")
    if not 1 <= batch <= MAX_SAMPLE_BATCH:
        raise ExportError(
            f"--batch {batch} is out of range: the reference batch holds 1 to {MAX_SAMPLE_BATCH} samples"
        )
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not math.isfinite(tol) or tol <= 0:
        raise ExportError(f"--tol must be a finite number > 0 (a max abs error, e.g. 1e-4), not {tol!r}")


def _device_effects(block: nn.Module) -> str:
    """The device non-idealities an analog block simulates ('' when ideal): random draws (programming and
    read noise) and per-batch quantisation have no faithful deterministic ONNX equivalent here."""
    from torch.nn.utils import parametrize

    spec = getattr(block, "analog", None)
    found = []
    if spec is not None and getattr(spec, "any", False):
        found = [k for k, v in spec.model_dump().items() if v not in (None, 0, 0.0)]
    if any(parametrize.is_parametrized(m) for m in block.modules()) and not found:
        found = ["parametrized weights"]
    return ", ".join(found)


def check_exportable(ff: FFEBM) -> None:
    """UnsupportedOpError for the first block that cannot be exported: an analog block of a kind whose
    relaxation has no export (its `export_unsupported_reason`), or a block simulating device effects (export
    writes the nominal deterministic model only)."""
    analog = ff.analog_blocks
    for name, block in ff.blocks.items():
        reason = analog[name].export_unsupported_reason() if name in analog else None
        if reason is not None:
            raise UnsupportedOpError(
                f"analog block {name} is a {block.kind} block ({type(block).__name__}); {reason}"
            )
        effects = _device_effects(block)
        if effects:
            raise UnsupportedOpError(
                f"analog block {name} simulates device effects ({effects}); export writes the nominal "
                "deterministic model only: compile from a plan without device effects (plan `analog` settings "
                "off) to export it"
            )


def check_onnx_opsets(directory: Path, files: list[str], opset: int) -> None:
    """Every ONNX file's default-domain opset is `opset` (what the manifest claims), else ExportError."""
    import onnx

    for rel in files:
        model = onnx.load(str(directory / rel), load_external_data=False)
        got = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
        if got != opset:
            raise ExportError(
                f"{rel} is written in ONNX opset {got}, not the opset {opset} the manifest records"
            )


__all__ = [
    "MAX_SAMPLE_BATCH",
    "check_exportable",
    "check_onnx_opsets",
    "max_opset",
    "validate_export_settings",
]
