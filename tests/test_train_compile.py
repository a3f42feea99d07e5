"""`train --compile` compiles what a training step runs: the relaxation step every phase of every analog
block calls (it used to wrap `step_map`, which the phases never call, so the analog part ran uncompiled)."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
import torch

from hybridc.train.build import apply_torch_compile, build_model, compile_model
from hybridc.train.experiment import ExperimentConfig


def test_compiled_functions_are_the_ones_training_calls(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: Counter[str] = Counter()

    def recording_compile(fn: Any, **_kw: Any) -> Any:  # stands in for torch.compile: counts the calls
        name = f"{type(getattr(fn, '__self__', None)).__name__}.{fn.__name__}"

        def compiled(*args: Any, **kwargs: Any) -> Any:
            calls[name] += 1
            return fn(*args, **kwargs)

        calls[name] += 0
        return compiled

    monkeypatch.setattr(torch, "compile", recording_compile)
    cfg = ExperimentConfig(
        model="mlp",
        model_kwargs={"sizes": [12, 16, 16, 16, 3]},
        max_block_size=2,
        t1=4,
        t2=2,
        feedback_gain=0,
    )
    torch.manual_seed(0)
    model, example = build_model(cfg, (1, 3, 4), 3)
    ff = compile_model(cfg, model, example)
    done = apply_torch_compile(ff, "ep")
    assert set(done) == set(ff.blocks) and ff.analog_blocks
    x = torch.randn(5, 1, 3, 4)
    loss = torch.nn.functional.cross_entropy(ff(x), torch.tensor([0, 1, 2, 0, 1]))
    loss.backward()  # EP's nudged phases
    assert calls, "nothing was compiled"
    uncalled = [name for name, n in calls.items() if n == 0]
    assert not uncalled, f"compiled but never called by a training step: {uncalled}"
