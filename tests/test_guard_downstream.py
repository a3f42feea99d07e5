"""The feedback guard moves its rescale downstream where that is exact (hybridc.energy.contraction,
`plan_compensation`): a guard step that scales a block's top layer (weight and bias) by t and the weight reading
its output by 1/t leaves the ff-EBM's feedforward function unchanged and only shrinks the block's top-down
feedback by t²; where the path to the next weight is not positively homogeneous the plain rescale applies and
the reason is recorded. Everything in float64."""

from __future__ import annotations

import copy
import io

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hybridc.api import compile
from hybridc.energy.contraction import constrain_model, feedback_layers, plan_compensation
from hybridc.models.mlp import MLP
from hybridc.plan import ActivationSpec

SOLVER = {"t1": 400, "check_every": 400}
SLOPE = 0.5


class SmallConv(nn.Module):
    """conv3x3 · ReLU · maxpool2 · conv3x3 · ReLU · maxpool2 · flatten · linear, on 1×8×8 (Conv28 in small):
    with max_block_size 2 the convolutions form one analog block, ReLU → max-pool → flatten is digital."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 2, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(2, 3, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(3 * 2 * 2, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class Exported(nn.Module):
    """[fc1 · ReLU · fc2] · leaky ReLU · flatten · ×2 · [fc3 · ReLU · fc4]; the shape check makes fx tracing fail,
    so the graphs are torch.export's (ATen ops, weights as get_attr operands of functional linears)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.fc3, self.fc4 = (
            nn.Linear(6, 8),
            nn.Linear(8, 7),
            nn.Linear(7, 5),
            nn.Linear(5, 3),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] != 6:
            raise ValueError("expected 6 features")
        h = F.leaky_relu(self.fc2(torch.relu(self.fc1(x))), 0.2).flatten(1) * 2.0
        return self.fc4(torch.relu(self.fc3(h)))


def _model(kind: str, saturate: bool = False) -> tuple[nn.Module, torch.Tensor]:
    """The model and an input. `saturate`: the guarded block's hidden neurons are pinned at the hard sigmoid's
    upper bound (a large first-layer bias), so the feedback cannot move them and the block's output is its top
    layer applied to ones: any change of the ff-EBM's output is then the rescale's forward effect."""
    torch.manual_seed(0)
    if kind == "mlp":  # blocks: [net.1, net.3] -> ReLU -> [net.5, net.7] (the model's output)
        model = MLP((12, 10, 8, 6, 4), in_shape=(12,)).double()
        first = model.net[1]
        x = torch.rand(5, 12, dtype=torch.float64)
    elif kind == "export":
        model = Exported().double()
        first = model.fc1
        x = torch.rand(5, 6, dtype=torch.float64)
    else:
        model = SmallConv().double()
        first = model.features[0]
        x = torch.rand(5, 1, 8, 8, dtype=torch.float64)
    if saturate:
        with torch.no_grad():
            first.bias.fill_(60.0)
    return model, x


def _compile(model: nn.Module, x: torch.Tensor, compensate: bool = True, **kw) -> nn.Module:  # noqa: ANN003
    ff = compile(model, x, max_block_size=2, hardsigmoid_slope=SLOPE, solver=SOLVER, constrain=False, **kw)
    constrain_model(ff, kw.get("feedback_gain", 0.8), compensate=compensate)
    return ff


def _guarded(ff: nn.Module) -> str:
    return next(iter(ff.guard_compensation))


def _top(ff: nn.Module, name: str) -> nn.Module:
    """The module of the guarded block's top layer."""
    blk = ff.blocks[name]
    label = (
        blk.constraint.compensation.layers[0]
        if blk.constraint.compensation.layers
        else feedback_layers(blk)[-1][0]
    )
    return blk._split[1].get_submodule(label)


def _consumer(ff: nn.Module, name: str) -> nn.Module:
    cblock, layer = ff.guard_compensation[name]["consumers"][0].split(":")
    return ff.blocks[cblock].synapses.get_submodule(layer)


def _push_feedback_up(ff: nn.Module, name: str, by: float = 4.0) -> None:
    """What an optimizer step can do: grow the top layer's weight so that ρ exceeds the bound."""
    with torch.no_grad():
        _top(ff, name).weight.mul_(by)


@pytest.mark.parametrize("kind", ["mlp", "conv", "export"])
def test_a_compensating_guard_step_keeps_the_whole_ffebm_forward(kind: str) -> None:
    model, x = _model(kind, saturate=True)
    ff = _compile(model, x)
    name = _guarded(ff)
    assert ff.guard_compensation[name]["mode"] == "downstream"
    _push_feedback_up(ff, name)
    plain = copy.deepcopy(ff)
    plain.blocks[name].constraint.compensation.reason = "off for this test"
    with torch.no_grad():
        before = ff(x)
        t = ff.blocks[name].constraint.apply_()
        after = ff(x)
        plain.blocks[name].constraint.apply_()
        after_plain = plain(x)
    assert 0.05 < float(t) < 0.9  # the guard did rescale
    assert torch.allclose(after, before, rtol=0, atol=1e-10)
    assert (after_plain - before).abs().max() > 1e-2  # the plain rescale changes the forward function


@pytest.mark.parametrize("kind", ["mlp", "conv", "export"])
def test_downstream_of_the_block_sees_the_unscaled_output(kind: str) -> None:
    """General weights: after a compensating step the rest of the model computes exactly what the model before
    the step computes from the block's new output divided by t (ReLU, max-pool, flatten and the consumer's
    weight ×1/t commute with the factor)."""
    model, x = _model(kind)
    ff = _compile(model, x)
    name = _guarded(ff)
    _push_feedback_up(ff, name)
    before = copy.deepcopy(ff)
    with torch.no_grad():
        t = ff.blocks[name].constraint.apply_()
        out = ff(x)
        env = {"x": x}
        for bname in ff.blocks:
            ins, outs = ff.io(bname)
            net = ff if bname == name else before  # the guarded block as it is now, the rest as it was
            values = net.run_block(bname, [env[i] for i in ins])
            if bname == name:
                values = tuple(v / t for v in values)
            env.update(zip(outs, values))
        ref = env[ff.plan.graph_outputs[0]]
    assert float(t) < 0.9
    assert torch.allclose(out, ref, rtol=0, atol=1e-10)


def test_the_compensated_block_is_the_original_with_its_feedback_times_t_squared() -> None:
    """MLP block h = σ(W1 x + b1 + W2ᵀ y), y = W2 h + b2 (σ = clamp(a·u, 0, 1)): after a compensating step by t
    the whole ff-EBM equals, to 1e-10, the model before the step with this block's top-down term ×t² (weight and
    bias parts alike), relaxed by hand."""
    model, x = _model("mlp")
    ff = _compile(model, x)
    name = _guarded(ff)
    _push_feedback_up(ff, name, by=3.0)
    before = copy.deepcopy(ff)
    with torch.no_grad():
        t = ff.blocks[name].constraint.apply_()
        out = ff(x)
        lin1, lin2 = [m for m in before.blocks[name].modules() if isinstance(m, nn.Linear)]
        h = torch.zeros(x.shape[0], lin1.out_features, dtype=x.dtype)
        u1 = lin1(x)
        for _ in range(3000):
            y = lin2(h)
            h = (SLOPE * (u1 + t**2 * y @ lin2.weight)).clamp(0.0, 1.0)
        y = lin2(h)
        ref = before.blocks["analog3"](before.blocks["digital2"](y)[0])[0]
    assert float(t) < 0.9
    assert torch.allclose(out, ref, rtol=0, atol=1e-10)


def test_the_decisions_and_the_model_record_what_applies() -> None:
    model, x = _model("conv")
    ff = compile(model, x, max_block_size=2, hardsigmoid_slope=SLOPE, solver=SOLVER, feedback_gain=0.3)
    rec = ff.guard_compensation["analog0"]
    assert rec["mode"] == "downstream" and rec["reason"] is None
    assert rec["layers"] == ["features.3"] and rec["biases"] == ["features.3.bias"]
    assert rec["consumers"] == ["analog2:classifier.1"] and rec["path"] == ["relu", "max_pool", "flatten"]
    rescaled = {d.node: d for d in ff.plan.decisions if d.action == "rescaled"}
    assert "moved downstream" in rescaled["features.3"].reason
    assert rescaled["classifier.1"].block == "analog2" and "1/t" in rescaled["classifier.1"].reason
    top = ff.blocks["analog0"].synapses.get_submodule("features.3")
    head = ff.blocks["analog2"].synapses.get_submodule("classifier.1")
    t = float(top.weight[0, 0, 0, 0].detach() / model.features[3].weight[0, 0, 0, 0].detach())
    assert (
        t < 1
    )  # compiled weights: top layer (weight and bias) ×t, the classifier's weight ×1/t, its bias kept
    assert torch.allclose(top.weight, t * model.features[3].weight) and torch.allclose(
        top.bias, t * model.features[3].bias
    )
    assert torch.allclose(head.weight, model.classifier[1].weight / t)
    assert torch.equal(head.bias, model.classifier[1].bias)


class _Between(nn.Module):
    """[fc1 · act · fc2] · mid · [fc3 · act · fc4]: `mid` sits between the first block's top and its consumer."""

    def __init__(self, mid: nn.Module) -> None:
        super().__init__()
        self.fc1, self.fc2, self.fc3, self.fc4 = (
            nn.Linear(6, 8),
            nn.Linear(8, 7),
            nn.Linear(7, 5),
            nn.Linear(5, 3),
        )
        self.mid = mid

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc4(torch.relu(self.fc3(self.mid(self.fc2(torch.relu(self.fc1(x)))))))


@pytest.mark.parametrize(
    ("mid", "why"),
    [
        (nn.ReLU(), None),
        (nn.LeakyReLU(0.1), None),
        (nn.Dropout(0.2), None),
        (nn.Identity(), None),
        (nn.Hardsigmoid(), "hard sigmoid"),
        (nn.ReLU6(), "ReLU6"),
        (nn.BatchNorm1d(7), "BatchNorm"),
        (nn.Sigmoid(), "sigmoid"),
    ],
)
def test_only_positively_homogeneous_paths_compensate_and_fallbacks_say_why(
    mid: nn.Module, why: str | None
) -> None:
    torch.manual_seed(0)
    model = _Between(mid).double().eval()
    x = torch.rand(4, 6, dtype=torch.float64)
    ff = _compile(model, x, norm="split")
    rec = ff.guard_compensation["analog0"]
    assert ff.guard_compensation["analog2"]["mode"] == "none"
    assert "model's output" in ff.guard_compensation["analog2"]["reason"]
    if why is None:
        assert rec["mode"] == "downstream" and rec["consumers"] == ["analog2:fc3"]
        return
    assert rec["mode"] == "none" and why in rec["reason"]
    # the fallback is the plain rescale: the top layer's weight only
    _push_feedback_up(ff, "analog0")
    blk = ff.blocks["analog0"]
    top, head = blk.synapses.get_submodule("fc2"), ff.blocks["analog2"].synapses.get_submodule("fc3")
    w, bias, consumer = (top.weight.detach().clone(), top.bias.detach().clone(), head.weight.detach().clone())
    t = blk.constraint.apply_()
    assert float(t) < 1
    assert torch.allclose(top.weight, t * w) and torch.equal(top.bias, bias)
    assert torch.equal(head.weight, consumer)


class _SkipAfter(nn.Module):
    """A residual add downstream: the first block's output y reaches fc3's block both through fc3 and as the
    skip operand of fc3(relu(y)) + relu(y)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.fc3, self.fc4 = (
            nn.Linear(6, 8),
            nn.Linear(8, 8),
            nn.Linear(8, 8),
            nn.Linear(8, 3),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.fc2(torch.relu(self.fc1(x))))
        return self.fc4(torch.relu(self.fc3(h) + h))


def test_skips_and_in_block_conditions_fall_back_with_a_reason() -> None:
    torch.manual_seed(0)
    x = torch.rand(4, 6, dtype=torch.float64)
    ff = _compile(_SkipAfter().double(), x)
    rec = ff.guard_compensation["analog0"]
    assert rec["mode"] == "none" and "(add) combines a value that carries the factor" in rec["reason"]
    model, x = _model("mlp")
    ff = _compile(model, x)
    blk = ff.blocks["analog1"]
    # a top pre-activation with a term the rescale leaves alone (here: its own weight, when not rescaled)
    comp = plan_compensation(ff, "analog1", [])
    assert not comp.applies and "does not scale" in comp.reason
    # a top neuron with a hard-sigmoid activation: clamp(a·u, 0, 1) does not commute with the factor
    j = blk.output_idx[0]
    blk.activation_specs[j] = ActivationSpec(kind="hardsigmoid", params={"slope": SLOPE})
    comp = plan_compensation(ff, "analog1", feedback_layers(blk))
    assert not comp.applies and "hard sigmoid" in comp.reason
    # turned off on request
    ff = _compile(model, x, compensate=False)
    assert ff.guard_compensation["analog1"]["mode"] == "none"
    assert "compensate=False" in ff.guard_compensation["analog1"]["reason"]


def test_block_size_one_has_no_guard_and_stays_exact() -> None:
    model, x = _model("conv")
    ff = compile(model, x, max_block_size=1, hardsigmoid_slope=SLOPE, solver=SOLVER)
    assert ff.guard_compensation == {}
    assert all(getattr(b, "constraint", None) is None for b in ff.analog_blocks.values())
    assert not [d for d in ff.plan.decisions if d.action in ("rescaled", "unconstrained")]
    ff_keep = compile(model, x, max_block_size=1, activation="keep", solver=SOLVER)
    with torch.no_grad():
        assert torch.allclose(ff_keep(x), model(x), rtol=0, atol=1e-12)


@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
def test_copies_compensate_their_own_tensors(how: str) -> None:
    model, x = _model("conv", saturate=True)
    ff = _compile(model, x)
    if how == "deepcopy":
        other = copy.deepcopy(ff)
    else:
        buf = io.BytesIO()
        torch.save(ff, buf)
        buf.seek(0)
        other = torch.load(buf, weights_only=False)
    name = _guarded(other)
    original_consumer = _consumer(ff, name).weight.detach().clone()
    _push_feedback_up(other, name)
    with torch.no_grad():
        before = other(x)
        c = _consumer(other, name).weight.detach().clone()
        # through the optimizer post-step hook, as in a user's loop (lr 0: only the guard changes weights)
        opt = torch.optim.SGD(other.parameters(), lr=0.0)
        opt.step()
        assert not torch.equal(_consumer(other, name).weight, c)  # the copy's consumer was compensated
        assert torch.allclose(other(x), before, rtol=0, atol=1e-10)
    assert torch.equal(_consumer(ff, name).weight, original_consumer)  # the original's was not touched
