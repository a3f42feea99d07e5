"""`hybridc eval RUN_DIR` and `hybridc train --input-size`: a tiny run trained through the command line (its
images resized 8x8 -> 6x6), then evaluated from the command line, as trained and under device effects; what
it prints is what `hybridc.evaluate.evaluate_run` measures; mistakes are one `error:` line, exit status 2."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from hybridc.cli import main
from hybridc.evaluate import evaluate_run

TRAIN = [
    "train",
    "--train-subset",
    "128",
    "--test-subset",
    "64",
    "--batch-size",
    "32",
    "--epochs",
    "1",
    "--t1",
    "6",
    "--t2",
    "2",
    "--model-kwargs",
    '{"sizes": [36, 32, 10]}',
    "--input-size",
    "6",
    "--no-progress",
]


def _main(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, list[str]]:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    captured = capsys.readouterr()
    return exc.value.code, captured.out, [ln for ln in captured.err.splitlines() if ln.strip()]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cli-eval") / "run"
    with pytest.raises(SystemExit) as exc:
        main([*TRAIN, "--out", str(out)])
    assert exc.value.code == 0
    return out


def test_train_input_size_is_used_and_recorded(run_dir: Path) -> None:
    cfg = json.loads((run_dir / "config.json").read_text())
    assert cfg["input_size"] == 6 and cfg["model_kwargs"]["sizes"] == [36, 32, 10]
    plan = json.loads((run_dir / "plan.json").read_text())
    assert plan["model"]["example_shapes"][0][1:] == [1, 6, 6]


def test_eval_prints_accuracy_and_residuals(run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _main(["eval", str(run_dir), "--subset", "100"], capsys)
    assert code == 0, err
    expected = evaluate_run(run_dir, subset=100, device="cpu")
    assert expected.residual, "the run has analog blocks: their residuals are reported"
    acc = re.search(r"accuracy\s*│\s*([\d.]+) %", out)
    assert acc is not None, out
    assert float(acc.group(1)) == pytest.approx(100 * expected.accuracy, abs=0.006)
    for block, value in expected.residual.items():
        row = re.search(rf"residual {block}\s*│\s*(\S+)", out)
        assert row is not None, (block, out)
        assert float(row.group(1)) == pytest.approx(value, rel=0.01)
    assert "digits test, 100 samples" in out and "as trained" in out


def test_eval_json_under_device_effects(run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _main(
        [
            "eval",
            str(run_dir),
            "--subset",
            "64",
            "--analog",
            '{"read_noise": 0.05}',
            "--seeds",
            "3",
            "--checkpoint",
            "best",
            "-f",
            "json",
        ],
        capsys,
    )
    assert code == 0, err
    result = json.loads(out)
    assert result["analog"] == {"read_noise": 0.05} and len(result["accuracies"]) == 3
    assert result["checkpoint"].endswith("best.pt") and result["samples"] == 64
    assert result["accuracy"] == pytest.approx(sum(result["accuracies"]) / 3)
    # solver warnings (if any) come once per block, as `warning:` lines, not Python's multi-line warnings
    assert all(ln.startswith("warning: ") for ln in err), err
    assert len(err) == len({ln.split(":", 2)[1] for ln in err})


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["eval", "{tmp}/missing"], "not a run directory"),
        (["eval", "{tmp}"], "no checkpoint"),
        (
            ["eval", "{run}", "--analog", '{"read_nois": 0.1}'],
            "read_nois: unknown key (valid keys: program_noise",
        ),
        (["eval", "{run}", "--analog", "[1]"], "--analog must be a JSON object"),
        (["eval", "{run}", "--data", "cifar10"], "does not fit the run's model"),
        (["eval", "{run}", "--checkpoint", "{tmp}/nope.pt"], "does not exist"),
        (["eval", "{run}", "--seeds", "0"], "'--seeds'"),
    ],
)
def test_eval_mistakes_are_one_error_line(
    argv: list[str], needle: str, run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = _main(
        [a.replace("{tmp}", str(tmp_path)).replace("{run}", str(run_dir)) for a in argv], capsys
    )
    assert code == 2 and out == ""
    assert len(err) == 1 and err[0].startswith("error: ") and needle in err[0], err
