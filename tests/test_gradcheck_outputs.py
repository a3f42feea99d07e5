"""gradcheck on what real models return and contain: tuple / dict / dataclass outputs (the loss on the first
tensor leaf, or the one `output=` names), tensors whose true gradient is structurally zero (reported as such,
left out of the summaries), a parameter tied between a digital and an analog block, and the GMRES adjoint
solve against the plain fixed-point iteration."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hybridc.api import compile
from hybridc.errors import HybridcError
from hybridc.gradcheck import gradcheck

from .conftest import small_zoo


class _Body(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.head = nn.Linear(6, 12), nn.Linear(12, 12), nn.Linear(12, 3)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.fc2(torch.relu(self.fc1(x))))


class PlainOut(_Body):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class TupleOut(_Body):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.features(x)
        return self.head(h), h


class DictOut(_Body):
    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.features(x)
        return {"hidden": h, "logits": self.head(h)}


@dataclass
class ClassifierOutput:  # the shape of transformers' SequenceClassifierOutput
    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None


class DataclassOut(_Body):
    def forward(self, x: torch.Tensor) -> ClassifierOutput:
        h = self.features(x)
        return ClassifierOutput(logits=self.head(h), hidden_states=(h,))


def _plain_report(model: nn.Module, **kw):  # noqa: ANN003, ANN202
    return gradcheck(model, torch.randn(2, 6), max_block_size=3, batch=3, **kw)


@pytest.mark.parametrize("cls,output", [(TupleOut, None), (DictOut, "logits"), (DataclassOut, None)])
def test_structured_outputs_take_the_loss_on_the_right_leaf(cls: type, output: str | None) -> None:
    """The same weights behind a tuple, a dict (loss on `logits`, not the first key) and a dataclass give the
    loss of the logits; the old gradcheck called `.dim()` on the structure."""
    torch.manual_seed(0)
    model = cls()
    report = _plain_report(model, output=output)
    torch.manual_seed(0)
    base = _plain_report(PlainOut())
    assert report.output == "logits" or report.output == "0"
    assert report.loss == pytest.approx(base.loss, rel=1e-12)
    assert not report.unconverged()
    for p in report.checked():
        assert p.cos_ep_id >= 0.9999 and p.relerr_ep_id <= 1e-5, p


def test_output_names_another_leaf_and_a_wrong_name_is_one_clear_error() -> None:
    torch.manual_seed(0)
    hidden = _plain_report(DictOut(), output="hidden")
    logits = _plain_report(DictOut(), output="logits")
    assert hidden.output == "hidden" and hidden.loss != pytest.approx(logits.loss)
    with pytest.raises(HybridcError, match="no tensor at 'logit'.*logits"):
        _plain_report(DictOut(), output="logit")


class ZeroHead(nn.Module):
    """timm style zero-initialised head: nothing below the head gets a gradient."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 12), nn.ReLU())
        self.head = nn.Linear(12, 3)
        nn.init.zeros_(self.head.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


class TokenMixer(nn.Module):
    """MLP-Mixer's token mixing: its bias shifts every channel of a token alike, which the LayerNorm over
    channels then removes, so the bias's true gradient is zero."""

    def __init__(self, tokens: int = 5, channels: int = 6) -> None:
        super().__init__()
        self.mix = nn.Linear(tokens, tokens)
        self.norm = nn.LayerNorm(channels)
        self.fc1, self.fc2 = nn.Linear(channels, 12), nn.Linear(12, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm(self.mix(x.transpose(1, 2)).transpose(1, 2))
        return self.fc2(torch.relu(self.fc1(y))).mean(1)


def test_structurally_zero_gradients_are_marked_and_left_out() -> None:
    r = gradcheck(ZeroHead(), torch.randn(2, 6), max_block_size=3, batch=3)
    zero = {p.name for p in r.params if p.structural_zero}
    assert zero == {"body.0.weight", "body.0.bias", "body.2.weight", "body.2.bias"}
    assert {p.name for p in r.checked()} == {"head.weight", "head.bias"}
    assert all(p.id_norm <= 1e-12 * max(q.id_norm for q in r.params) for p in r.params if p.structural_zero)
    assert r.min_cos_ep_id() >= 0.9999

    torch.manual_seed(0)
    r = gradcheck(TokenMixer(), torch.randn(2, 5, 6), max_block_size=2, batch=3)
    marked = {p.name: p.structural_zero for p in r.params}
    assert marked["mix.bias"] and not marked["mix.weight"] and not marked["fc1.weight"]
    assert "mix.bias" not in {p.name for p in r.checked(analog_only=False)}


class TiedLM(nn.Module):
    """An embedding (digital) whose weight is also the output layer's (HF's tied lm_head)."""

    def __init__(self, vocab: int = 11, dim: int = 8) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.fc1, self.fc2 = nn.Linear(dim, 16), nn.Linear(16, dim)
        self.lm_head = nn.Linear(dim, vocab, bias=False)
        self.lm_head.weight = self.embed.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.lm_head(torch.relu(self.fc2(torch.relu(self.fc1(self.embed(ids))))))


def test_tied_parameter_is_one_row_with_every_block_that_uses_it() -> None:
    """The partition keeps a weight tied to a digital embedding digital (plan decision); gradcheck reports the
    one tensor once, under its original name, with both blocks that use it and their summed gradient."""
    torch.manual_seed(0)
    ids = torch.randint(0, 11, (2, 4))
    r = gradcheck(TiedLM(), ids, max_block_size=3, batch=2)
    rows = [p for p in r.params if p.name == "embed.weight"]
    assert len(rows) == 1 and not any("lm_head" in p.name for p in r.params), [p.name for p in r.params]
    row = rows[0]
    assert len(row.block.split("+")) == 2 and row.analog == any(
        b.startswith("analog") for b in row.block.split("+")
    )
    assert row.cos_ep_id >= 0.9999 and row.relerr_ep_id <= 1e-5, row
    assert row.relerr_id_bptt <= 1e-6, row
    assert any(p.analog for p in r.checked())


def test_gmres_adjoint_matches_the_fixed_point_iteration_with_fewer_steps() -> None:
    """On a multi-layer conv block (VGG, 3 conv layers), float64: the same ID gradient to 1e-10 with fewer
    vjps; the old iteration is kept as id_solver='fixed_point'."""
    lm = small_zoo("vgg-paper")
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    y = torch.randint(0, 10, (2,))
    ff = (
        compile(
            lm.model.double(),
            x,
            max_block_size=3,
            solver={"tol": 1e-13, "max_steps": 3000, "check_every": 10},
        )
        .double()
        .eval()
    )
    grads, steps = {}, {}
    for solver in ("fixed_point", "gmres"):
        ff.set_gradient("id", id_solver=solver, id_tol=1e-13)
        ff.zero_grad(set_to_none=True)
        F.cross_entropy(ff(x), y).backward()
        grads[solver] = torch.cat([p.grad.flatten() for p in ff.parameters()])
        steps[solver] = {k: b.last_adjoint_steps for k, b in ff.analog_blocks.items()}
        assert all(float(b.last_adjoint_residual) <= 1e-13 for b in ff.analog_blocks.values())
    ref = grads["fixed_point"]
    assert float((grads["gmres"] - ref).abs().max() / ref.abs().max()) <= 1e-10
    big = max(steps["fixed_point"], key=steps["fixed_point"].get)
    assert steps["gmres"][big] < 0.7 * steps["fixed_point"][big], steps
