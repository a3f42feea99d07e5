"""Export of compiled ff-EBMs: digital blocks to ONNX, analog blocks' weights and energy specifications,
a manifest of the hybrid graph, optionally the whole model as one ONNX file, and verification in
onnxruntime (`hybridc export`, `hybridc verify`).

    from hybridc.export import export_ffebm, verify_export
    result = export_ffebm(ff, "out", full=True)      # writes out/manifest.json, out/blocks/*.onnx, ...
    report = verify_export("out")                     # max abs error per block and end to end
"""

from __future__ import annotations

from hybridc.export.exporter import ExportResult, export_ffebm, export_model
from hybridc.export.manifest import ExportError, Manifest
from hybridc.export.run_dir import LoadedRun, load_run
from hybridc.export.verify import VerifyReport, verify_export

__all__ = [
    "ExportError",
    "ExportResult",
    "LoadedRun",
    "Manifest",
    "VerifyReport",
    "export_ffebm",
    "export_model",
    "load_run",
    "verify_export",
]
