"""Every user mistake at every layer ends in one `error:` line and exit status 2: the command line itself
(typer/click: unknown option, bad value, missing argument; no boxed panel, no pydantic "Value error,"),
settings that fail validation (pydantic), --model-kwargs, and under torchrun (the failing process's line,
also handed to torchrun's failure summary; its peers say that another process failed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hybridc.cli import main, print_error, user_error, validation_message


def _run_main(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str]]:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    captured = capsys.readouterr()
    return exc.value.code, [ln for ln in captured.err.splitlines() if ln.strip()]


@pytest.mark.parametrize(
    ("argv", "needles"),
    [
        (["train", "--epochs", "abc"], ["'--epochs'", "integer"]),
        (["partition", "mlp", "--norm", "sometimes"], ["'--norm'", "'split', 'entry', 'synapse', 'drop'"]),
        (["partition"], ["missing argument", "hybridc partition --help"]),
        (["partiton", "mlp"], ["no such command", "partiton"]),
        (["partition", "mlp", "--bogus"], ["no such option", "--bogus"]),
        (["gradcheck", "mlp", "--init", "random"], ["'--init'", "'keep', 'goe'"]),
        (["export", "mlp"], ["missing option", "--output"]),
        (["partition", "mlp", "-f", "png"], ["-o blocks.png"]),
        (["partition", "mlp", "--model-kwargs", "[1]"], ["--model-kwargs", "JSON object"]),
        (["report", "mlp", "--model-kwargs", '{"widht": 2}'], ["widht"]),
    ],
)
def test_usage_mistakes_are_one_error_line(
    argv: list[str], needles: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    code, lines = _run_main(argv, capsys)
    assert code == 2, lines
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    assert "Value error" not in lines[0] and "╭" not in lines[0] and "Traceback" not in lines[0]
    for n in needles:
        assert n in lines[0], (n, lines[0])


def test_model_kwargs_only_for_zoo_models(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "net.py"
    src.write_text("import torch.nn as nn\nINPUT_SHAPE = (4,)\ndef model():\n    return nn.Linear(4, 2)\n")
    code, lines = _run_main(["partition", str(src), "--model-kwargs", '{"width": 2}'], capsys)
    assert code == 2 and len(lines) == 1 and "applies to zoo models" in lines[0], lines


def test_analog_key_typo_names_the_key_and_the_valid_keys(capsys: pytest.CaptureFixture[str]) -> None:
    code, lines = _run_main(["train", "--analog", '{"weight_level": 8}', "--epochs", "1"], capsys)
    assert code == 2 and lines[0].startswith("error: "), lines
    text = " ".join(lines)
    assert "weight_level" in text and "weight_levels" in text and "read_noise" in text
    assert "Traceback" not in text


def test_validation_error_is_one_line() -> None:
    """A pydantic ValidationError reaching `main` (settings validated outside a config loader) is a user
    error: one line naming each bad field, an unknown key with the model's valid keys."""
    from pydantic import ValidationError

    from hybridc.plan import AnalogSpec

    with pytest.raises(ValidationError) as exc:
        AnalogSpec(weight_level=8, read_noise=-1)
    message = user_error(exc.value)
    assert message == validation_message(exc.value)
    assert "\n" not in message and "weight_level: unknown key (valid keys: program_noise" in message
    assert "read_noise: Input should be greater than or equal to 0" in message


def test_torchrun_error_line_reaches_torchruns_summary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    error_file = tmp_path / "error.json"
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("TORCHELASTIC_ERROR_FILE", str(error_file))
    print_error("no such dataset")
    err = capsys.readouterr().err
    assert err.startswith("error: no such dataset") and "rank 1 of 2" in err
    assert json.loads(error_file.read_text())["message"] == "error: no such dataset"
    peer = RuntimeError("[gloo/transport/tcp/pair.cc:553] Connection closed by peer [127.0.0.1]:12718")
    assert "another torchrun process" in user_error(peer)
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert user_error(peer) is None  # outside a multi-process run it is not ours to explain


@pytest.mark.slow
def test_torchrun_data_error(tmp_path: Path) -> None:
    """A real two-process run with a missing dataset: each process prints one `error:` line (no Python
    traceback from ours), and torchrun's summary shows the failing process's line as its root cause."""
    env = {**os.environ, "HYBRIDC_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "-m",
            "hybridc",
            "train",
            "--data",
            "cifar10",
            "--data-dir",
            str(tmp_path),
            "--epochs",
            "1",
            "--out",
            str(tmp_path / "run"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        cwd=tmp_path,
    )
    assert r.returncode != 0
    assert "[rank0]: Traceback" not in r.stderr and "[rank1]: Traceback" not in r.stderr, r.stderr
    assert r.stderr.count("error: CIFAR-10") >= 2, r.stderr  # the process's own line, and torchrun's summary
    assert "traceback : error: " in r.stderr


@pytest.mark.parametrize("command", ["partition", "gradcheck", "report", "export", "train"])
def test_model_kwargs_not_json_is_one_error_line(
    command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [command] + (["mlp"] if command != "train" else []) + ["--model-kwargs", "{width: 2}"]
    argv += ["-o", str(tmp_path / "x")] if command == "export" else []
    code, lines = _run_main(argv, capsys)
    assert code == 2 and len(lines) == 1, lines
    assert lines[0].startswith("error: --model-kwargs must be a JSON object, e.g. '{\"width\": 0.25}'"), lines


def test_run_script_gives_benchmarks_the_same_error_line(capsys: pytest.CaptureFixture[str]) -> None:
    """`hybridc.cli.run_script(main)` for benchmark scripts: a missing dataset is one `error:` line, exit 2;
    the script's own exit status passes through; a bug keeps its traceback."""
    from hybridc.cli import run_script
    from hybridc.errors import DataError

    def missing() -> int:
        raise DataError("Fashion-MNIST not found in /nowhere (install dataset-fashion-mnist)")

    with pytest.raises(SystemExit) as exc:
        run_script(missing)
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert exc.value.code == 2 and lines == [
        "error: Fashion-MNIST not found in /nowhere (install dataset-fashion-mnist)"
    ]
    with pytest.raises(SystemExit) as exc:
        run_script(lambda: 3)
    assert exc.value.code == 3

    def bug() -> None:
        raise ValueError("a bug")

    with pytest.raises(ValueError, match="a bug"):
        run_script(bug)
