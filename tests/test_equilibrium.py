"""Equilibrium by construction, as a user of the Python API and the trainer sees it: models compiled from
weights that do not converge (a timm-style Kaiming ResNet, an MLP with large weights) reach a fixed point in
the default free phase, the bound holds after optimizer steps of a plain torch.optim loop, DRN conductances stay
≥ 0 through the same hook, EP matches ID on a guarded block, unconverged free phases warn once per block, and
non-finite gradients raise EquilibriumDivergedError naming the block before an optimizer sees them."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hybridc.api import compile
from hybridc.energy.contraction import DEFAULT_FEEDBACK_GAIN, feedback_norms
from hybridc.energy.solver import UnconvergedWarning
from hybridc.errors import EquilibriumDivergedError
from hybridc.models.mlp import MLP
from hybridc.train.experiment import ExperimentConfig
from hybridc.train.loop import train


# ---- a timm-style ResNet (BasicBlock, Kaiming fan_out init, residual `+=`, zero-init last BN) ---------------
class BasicBlock(nn.Module):
    expansion = 1

    def __init__(
        self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.act1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.act2 = nn.ReLU(inplace=True)
        self.downsample = downsample

    def zero_init_last(self) -> None:
        nn.init.zeros_(self.bn2.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.act1(self.bn1(self.conv1(x)))
        x = self.bn2(self.conv2(x))
        if self.downsample is not None:
            shortcut = self.downsample(shortcut)
        x += shortcut
        return self.act2(x)


class ResNet(nn.Module):
    """ResNet-18's layout (2 BasicBlocks per stage, 4 stages) at a test width."""

    def __init__(self, width: int = 4, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, kernel_size=3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.act1 = nn.ReLU(inplace=True)
        inplanes, stages = width, []
        for i in range(4):
            planes, stride = width * 2**i, 1 if i == 0 else 2
            ds = (
                None
                if stride == 1 and inplanes == planes
                else nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))
            )
            stages.append(nn.Sequential(BasicBlock(inplanes, planes, stride, ds), BasicBlock(planes, planes)))
            inplanes = planes
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(inplanes, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        for m in self.modules():
            if hasattr(m, "zero_init_last"):
                m.zero_init_last()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act1(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.global_pool(x).flatten(1))


def _large_mlp() -> tuple[nn.Module, torch.Tensor]:
    """MLP 32-64-64-10 with weights 6× PyTorch's default scale (its free phase oscillates)."""
    torch.manual_seed(0)
    model = MLP((32, 64, 64, 10), in_shape=(32,))
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Linear):
                m.weight.mul_(6.0)
    return model, torch.rand(16, 32)


def _residuals(ff: nn.Module, x: torch.Tensor) -> dict[str, float]:
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", UnconvergedWarning)
        ff(x)
    return ff.equilibrium_residuals()


@pytest.mark.slow
def test_timm_style_resnet_reaches_equilibrium_by_default() -> None:
    torch.manual_seed(0)
    model, x = ResNet().eval(), torch.randn(4, 3, 16, 16)
    off = _residuals(compile(model, x, max_block_size=4, norm="entry", constrain=False), x)
    assert max(off.values()) > 0.1  # Kaiming init: not a contraction, the free phase ends far away
    ff = compile(model, x, max_block_size=4, norm="entry")
    res = _residuals(ff, x)
    assert len(res) >= 4 and max(res.values()) <= 1e-4, res
    assert all(r <= DEFAULT_FEEDBACK_GAIN * (1 + 1e-3) for r in feedback_norms(ff).values())


def test_mlp_with_large_weights_reaches_equilibrium_by_default() -> None:
    model, x = _large_mlp()
    off = _residuals(compile(model, x, max_block_size=3, constrain=False), x)
    ff = compile(model, x, max_block_size=3)
    res = _residuals(ff, x)
    assert max(off.values()) > 1e-2 and max(res.values()) <= 1e-4, (off, res)
    assert [d.node for d in ff.plan.decisions if d.action == "rescaled"] == ["net.3", "net.5"]


def test_bound_holds_after_steps_of_a_plain_torch_optim_loop() -> None:
    model, x = _large_mlp()
    y = torch.randint(0, 10, (16,))
    rhos = {}
    for constrain in (False, True):
        torch.manual_seed(0)
        ff = compile(model, x, max_block_size=3, constrain=constrain, feedback_gain=0.8)
        opt = torch.optim.Adam(ff.parameters(), lr=0.05)
        seen = []
        for _ in range(6):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UnconvergedWarning)
                loss = F.cross_entropy(ff(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()  # the global post-step hook runs FFEBM.constrain_
            seen.append(max(feedback_norms(ff, iters=500).values()))
        rhos[constrain] = seen
    assert min(rhos[False]) > 1.0
    assert max(rhos[True]) <= 0.8 * 1.005, rhos[True]


def _adam_steps(ff: nn.Module, x: torch.Tensor, steps: int = 4, lr: float = 0.05) -> None:
    y = torch.randint(0, 10, (len(x),), generator=torch.Generator().manual_seed(1))
    opt = torch.optim.Adam(ff.parameters(), lr=lr)
    for _ in range(steps):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UnconvergedWarning)
            loss = F.cross_entropy(ff(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()


def test_a_deep_copy_of_a_compiled_model_keeps_its_bound_after_optimizer_steps() -> None:
    import copy
    import io

    model, x = _large_mlp()
    ff = compile(model, x, max_block_size=3, feedback_gain=0.8)
    twin = copy.deepcopy(ff)
    before = [p.detach().clone() for p in ff.parameters()]
    _adam_steps(twin, x, lr=0.5)  # large steps: without the post-step hook ρ leaves the bound at once
    assert max(feedback_norms(twin, iters=500).values()) <= 0.8 * 1.005
    assert all(torch.equal(a, b) for a, b in zip(before, ff.parameters()))  # the original is untouched
    buf = io.BytesIO()
    torch.save(ff, buf)  # a whole pickled model too
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    _adam_steps(loaded, x, lr=0.5)
    assert max(feedback_norms(loaded, iters=500).values()) <= 0.8 * 1.005
    unguarded = compile(model, x, max_block_size=3, constrain=False)
    _adam_steps(copy.deepcopy(unguarded), x, lr=0.5)  # nothing registered, nothing rescaled: no error


class _BatchInView(nn.Module):
    """An MLP whose forward hard-codes its batch of 3 in a view between two layers of one analog block (a
    traced view is specialised to its batch: torch.export does so for a batch of 1, HF GPT-2 then views
    [1, T, H])."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(6, 16), nn.Linear(16, 16), nn.Linear(16, 5)
        with torch.no_grad():
            self.fc2.weight.mul_(8.0)
            self.fc3.weight.mul_(8.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.fc1(x))
        h = torch.relu(self.fc2(h.view(3, 16)))
        return self.fc3(h)


def test_the_gain_probe_runs_at_the_example_batch_when_the_forward_hard_codes_it() -> None:
    torch.manual_seed(0)
    model, x = _BatchInView(), torch.randn(3, 6)
    ff = compile(model, x, max_block_size=3, feedback_gain=0.8)
    (blk,) = [b for b in ff.analog_blocks.values() if b.constraint is not None]
    assert blk.constraint.coupling.batch == 3  # the probe batches (2 and 4) do not run: the example's does
    rescaled = [d for d in ff.plan.decisions if d.action == "rescaled"]
    assert rescaled and "out of reach" not in rescaled[0].reason
    # the bound is the true one: ρ built by hand from the rescaled weights (slopes 0.5, 0.5, 1)
    w2, w3 = (m.weight.detach() for m in (blk.synapses.fc2, blk.synapses.fc3))
    a = torch.tensor([0.5] * 32 + [1.0] * 5).sqrt()
    A = torch.zeros(37, 37)
    A[16:32, :16], A[32:, 16:32] = w2, w3
    A = A + A.T
    assert float(torch.linalg.matrix_norm(a[:, None] * A * a[None, :], 2)) == pytest.approx(0.8, rel=2e-3)
    assert max(_residuals(ff, x).values()) <= 1e-3
    with torch.no_grad():  # the per-step measurement (what the post-step hook runs) probes at that batch too
        blk.synapses.fc2.weight.mul_(3.0)
    ff.constrain_()
    assert max(feedback_norms(ff, iters=500).values()) <= 0.8 * 1.005


def test_an_optimizer_not_holding_the_model_leaves_it_alone() -> None:
    model, x = _large_mlp()
    ff = compile(model, x, max_block_size=3, feedback_gain=0.8)
    (name,) = [k for k, b in ff.analog_blocks.items() if b.constraint is not None]
    with torch.no_grad():
        for m in ff.blocks[name].modules():
            if isinstance(m, nn.Linear):
                m.weight.mul_(3.0)
    other = nn.Linear(2, 2)
    opt = torch.optim.SGD(other.parameters(), lr=0.1)
    other(torch.ones(1, 2)).sum().backward()
    opt.step()
    assert feedback_norms(ff)[name] > 1.0  # untouched: that optimizer does not train it
    ff.constrain_()
    assert feedback_norms(ff, iters=500)[name] <= 0.8 * 1.005


def test_drn_conductances_stay_nonnegative_through_the_same_hook() -> None:
    torch.manual_seed(0)
    x = torch.rand(8, 6)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    for constrain in (True, False):
        ff = compile(
            model, x, max_block_size=2, eb_kind="drn", constrain=constrain, solver={"t1": 4, "t2": 2}
        )
        opt = torch.optim.SGD(ff.parameters(), lr=50.0)
        ff(x).pow(2).sum().backward()
        opt.step()
        gs = [g for blk in ff.analog_blocks.values() for g in blk.conductances]
        assert all((g >= 0).all() for g in gs) == constrain


def test_single_layer_blocks_and_constrain_off_keep_the_weights_exact() -> None:
    model, x = _large_mlp()
    original = [m.weight for m in model.modules() if isinstance(m, nn.Linear)]
    for kw in (
        {"max_block_size": 1},
        {"max_block_size": 3, "constrain": False},
        {"max_block_size": 3, "feedback_gain": 0},
    ):
        ff = compile(model, x, **kw)
        compiled = [m.weight for m in ff.modules() if isinstance(m, nn.Linear)]
        assert len(compiled) == 3 and all(torch.equal(a, b) for a, b in zip(compiled, original)), kw
        assert not any(d.action in ("rescaled", "unconstrained") for d in ff.plan.decisions)


def test_ep_matches_id_on_a_guarded_block() -> None:
    model, x = _large_mlp()
    model, x = model.double(), x.double()
    y = torch.randint(0, 10, (16,))
    solver = {"t1": 300, "t2": 300, "check_every": 300}
    grads = {}
    for mode in ("ep", "id"):
        ff = compile(model, x, max_block_size=3, gradient=mode, beta=1e-3, solver=solver)
        assert any(d.action == "rescaled" for d in ff.plan.decisions)
        F.cross_entropy(ff(x), y).backward()
        grads[mode] = torch.cat([p.grad.flatten() for p in ff.parameters()])
    ep, ref = grads["ep"], grads["id"]
    assert F.cosine_similarity(ep, ref, dim=0) >= 0.9999
    assert (ep - ref).norm() <= 1e-3 * ref.norm()


@pytest.mark.parametrize("mode", ["id", "ep"])
def test_nan_gradients_raise_naming_the_block_before_the_optimizer(mode: str) -> None:
    model, x = _large_mlp()
    ff = compile(model, x, max_block_size=3, gradient=mode)
    before = [p.detach().clone() for p in ff.parameters()]
    out = ff(x)
    loss = (out * torch.tensor(float("nan"))).sum()
    (name,) = [k for k, b in ff.analog_blocks.items() if len(b.neuron_names) > 1]
    with pytest.raises(EquilibriumDivergedError, match=name):
        loss.backward()
    assert all(torch.equal(a, b) for a, b in zip(before, ff.parameters()))


def test_a_rule_returning_nan_raises_naming_the_block(monkeypatch: pytest.MonkeyPatch) -> None:
    from hybridc.energy import estimators as gradients

    def nan_rule(*args):  # noqa: ANN002, ANN202
        in_grads, p_grads = gradients.ep_gradients(*args)
        return in_grads, [None if g is None else g * float("nan") for g in p_grads]

    monkeypatch.setattr(gradients._EPFunction, "rule", staticmethod(nan_rule))
    model, x = _large_mlp()
    ff = compile(model, x, max_block_size=3)
    with pytest.raises(
        EquilibriumDivergedError, match=r"analog1.*EP gradient is NaN/Inf.*from a fixed point"
    ):
        ff(x).pow(2).sum().backward()


def test_unconverged_free_phase_warns_once_per_block() -> None:
    model, x = _large_mlp()
    ff = compile(model, x, max_block_size=3, constrain=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            with torch.no_grad():
                ff(x)
    msgs = [str(w.message) for w in caught if issubclass(w.category, UnconvergedWarning)]
    assert len(msgs) == 1 and "analog" in msgs[0] and "away from a fixed point" in msgs[0], msgs
    guarded = compile(model, x, max_block_size=3)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnconvergedWarning)
        with torch.no_grad():
            guarded(x)


def test_the_trainer_uses_the_same_mechanism(tmp_path: Path) -> None:
    cfg = ExperimentConfig(
        train_subset=160,
        test_subset=64,
        batch_size=16,
        epochs=1,
        t1=8,
        t2=3,
        model_kwargs={"sizes": [64, 32, 32, 10]},
        progress=False,
        lr=0.05,
        feedback_gain=0.5,
    )
    train(cfg, out=tmp_path / "r")
    state = torch.load(tmp_path / "r" / "checkpoint.pt", weights_only=True)["model"]
    w2 = [v for k, v in state.items() if k.endswith("weight") and tuple(v.shape) == (32, 32)]
    # the 2-layer block (hidden: hard sigmoid a = 0.5, output linear): ρ = √a · σ_max(W2)
    assert len(w2) == 1 and 0.5**0.5 * float(torch.linalg.matrix_norm(w2[0], 2)) <= 0.5 * 1.01
    with pytest.raises(ValueError, match="feedback_gain"):
        ExperimentConfig(feedback_gain=-0.5)
