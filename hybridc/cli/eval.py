"""`hybridc eval RUN_DIR`: measure a trained run (accuracy, loss, each analog block's equilibrium residual),
optionally on another dataset of the same shape and under simulated device effects.

A thin command over `hybridc.evaluate.evaluate_run` (the Python API does the same): the run's model is
rebuilt from its directory with its input transform (`hybridc.load_run`), so the dataset's raw images go in.
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path
from typing import Annotated, Literal

import typer
from rich.markup import escape

from hybridc.cli.app import Command, app
from hybridc.cli.flags import parse_json_object, shown


@app.command("eval", cls=Command)
def eval_command(
    run_dir: Annotated[
        Path, typer.Argument(metavar="RUN_DIR", help="a training run directory (hybridc train --out RUN_DIR)")
    ],
    data: Annotated[
        str | None,
        typer.Option(
            "--data",
            help="dataset to evaluate on: one whose images have the "
            "run's shape and classes (e.g. mnist for a fashion-mnist run)" + shown("the run's dataset"),
        ),
    ] = None,
    data_dir: Annotated[
        Path | None,
        typer.Option(
            "--data-dir", help="directory with the dataset files" + shown("the run's, or standard places")
        ),
    ] = None,
    split: Annotated[Literal["test", "train"], typer.Option("--split", help="dataset split")] = "test",
    analog: Annotated[
        str | None,
        typer.Option(
            "--analog",
            help="device effects to evaluate under, as JSON (AnalogSpec fields), e.g. "
            "'{\"read_noise\": 0.02, \"weight_levels\": 16}'; '{}' = an ideal device" + shown("as trained"),
        ),
    ] = None,
    checkpoint: Annotated[
        str,
        typer.Option(
            "--checkpoint",
            help="last (the last epoch), best (the best test-accuracy epoch, best.pt) or a checkpoint file",
        ),
    ] = "last",
    seeds: Annotated[
        int,
        typer.Option(
            "--seeds",
            min=1,
            help="device-effect draws (programming and read noise) to average over; the table gives the std",
        ),
    ] = 1,
    seed: Annotated[int, typer.Option("--seed", min=0, help="seed of the first draw")] = 0,
    subset: Annotated[
        int | None, typer.Option("--subset", min=1, help="the first N samples only" + shown("all"))
    ] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="evaluation batch")] = 500,
    device: Annotated[
        Literal["auto", "cpu", "cuda"],
        typer.Option("--device", help="auto = cuda when torch sees a GPU, else cpu"),
    ] = "auto",
    fmt: Annotated[Literal["table", "json"], typer.Option("--format", "-f", help="table or json")] = "table",
) -> None:
    """Evaluate a trained run: accuracy, loss and each analog block's equilibrium residual (mean max|Δs| of
    the free phase's last step), on its dataset or another of the same shape, optionally under simulated
    device effects (--analog) averaged over --seeds draws."""
    from rich.console import Console

    from hybridc.energy.solver import UnconvergedWarning
    from hybridc.evaluate import evaluate_run

    spec = parse_json_object(analog, "--analog", '{"read_noise": 0.02}')
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UnconvergedWarning)
        result = evaluate_run(
            run_dir,
            data,
            spec,
            checkpoint=checkpoint,
            split=split,
            data_dir=data_dir,
            subset=subset,
            batch_size=batch_size,
            seeds=seeds,
            seed=seed,
            device=device,
        )
    unconverged = _first_per_block(
        [str(w.message) for w in caught if issubclass(w.category, UnconvergedWarning)]
    )
    for w in caught:  # anything else as Python would have shown it
        if not issubclass(w.category, UnconvergedWarning):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    if fmt == "json":
        sys.stdout.write(json.dumps(result.to_json(), indent=2) + "\n")
    else:
        Console(width=None if sys.stdout.isatty() else 160).print(result.table())
    err = Console(stderr=True)
    for message in unconverged:
        err.print(f"[yellow]warning:[/] {escape(message)}", highlight=False, soft_wrap=True)


def _first_per_block(messages: list[str]) -> list[str]:
    """One solver warning per analog block (the first: every batch of the evaluation warns again), in order.
    The block is the message's text before its first colon ("analog block 'analog1'")."""
    seen: dict[str, str] = {}
    for m in messages:
        seen.setdefault(m.split(":", 1)[0], m)
    return list(seen.values())
