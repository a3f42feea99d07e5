"""Small Vision Transformer (Dosovitskiy et al., ICLR 2021) written from scratch.

Patch embedding ``Conv2d(in_channels, dim, kernel=patch, stride=patch)`` -> ``flatten(2).transpose(1, 2)``,
a learnable class token prepended, a learnable positional embedding, ``depth`` pre-norm blocks
(``x = x + attn(ln1(x)); x = x + mlp(ln2(x))`` with ``nn.MultiheadAttention`` and a GELU MLP),
a final LayerNorm, and a Linear head on the class token.

Why it is in the zoo: unlike ``transformer.py`` (stock encoder, not fx-traceable), this model is
written so that ``torch.fx.symbolic_trace`` captures it, giving the compiler an attention model on
its primary tracing path. Defaults target 28x28 grayscale images (16 patches of 7x7); it also works
for 32x32 RGB with ``image_size=32, patch_size=4, in_channels=3``.

Self-contained (imports only torch) so the file can be loaded standalone by path.
"""

from __future__ import annotations

import torch
import torch.nn as nn

INPUT_SHAPE: tuple[int, ...] = (1, 28, 28)


class Block(nn.Module):
    """Pre-norm Transformer block: ``x + attn(ln1(x))`` then ``x + mlp(ln2(x))``."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 2.0, dropout: float = 0.0) -> None:
        super().__init__()
        hidden = max(1, int(round(dim * mlp_ratio)))
        self.ln1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.ln2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.ln1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.ln2(x))


class ViT(nn.Module):
    """Vision Transformer classifier.

    Args:
        image_size: input height and width (square images).
        patch_size: patch height and width; must divide ``image_size``.
        in_channels: channels of the input image.
        dim: embedding size.
        depth: number of Transformer blocks.
        heads: attention heads (must divide ``dim``).
        mlp_ratio: hidden size of the block MLP as a multiple of ``dim``.
        num_classes: size of the output.
        dropout: attention dropout.
    """

    def __init__(
        self,
        image_size: int = 28,
        patch_size: int = 7,
        in_channels: int = 1,
        dim: int = 64,
        depth: int = 2,
        heads: int = 4,
        mlp_ratio: float = 2.0,
        num_classes: int = 10,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if image_size % patch_size != 0:
            raise ValueError(f"patch_size={patch_size} must divide image_size={image_size}")
        if dim % heads != 0:
            raise ValueError(f"dim={dim} must be divisible by heads={heads}")
        self.num_classes: int = num_classes
        num_patches = (image_size // patch_size) ** 2
        self.patch = nn.Conv2d(in_channels, dim, kernel_size=patch_size, stride=patch_size)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(torch.zeros(1, num_patches + 1, dim))
        nn.init.normal_(self.cls, std=0.02)
        nn.init.normal_(self.pos, std=0.02)
        self.blocks = nn.Sequential(*[Block(dim, heads, mlp_ratio, dropout) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch(x).flatten(2).transpose(1, 2)  # (B, num_patches, dim)
        cls = self.cls.expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1) + self.pos
        x = self.norm(self.blocks(x))
        return self.head(x[:, 0])


def model(**kwargs) -> nn.Module:
    """Build the default small ViT for 28x28 grayscale images; keyword arguments go to :class:`ViT`."""
    return ViT(**kwargs)
