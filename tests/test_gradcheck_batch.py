"""gradcheck on a given batch (the paper-gradient benchmark checks real test images, not random data)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from hybridc.gradcheck import gradcheck
from hybridc.models import build_zoo_model


def test_batch_data_is_the_checked_batch() -> None:
    torch.manual_seed(0)
    model = build_zoo_model("mlp", sizes=(784, 16, 16, 10))
    x, y = torch.randn(5, 1, 28, 28), torch.tensor([0, 3, 3, 7, 9])
    rep = gradcheck(model, x[:2], max_block_size=1, batch_data=(x, y))
    # the loss is the cross-entropy of the compiled model on exactly this batch and these labels
    other = gradcheck(model, x[:2], max_block_size=1, batch_data=(x, torch.tensor([1, 1, 1, 1, 1])))
    assert abs(rep.loss - other.loss) > 1e-6
    with torch.no_grad():
        ref = F.cross_entropy(model.double()(x.double()), y).item()
    assert abs(rep.loss - ref) < 1e-6  # one-layer blocks compute the original function
    assert rep.equilibrium_residuals and max(rep.equilibrium_residuals.values()) < 1e-10
    assert rep.min_cos_ep_id() > 0.9999
