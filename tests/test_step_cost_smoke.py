"""benchmarks/step_cost.py --quick: every requested row comes out with the documented keys and sane values, EP's
saved-for-backward memory stays flat in T while BPTT's grows with its unrolled steps, and bad options are
refused. In-process (tiny models, one timed step per row); the reference comparison is not run here."""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.filterwarnings("ignore")


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_step_cost", ROOT / "benchmarks" / "step_cost.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(autouse=True)
def _keep_threads() -> Iterator[None]:
    """The script sets torch's thread count (--threads, default 1): give the rest of the session its own back."""
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def _run(bench: ModuleType, capsys: pytest.CaptureFixture, *argv: str) -> dict[str, Any]:
    bench.main(["--quick", "--json", *argv])
    return json.loads(capsys.readouterr().out)


def test_quick_rows_have_the_documented_keys(bench: ModuleType, capsys: pytest.CaptureFixture) -> None:
    out = _run(bench, capsys)
    assert out["settings"]["threads"] == 1 and out["reference"] == [] and out["profile"] == []
    rows = out["rows"]
    assert all(set(r) == set(bench.ROW_KEYS) for r in rows)
    for model in ("vgg-paper (width 0.03125)", "mlp 784-64-64-10"):
        algs = [r["algorithm"] for r in rows if r["model"] == model]
        assert sorted(algs) == sorted(bench.ALGORITHMS), (model, algs)
    vgg_ep = next(r for r in rows if r["model"].startswith("vgg") and r["algorithm"] == "ep-async")
    assert vgg_ep["blocks"] == "3+3"  # the paper's splitting_small_2block
    for r in rows:
        assert r["batch"] == 4 and r["s_per_step"] > 0 and r["saved_mb"] >= 0 and r["peak_mb"] >= 0
        assert r["peak_kind"] in ("cpu_malloc_peak", "cpu_rss_growth")
        if r["algorithm"] == "bp":
            assert r["ratio_bp"] == 1.0 and r["t1"] is None
        else:
            assert (r["t1"], r["t2"]) == (3, 2)
            assert r["ratio_bp"] > 0
        if r["algorithm"].startswith("ep"):
            assert r["ideal_ratio"] == pytest.approx((3 + 2 * 2) * 2 / 3)
        else:
            assert r["ideal_ratio"] is None


def test_ep_memory_flat_in_t_bptt_linear(bench: ModuleType, capsys: pytest.CaptureFixture) -> None:
    out = _run(
        bench,
        capsys,
        "--models",
        "mlp",
        "--algorithms",
        "ep-sync,bptt",
        "--schedule",
        "3/2,3/8",
        "--batch",
        "8",
    )
    saved = {(r["algorithm"], r["t2"]): r["saved_mb"] for r in out["rows"]}
    assert set(saved) == {("ep-sync", 2), ("ep-sync", 8), ("bptt", 2), ("bptt", 8)}
    assert saved["ep-sync", 8] == pytest.approx(saved["ep-sync", 2], rel=0.05)
    assert saved["bptt", 8] > 1.5 * saved["bptt", 2]


@pytest.mark.parametrize(
    "argv,match",
    [
        (["--algorithms", "ep,bp"], "unknown"),
        (["--models", "resnet"], "unknown"),
        (["--schedule", "20-5"], "expected T1/T2"),
    ],
)
def test_bad_options_refused(
    bench: ModuleType, argv: list[str], match: str, capsys: pytest.CaptureFixture
) -> None:
    with pytest.raises(SystemExit):
        bench.parse_args(argv)
    assert match in capsys.readouterr().err


def test_option_lists_parse(bench: ModuleType) -> None:
    args = bench.parse_args(["--batch", "16,64", "--schedule", "20/5,60/20", "--algorithms", "ep-async,bp"])
    assert (
        args.batch == [16, 64]
        and args.schedule == [(20, 5), (60, 20)]
        and args.algorithms == ["ep-async", "bp"]
    )
    full = bench.parse_args([])
    assert full.batch == [16, 64, 128] and full.schedule == [(20, 5), (60, 20)] and full.threads == 1
