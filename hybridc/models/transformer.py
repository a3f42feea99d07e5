"""Small Transformer-encoder classifier on the STOCK ``nn.TransformerEncoder``.

A 28x28 single-channel image is read as a sequence of 28 tokens (rows) of 28 features:
``x.flatten(1, 2)`` -> (B, 28, 28) -> Linear(28, d_model) -> + learnable positional embedding
-> ``nn.TransformerEncoder`` (batch_first, post-norm stock layers) -> mean over tokens ->
Linear(d_model, num_classes).

Why it is in the zoo: the stock ``nn.TransformerEncoder``/``nn.TransformerEncoderLayer`` contain
Python control flow on their inputs (fast-path and mask checks) that torch.fx cannot trace through.
The model is therefore deliberately NOT fx-traceable by a tracer that descends into ``torch.nn``
containers (as hybridc's does, to expose the Linear layers inside) and exercises hybridc's fallback
to ``torch.export``. (Plain ``torch.fx.symbolic_trace`` with its default leaf rule does "succeed",
but only by keeping the whole encoder as one opaque ``call_module`` node.)

Self-contained (imports only torch) so the file can be loaded standalone by path.
"""

from __future__ import annotations

import torch
import torch.nn as nn

INPUT_SHAPE: tuple[int, ...] = (1, 28, 28)


class TransformerClassifier(nn.Module):
    """Row-token Transformer classifier.

    Args:
        d_model: embedding size.
        nhead: attention heads (must divide ``d_model``).
        dim_feedforward: hidden size of each layer's feed-forward network.
        num_layers: number of encoder layers.
        num_classes: size of the output.
        tokens: sequence length (image rows).
        features: features per token (image columns).
        dropout: dropout of the encoder layers.
        activation: feed-forward activation of the encoder layers ("relu" or "gelu").
    """

    def __init__(
        self,
        d_model: int = 64,
        nhead: int = 4,
        dim_feedforward: int = 128,
        num_layers: int = 2,
        num_classes: int = 10,
        tokens: int = 28,
        features: int = 28,
        dropout: float = 0.1,
        activation: str = "relu",
    ) -> None:
        super().__init__()
        if d_model % nhead != 0:
            raise ValueError(f"d_model={d_model} must be divisible by nhead={nhead}")
        self.num_classes: int = num_classes
        self.tokens: int = tokens
        self.features: int = features
        self.embed = nn.Linear(features, d_model)
        self.pos = nn.Parameter(torch.zeros(1, tokens, d_model))
        nn.init.normal_(self.pos, std=0.02)
        layer = nn.TransformerEncoderLayer(
            d_model=d_model,
            nhead=nhead,
            dim_feedforward=dim_feedforward,
            dropout=dropout,
            activation=activation,
            batch_first=True,
        )
        # enable_nested_tensor=False: no padding masks are used, and it silences the warning.
        self.encoder = nn.TransformerEncoder(layer, num_layers=num_layers, enable_nested_tensor=False)
        self.head = nn.Linear(d_model, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x.flatten(1, 2)) + self.pos  # (B, tokens, d_model)
        h = self.encoder(h)
        return self.head(h.mean(dim=1))


def model(**kwargs) -> nn.Module:
    """Build the default row-token Transformer classifier; keyword arguments go to :class:`TransformerClassifier`."""
    return TransformerClassifier(**kwargs)
