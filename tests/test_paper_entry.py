"""The ff-EBM paper's network details in hybridc: the entry BatchNorm kept inside a block's input synapse
(norm policy `synapse`), its running statistics touched once per training step and never by the feedback-gain
probe, the reference code's conv-only GOE init, and the shared 32×32 data helper. Small generated data."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hybridc.api import compile as hc_compile
from hybridc.energy.goe import goe_init, goe_reference_
from hybridc.models import build_zoo_model

pytestmark = pytest.mark.filterwarnings("ignore")


class EntryNet(nn.Module):
    """conv -> pool -> BN -> σ -> conv -> BN -> σ -> Linear: one entry norm, one deep norm."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(1, 3, 3, padding=1, bias=False)
        self.pool = nn.MaxPool2d(2)
        self.bn1 = nn.BatchNorm2d(3)
        self.c2 = nn.Conv2d(3, 4, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * 4 * 4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.hardtanh(self.bn1(self.pool(self.c1(x))), 0.0, 1.0)
        h = F.hardtanh(self.bn2(self.c2(h)), 0.0, 1.0)
        return self.fc(h.flatten(1))


def _bns(ff: nn.Module) -> list[nn.BatchNorm2d]:
    return [m for m in ff.modules() if isinstance(m, nn.BatchNorm2d)]


def _compile(model: nn.Module, x: torch.Tensor, **kw: object) -> nn.Module:
    args = {
        "max_block_size": 3,
        "gradient": "ep",
        "beta": 0.05,
        "solver": {"t1": 30, "t2": 10},
        "norm": "synapse",
    } | kw
    return hc_compile(model, x[:4], **args)


def test_entry_norm_kept_in_input_synapse_deep_norm_removed() -> None:
    torch.manual_seed(0)
    ff = _compile(EntryNet(), torch.randn(8, 1, 8, 8))
    assert len(ff.analog_blocks) == 1
    block = next(iter(ff.analog_blocks.values()))
    kept = [m for m in block.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(kept) == 1 and kept[0].num_features == 3  # bn1 (entry) kept, bn2 (after a neuron) removed
    actions = {d.node: d.action for d in ff.plan.decisions}
    assert actions["bn1"] == "absorbed" and actions["bn2"] == "removed"
    prefix = block._split[0]
    assert any(isinstance(m, nn.BatchNorm2d) for m in prefix.modules())  # in the once-per-phase prefix
    assert not any(isinstance(m, nn.BatchNorm2d) for m in block._split[1].modules())  # not in the step core


def test_norm_drop_split_and_entry_policies_unchanged() -> None:
    torch.manual_seed(0)
    x = torch.randn(8, 1, 8, 8)
    ff = _compile(EntryNet(), x, norm="drop")
    assert not _bns(ff)
    ff = _compile(EntryNet(), x, norm="split")
    assert all(not any(isinstance(m, nn.BatchNorm2d) for m in b.modules()) for b in ff.analog_blocks.values())
    ff = _compile(
        EntryNet(), x, norm="entry"
    )  # the default: norms inside a block are removed, the entry one too
    assert all(not any(isinstance(m, nn.BatchNorm2d) for m in b.modules()) for b in ff.analog_blocks.values())


def test_vgg_paper_entry_bn_at_every_split() -> None:
    """The paper's network: the one BatchNorm sits in the first analog block at sizes 6, 3, 2."""
    model = build_zoo_model("vgg-paper", width=1 / 32, in_channels=1, image_size=32)
    x = torch.randn(4, 1, 32, 32)
    for n, sizes in ((6, [6]), (3, [3, 3]), (2, [2, 2, 2])):
        ff = hc_compile(model, x, max_block_size=n, readout="digital", norm="synapse")
        assert [len(b.weight_layers) for b in ff.plan.analog_blocks] == sizes
        first = ff.analog_blocks[ff.plan.analog_blocks[0].name]
        assert len([m for m in first.modules() if isinstance(m, nn.BatchNorm2d)]) == 1


def test_entry_norm_evaluated_once_per_phase() -> None:
    torch.manual_seed(0)
    x = torch.randn(8, 1, 8, 8)
    ff = _compile(EntryNet(), x)
    block = next(iter(ff.analog_blocks.values()))
    calls: list[int] = []
    _bns(ff)[0].register_forward_hook(lambda *_: calls.append(1))
    with torch.no_grad():
        block.free_phase([x])
    assert block.last_steps >= 10 and len(calls) == 1


@pytest.mark.parametrize("gradient", ["ep", "id"])
def test_running_stats_updated_once_per_step_and_not_by_the_probe(gradient: str) -> None:
    torch.manual_seed(0)
    x = torch.randn(16, 1, 8, 8) * 2 + 1
    ff = _compile(EntryNet(), x, gradient=gradient, feedback_gain=0.8)  # the guard's ρ probe runs each step
    bn = _bns(ff)[0]
    assert bn.num_batches_tracked.item() == 0
    opt = torch.optim.SGD(ff.parameters(), lr=0.01)
    ff.train()
    loss = F.cross_entropy(ff(x), torch.randint(0, 5, (16,)))
    loss.backward()
    assert bn.num_batches_tracked.item() == 1  # free phase only: not nudged phases, Φ, ID's map
    mean, var = bn.running_mean.clone(), bn.running_var.clone()
    opt.step()  # the constraint re-projects, probing the block with zero inputs
    assert bn.num_batches_tracked.item() == 1
    torch.testing.assert_close(bn.running_mean, mean)
    torch.testing.assert_close(bn.running_var, var)
    assert bn.weight.grad is not None and bn.weight.grad.abs().sum() > 0


def test_eval_uses_running_stats_so_samples_are_independent() -> None:
    torch.manual_seed(0)
    x = torch.randn(12, 1, 8, 8)
    ff = _compile(EntryNet(), x)
    ff.train()
    with torch.no_grad():
        ff(x)
        ff.eval()
        together = ff(x)
        alone = torch.cat([ff(x[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(together[:3], alone, atol=1e-5, rtol=1e-4)


def test_ep_matches_id_with_entry_norm_float64() -> None:
    torch.manual_seed(0)
    x = torch.randn(16, 1, 8, 8, dtype=torch.float64)
    y = torch.randint(0, 5, (16,))
    model = EntryNet().double()
    grads = {}
    for g in ("ep", "id"):
        ff = hc_compile(
            model,
            x[:4],
            max_block_size=3,
            norm="synapse",
            gradient=g,
            beta=1e-3,
            feedback_gain=0.5,
            solver={"t1": 200, "t2": 200, "tol": 1e-12, "max_steps": 2000},
        ).double()
        if g == "id":
            ff.set_gradient(id_tol=1e-12)
        ff.train()
        F.cross_entropy(ff(x), y).backward()
        grads[g] = {k: p.grad.clone() for k, p in ff.named_parameters() if p.grad is not None}
    for k, ep in grads["ep"].items():
        cos = F.cosine_similarity(ep.flatten(), grads["id"][k].flatten(), dim=0)
        assert cos > 0.999, (k, float(cos))
    bn_keys = [k for k in grads["ep"] if "bn1" in k]
    assert bn_keys and all(grads["ep"][k].abs().sum() > 0 for k in bn_keys)


# ---- the reference code's GOE init -------------------------------------------------------------------------
def test_goe_reference_statistics() -> None:
    w = torch.empty(300, 300, 3, 3)
    goe_reference_(w, 0.03, generator=None)
    torch.testing.assert_close(w, w.transpose(-1, -2))  # every kernel slice is symmetric
    off = w[..., 0, 1].flatten()
    diag = torch.diagonal(w, dim1=-2, dim2=-1).flatten()
    assert abs(off.var().item() / (0.03 / 3) - 1) < 0.03  # off-diagonal variance V/k
    assert abs(diag.var().item() / (8 * 0.03 / 3) - 1) < 0.03  # diagonal 8V/k
    with pytest.raises(ValueError):
        goe_reference_(torch.empty(4, 5), 0.1)


def test_goe_conv_scope_touches_convs_only() -> None:
    torch.manual_seed(0)
    x = torch.randn(8, 1, 8, 8)
    model = EntryNet()
    ff = _compile(model, x, init="goe-conv", goe_variance=1e-2, feedback_gain=0.0)
    block = next(iter(ff.analog_blocks.values()))
    convs = [m for m in block.modules() if isinstance(m, nn.Conv2d)]
    linears = [m for m in block.modules() if isinstance(m, nn.Linear)]
    assert len(convs) == 2 and len(linears) == 1
    torch.testing.assert_close(linears[0].weight, model.fc.weight)  # PyTorch's init kept
    torch.testing.assert_close(linears[0].bias, model.fc.bias)
    assert convs[1].bias is not None and convs[1].bias.abs().sum() == 0
    for c in convs:
        torch.testing.assert_close(c.weight, c.weight.transpose(-1, -2))
        assert not torch.equal(c.weight, model.c1.weight) and not torch.equal(c.weight, model.c2.weight)
    # scope "all" (init="goe") still re-draws Linear layers too
    ff_all = _compile(model, x, init="goe", goe_variance=1e-2, feedback_gain=0.0)
    lin = [m for m in next(iter(ff_all.analog_blocks.values())).modules() if isinstance(m, nn.Linear)][0]
    assert not torch.equal(lin.weight, model.fc.weight) and lin.bias.abs().sum() == 0
    with pytest.raises(ValueError):
        goe_init(ff, 1e-2, scope="linear")  # type: ignore[arg-type]


# ---- the 32×32 data helper ---------------------------------------------------------------------------------
def test_load_32_normalises_subsets_and_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    from hybridc.data import fashion32
    from hybridc.errors import DataError

    g = torch.Generator().manual_seed(0)
    splits = {
        s: (torch.rand(n, 1, 32, 32, generator=g), torch.arange(n) % 10)
        for s, n in (("train", 50), ("test", 20))
    }
    asked: list[str] = []

    def fake(name: str, split: str, pad_to: int, download: bool) -> SimpleNamespace:
        asked.append(name)
        assert pad_to == 32 and not download
        if name != "fashion-mnist":
            raise DataError(f"{name}: no files")
        return SimpleNamespace(mean=(0.25,), std=(0.5,), tensors=splits[split])

    monkeypatch.setattr(fashion32, "load_dataset", fake)
    d = fashion32.load_32("cifar10", train_subset=10, test_subset=5)
    assert d.name == "fashion-mnist" and asked[0] == "cifar10"
    assert d.x_train.shape == (10, 1, 32, 32) and d.x_test.shape == (5, 1, 32, 32)
    idx = torch.randperm(50, generator=torch.Generator().manual_seed(0))[:10]
    torch.testing.assert_close(d.x_train, (splits["train"][0][idx] - 0.25) / 0.5)
    torch.testing.assert_close(d.y_train, splits["train"][1][idx])
    torch.testing.assert_close(d.x_test, (splits["test"][0][:5] - 0.25) / 0.5)
    again = fashion32.load_32("fashion-mnist", train_subset=10)
    torch.testing.assert_close(again.x_train, d.x_train)  # the same subset every run
    with pytest.raises(DataError):
        fashion32.load_32("cifar10", fallback=False)
    assert math.isfinite(float(d.x_train.mean()))


def test_drn_blocks_still_remove_entry_norms() -> None:
    """A DRN block's synapses are conductances only: an entry norm would be silently ignored, so it is removed
    (and said so) as before."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 4))
    x = torch.randn(8, 6)
    dhn = hc_compile(model, x[:4], max_block_size=2, norm="synapse")
    assert {d.node: d.action for d in dhn.plan.decisions}["_1"] == "absorbed"
    drn = hc_compile(model, x[:4], max_block_size=2, eb_kind="drn", norm="synapse")
    assert {d.node: d.action for d in drn.plan.decisions}["_1"] == "removed"
