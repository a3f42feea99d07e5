"""Style is part of the suite (so CI, which runs the README's test command, checks it): the code is ruff
clean and in ruff's format. A failure prints what to run."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PATHS = ["hybridc", "tests", "benchmarks"]


def _ruff(*args: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("ruff")
    cmd = [exe] if exe else [sys.executable, "-m", "ruff"]
    return subprocess.run([*cmd, *args, *PATHS], cwd=ROOT, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module", autouse=True)
def _has_ruff() -> None:
    if (
        shutil.which("ruff") is None
        and subprocess.run([sys.executable, "-m", "ruff", "--version"], capture_output=True).returncode != 0
    ):
        pytest.skip("ruff is not installed (it comes with the test extra: pip install -e '.[test]')")


def test_ruff_check() -> None:
    r = _ruff("check", "--output-format", "concise")
    assert r.returncode == 0, (
        f"ruff check found problems (fix: ruff check --fix {' '.join(PATHS)}):\n{r.stdout}"
    )


def test_ruff_format() -> None:
    r = _ruff("format", "--check")
    assert r.returncode == 0, f"files not in ruff's format (fix: ruff format {' '.join(PATHS)}):\n{r.stdout}"


def test_smoke_subset_names_existing_files() -> None:
    """`pytest -m smoke` selects by file name: a renamed or deleted file would silently drop its stage."""
    from tests.conftest import SMOKE_FILES

    here = Path(__file__).parent
    assert sorted(n for n in SMOKE_FILES if not (here / n).is_file()) == []
