"""FeedbackGuard: σ_max by power iteration matches the exact operator norm (Linear and Conv), the projection
enforces slope·σ_max(W)² ≤ gain on exactly the state-reading layers of multi-layer Hopfield blocks, and a block
pushed out of contraction relaxes to a fixed point again once guarded."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from hybridc.api import compile
from hybridc.models.mlp import MLP
from hybridc.runtime.experiment import EMBEDDED_FEEDBACK_GAIN, ExperimentConfig
from hybridc.runtime.train import train
from hybridc.targets.contraction import FeedbackGuard, feedback_layers, spectral_norm


def test_power_iteration_matches_the_exact_operator_norm() -> None:
    torch.manual_seed(0)
    lin = nn.Linear(20, 30).double()
    exact = float(torch.linalg.matrix_norm(lin.weight.detach(), 2))
    assert abs(float(spectral_norm(lin, (20,), iters=200)) - exact) <= 1e-6 * exact
    conv = nn.Conv2d(2, 3, 3, padding=1).double()
    shape = (2, 5, 5)
    dense = torch.autograd.functional.jacobian(lambda u: conv._conv_forward(u, conv.weight, None),
                                               torch.zeros(1, *shape, dtype=torch.float64)).reshape(75, 50)
    exact = float(torch.linalg.matrix_norm(dense, 2))
    assert abs(float(spectral_norm(conv, shape, iters=300)) - exact) <= 1e-4 * exact


def _mlp_ffebm() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    x = torch.rand(16, 1, 8, 8, dtype=torch.float64)
    ff = compile(MLP((64, 32, 32, 10), in_shape=(1, 8, 8)).double(), x, max_block_size=2,
                 solver={"t1": 60, "check_every": 60})
    return ff, x


def test_guard_bounds_only_the_feedback_layers() -> None:
    ff, x = _mlp_ffebm()
    blk = ff.analog_blocks["analog1"]
    (w1, w2) = [m for m in blk.modules() if isinstance(m, nn.Linear)]
    assert feedback_layers(blk) == [w2]  # fc1 reads the block input only: no feedback through it
    with torch.no_grad():
        w2.weight.mul_(20.0)
    before_w1 = w1.weight.clone()
    guard = FeedbackGuard(ff, gain=0.9)
    assert [layer for _, layer, _ in guard.layers] == [w2]  # the single-layer head block has no loop
    ff(x)  # the guard learns each layer's input shape from a forward pass
    assert guard.gains()["analog1"] > 1.0
    guard.project_()
    assert guard.gains()["analog1"] <= 0.9 * (1 + 1e-3)
    slope = 0.5
    sigma = float(torch.linalg.matrix_norm(w2.weight, 2))
    assert slope * sigma**2 <= 0.9 * (1 + 1e-3)
    assert torch.equal(w1.weight, before_w1)


def test_guarded_block_relaxes_to_a_fixed_point() -> None:
    ff, x = _mlp_ffebm()
    blk = ff.analog_blocks["analog1"]
    w2 = feedback_layers(blk)[0]
    with torch.no_grad():
        w2.weight.mul_(20.0)
        ff(x)
    assert float(blk.last_residual) > 1e-2  # out of contraction: no fixed point within 60 steps
    guard = FeedbackGuard(ff, gain=0.5)  # two steps shrink a perturbation at least 2×: 0.5^30 after 60
    ff(x)
    guard.project_()
    with torch.no_grad():
        ff(x)
    assert float(blk.last_residual) < 1e-6


def test_training_with_a_feedback_gain(tmp_path: Path) -> None:
    cfg = ExperimentConfig(train_subset=160, test_subset=64, batch_size=16, epochs=1, t1=8, t2=3,
                           model_kwargs={"sizes": [64, 32, 32, 10]}, progress=False, lr=0.05,
                           feedback_gain=0.5)
    train(cfg, out=tmp_path / "r")
    state = torch.load(tmp_path / "r" / "checkpoint.pt", weights_only=True)["model"]
    w2 = [v for k, v in state.items() if k.endswith("weight") and tuple(v.shape) == (32, 32)]
    assert len(w2) == 1 and 0.5 * float(torch.linalg.matrix_norm(w2[0], 2)) ** 2 <= 0.5 * 1.01
    with pytest.raises(ValueError, match="feedback_gain"):
        ExperimentConfig(feedback_gain=-0.5)


def test_embedded_default_is_guarded_unless_told_otherwise() -> None:
    assert ExperimentConfig().feedback_gain == EMBEDDED_FEEDBACK_GAIN
    assert ExperimentConfig(model="mlp").feedback_gain is None
    assert ExperimentConfig(feedback_gain=None).feedback_gain is None
    assert ExperimentConfig(feedback_gain=0).feedback_gain == 0  # 0 = off
    saved = ExperimentConfig()
    assert ExperimentConfig(**saved.model_dump()).feedback_gain == EMBEDDED_FEEDBACK_GAIN
