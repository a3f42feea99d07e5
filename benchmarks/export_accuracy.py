"""Does the exported model classify like the trained one? Test accuracy of a training run's model in torch and
of its `hybridc export --full` ONNX file in onnxruntime, on the run's real test set, with their agreement.

`hybridc verify` compares the two on the samples stored at export time; this script is the end-to-end check
on data a user cares about (the relaxations are unrolled in the ONNX graph with the run's T1).

    python benchmarks/export_accuracy.py RUN_DIR [--export-dir DIR] [--test-subset N]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def main(argv: list[str] | None = None) -> int:
    import onnxruntime as ort
    from rich.console import Console
    from rich.table import Table

    from hybridc.data import load_dataset
    from hybridc.export.exporter import export_ffebm
    from hybridc.export.run_dir import load_run

    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("run_dir", type=Path)
    p.add_argument(
        "--export-dir", type=Path, default=None, help="where to export (default: a temporary folder)"
    )
    p.add_argument("--test-subset", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)

    cfg = json.loads((args.run_dir / "config.json").read_text())
    run = load_run(args.run_dir)
    test = load_dataset(cfg["data"], cfg.get("data_dir"), "test", download=False)
    if args.test_subset:
        test.x, test.y = test.x[: args.test_subset], test.y[: args.test_subset]
    batches = list(test.loader(args.batch_size, shuffle=False, device="cpu"))  # normalised as in training

    with tempfile.TemporaryDirectory() as tmp:
        out = args.export_dir or Path(tmp) / "export"
        t0 = time.perf_counter()
        res = export_ffebm(
            run.ff, out, full=True, source=run.source, force=True, progress=True
        )  # a line per block
        export_s = time.perf_counter() - t0
        if not res.published:  # beyond the check's tolerance: measured anyway, from where it was kept aside
            print(
                f"note: the export's check failed ({', '.join(r.name for r in res.report.failures)}); "
                f"measuring the copy kept in {res.kept}"
            )
            out = res.kept
        sess = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name
        torch_pred, onnx_pred, max_diff = [], [], 0.0
        t_torch = t_onnx = 0.0
        print(f"measuring torch vs onnxruntime on {len(test.y)} test images", file=sys.stderr, flush=True)
        for xb, _ in batches:
            t0 = time.perf_counter()
            with torch.no_grad():
                lt = run.ff(xb).numpy()
            t_torch += time.perf_counter() - t0
            t0 = time.perf_counter()
            lo = sess.run(None, {name: xb.numpy()})[0]
            t_onnx += time.perf_counter() - t0
            max_diff = max(max_diff, float(np.abs(lo - lt).max()))
            torch_pred.append(lt.argmax(1))
            onnx_pred.append(lo.argmax(1))
    tp, op = np.concatenate(torch_pred), np.concatenate(onnx_pred)
    y = torch.cat([yb for _, yb in batches]).numpy()
    res = {
        "run_dir": str(args.run_dir),
        "samples": len(y),
        "torch_acc": float((tp == y).mean()),
        "onnx_acc": float((op == y).mean()),
        "prediction_agreement": float((tp == op).mean()),
        "max_abs_logit_diff": max_diff,
        "torch_s": t_torch,
        "onnxruntime_s": t_onnx,
        "export_s": export_s,
    }

    table = Table(
        title=f"{args.run_dir}: torch vs exported ONNX (onnxruntime, CPU) on {len(y):,} test samples",
        title_justify="left",
    )
    for col in (
        "torch acc",
        "onnx acc",
        "same prediction",
        "max |Δlogit|",
        "torch (s)",
        "onnxruntime (s)",
        "export (s)",
    ):
        table.add_column(col, justify="right")
    table.add_row(
        f"{100 * res['torch_acc']:.2f}%",
        f"{100 * res['onnx_acc']:.2f}%",
        f"{100 * res['prediction_agreement']:.2f}%",
        f"{max_diff:.2e}",
        f"{t_torch:.1f}",
        f"{t_onnx:.1f}",
        f"{export_s:.1f}",
    )
    Console().print(table)
    if args.json is not None:
        args.json.write_text(json.dumps(res, indent=2) + "\n")
    return 0 if res["prediction_agreement"] > 0.999 else 1


if __name__ == "__main__":
    from hybridc.cli import run_script

    run_script(main)
