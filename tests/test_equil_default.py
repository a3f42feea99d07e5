"""The default free phase reaches its fixed point (issue 11): it runs to a relative tolerance under a step cap
derived from the block's enforced feedback-gain bound, reports the residual, steps and convergence it reached,
and flags a block that hits its cap; an explicit t1 keeps the paper's fixed-iteration free phase and the nudged
phase keeps its T2 steps."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from hybridc.api import compile
from hybridc.energy import block as energy_block
from hybridc.energy.settings import SolverConfig
from hybridc.energy.solver import UnconvergedWarning, free_schedule, free_step_cap
from hybridc.export.full import export_solver


def _mlp(scale: float = 6.0, seed: int = 0) -> tuple[nn.Module, torch.Tensor]:
    """32-64-64-10 with weights `scale`× PyTorch's default (unguarded, its free phase does not settle)."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Linear):
                m.weight.mul_(scale)
    return model, torch.rand(16, 32)


def _free(ff: nn.Module, x: torch.Tensor) -> nn.Module:
    with torch.no_grad():
        ff(x)
    return next(b for b in ff.analog_blocks.values() if len(b.neuron_names) >= 2)


def test_default_solver_runs_to_equilibrium_and_explicit_t1_is_fixed() -> None:
    assert SolverConfig().free == "equilibrium"
    assert SolverConfig(t1=20).free == "fixed"
    assert SolverConfig(t1=20, free="equilibrium").free == "equilibrium"
    for cfg in (SolverConfig(), SolverConfig(t1=7)):  # a stored config keeps its mode
        assert SolverConfig(**cfg.model_dump()) == cfg
    assert free_schedule(SolverConfig(t1=7), 0.8) == (7, None)
    assert free_schedule(SolverConfig(tol=1e-6), 0.8) == (20, None)  # explicit tol: its own rule
    steps, rel = free_schedule(SolverConfig(), 0.8, 100)
    assert rel == SolverConfig().free_tol and steps == free_step_cap(SolverConfig(), 0.8, 100)
    # an update follows the same rule: t1 alone selects fixed steps, other changes keep the stored mode
    assert SolverConfig().updated(t1=7).free == "fixed" and SolverConfig().updated(t2=3).free == "equilibrium"
    assert SolverConfig(t1=7).updated(free="equilibrium", t1=9).free == "equilibrium"
    ff = compile(*_mlp(1.0), max_block_size=2)
    ff.set_solver(t1=7)
    assert {(b.solver.free, b.solver.t1) for b in ff.analog_blocks.values()} == {("fixed", 7)}
    ff.set_solver(free="equilibrium")
    assert {b.solver.free for b in ff.analog_blocks.values()} == {"equilibrium"}


def test_step_cap_follows_the_bound() -> None:
    cfg = SolverConfig()
    caps = [free_step_cap(cfg, rho, 256) for rho in (0.3, 0.5, 0.8, 0.9, 0.95)]
    assert caps == sorted(caps) and len(set(caps)) == len(caps)
    assert all(c % cfg.check_every == 0 for c in caps)
    # ρ'^T·√n ≤ tol at the cap (ρ' with the power-iteration slack), and not a check earlier
    rate = 0.8 * 1.03
    cap = free_step_cap(cfg, 0.8, 256)
    assert rate**cap * 16 <= cfg.free_tol < rate ** (cap - cfg.check_every) * 16
    assert free_step_cap(cfg, None) == cfg.max_steps
    assert free_step_cap(SolverConfig(max_steps=30), 0.95, 256) == 30
    assert free_step_cap(SolverConfig(free_tol=1e-8), 0.8) > cap


def test_default_reaches_the_fixed_point_where_fixed_t1_does_not() -> None:
    model, x = _mlp()
    # at ρ ≤ 0.95 ten fixed steps leave the block short of its fixed point
    fixed = _free(compile(model, x, max_block_size=3, feedback_gain=0.95, solver={"t1": 10}), x)
    assert fixed.last_steps == 10 and fixed.last_converged is None
    ff = compile(model, x, max_block_size=3, feedback_gain=0.95)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnconvergedWarning)
        blk = _free(ff, x)
    cfg = blk.solver
    assert blk.feedback_bound() == pytest.approx(0.95, rel=1e-3)
    assert blk.last_converged is True and blk.last_cap == blk.free_cap()
    assert 10 < blk.last_steps <= blk.last_cap and blk.last_steps % cfg.check_every == 0
    res = float(blk.last_residual)
    assert res <= cfg.free_tol * 1.5  # states in [0, 1] and a linear readout: max(1, max|s|) is ~1
    assert res * 10 < float(fixed.last_residual) and float(fixed.last_residual) > cfg.free_tol, (
        res,
        float(fixed.last_residual),
    )


def test_a_block_that_misses_its_cap_warns_and_is_flagged() -> None:
    model, x = _mlp()
    ff = compile(model, x, max_block_size=3, constrain=False, solver={"max_steps": 40})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        blk = _free(ff, x)
        with torch.no_grad():
            ff(x)
    msgs = [str(w.message) for w in caught if issubclass(w.category, UnconvergedWarning)]
    assert len(msgs) == 1 and "cap 40 steps" in msgs[0], msgs
    assert blk.feedback_bound() is None and blk.last_cap == 40 == blk.last_steps
    assert blk.last_converged is False and float(blk.last_residual) > blk.solver.free_tol


def test_nudged_phase_keeps_t2_and_free_phase_its_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, int, float | None]] = []
    real = energy_block.relax

    def spy(step, states, steps, cfg, block, phase, on_unconverged=None, rel_tol=None):  # noqa: ANN001, ANN202
        out = real(step, states, steps, cfg, block, phase, on_unconverged, rel_tol=rel_tol)
        calls.append((phase, out.steps, rel_tol))
        return out

    monkeypatch.setattr(energy_block, "relax", spy)
    model, x = _mlp(scale=1.0)
    ff = compile(model, x, max_block_size=3, solver={"t2": 3})
    ff(x).pow(2).sum().backward()
    free = [c for c in calls if c[0] == "free"]
    nudged = [c for c in calls if c[0] == "nudged"]
    assert free and all(
        rel == ff.analog_blocks[next(iter(ff.analog_blocks))].solver.free_tol for _, _, rel in free
    )
    assert nudged and all(steps == 3 and rel is None for _, steps, rel in nudged)


def test_export_runs_the_cap_as_fixed_steps() -> None:
    fixed, note = export_solver(SolverConfig(), None, 60)
    assert (fixed.t1, fixed.free, fixed.tol) == (60, "fixed", None) and "60 fixed steps" in note
    assert export_solver(SolverConfig(t1=9), None, 60)[0].t1 == 9
    assert export_solver(SolverConfig(), 12, 60)[0].t1 == 12
    assert math.isclose(SolverConfig().free_tol, 1e-4)


class _Patches(nn.Module):
    """(B, 32) → patches (4B, 8) → LayerNorm → 2-layer MLP → LayerNorm → (B, 24): an analog block whose inputs and
    neurons live in a patch layout, 4 rows per sample, as MobileViT's unfolded transformer MLPs do."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(32, 32)
        self.norm, self.out_norm = nn.LayerNorm(8), nn.LayerNorm(6)
        self.fc1, self.fc2 = nn.Linear(8, 16), nn.Linear(16, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = torch.relu(self.inp(x)).reshape(-1, 8)
        return self.out_norm(self.fc2(torch.relu(self.fc1(self.norm(p))))).reshape(-1, 24)


def test_export_of_neurons_in_a_patch_layout_verifies(tmp_path: Path) -> None:
    from hybridc.export.exporter import export_ffebm

    torch.manual_seed(0)
    ff = compile(_Patches().eval(), torch.randn(2, 32), max_block_size=2).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = export_ffebm(ff, tmp_path / "export", check=True)
    assert result.report.ok, [(r.name, r.max_abs_error) for r in result.report.failures]
    manifest = json.loads((tmp_path / "export" / "manifest.json").read_text())
    multiples = {n["name"]: n["batch_multiple"] for b in manifest["blocks"] for n in b.get("neurons", [])}
    assert multiples == {"inp": 1, "relu_1": 4, "fc2": 4}, multiples


def test_a_block_the_guard_cannot_bound_diverges_loudly_instead_of_returning_a_transient() -> None:
    """relu -> relu under activation=keep: two neurons joined by an identity (rho_I = 1), which no weight rescale
    bounds. The compiler warns; the default free phase, run towards equilibrium, then diverges with an error
    naming the block (fixed T1 steps used to hand on a growing transient without a word)."""
    import pytest
    import torch
    from torch import nn

    import hybridc
    from hybridc.errors import EquilibriumDivergedError

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.ReLU(), nn.Linear(8, 3))
    x = torch.randn(4, 8)
    with pytest.warns(UserWarning, match="cannot be bounded"):
        ff = hybridc.compile(model, x, max_block_size=2, activation="keep")
    with pytest.raises(EquilibriumDivergedError, match="analog0"):
        ff.eval()(x)
