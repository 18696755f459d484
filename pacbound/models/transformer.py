"""A small transformer encoder on row-sequential images: each row of pixels is one token.

A 28×28 MNIST image becomes 28 tokens of 28 pixels: a learned input projection
``nn.Linear(cols, d_model)``, a learned positional ``nn.Embedding(rows, d_model)``, pre-norm
encoder blocks (``nn.LayerNorm``, ``nn.MultiheadAttention`` with ``batch_first=True``, a GELU
MLP), a final LayerNorm, the mean over tokens and a linear classifier. No dropout: the model
is deterministic in eval mode, as a certificate needs.
"""

from __future__ import annotations

import torch
from torch import nn

from pacbound.errors import InvalidInputError
from pacbound.models._activations import Activation, make_activation, positive_int


class EncoderBlock(nn.Module):
    """Pre-norm encoder block: ``x + attn(ln(x))``, then ``x + mlp(ln(x))``."""

    def __init__(
        self, d_model: int, heads: int, mlp_hidden: int, activation: str | Activation
    ) -> None:
        super().__init__()
        self.attention_norm = nn.LayerNorm(d_model)
        self.attention = nn.MultiheadAttention(d_model, heads, dropout=0.0, batch_first=True)
        self.mlp_norm = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(
            nn.Linear(d_model, mlp_hidden),
            make_activation(activation),
            nn.Linear(mlp_hidden, d_model),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.attention_norm(x)
        x = x + self.attention(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.mlp_norm(x))


class RowTransformer(nn.Module):
    """Tokens are the ``rows`` rows of ``cols`` values of each example (any input holding
    ``rows·cols`` values per example: ``(B, 1, 28, 28)``, ``(B, 28, 28)`` or ``(B, 784)``)."""

    def __init__(
        self,
        *,
        rows: int,
        cols: int,
        d_model: int,
        heads: int,
        layers: int,
        mlp_hidden: int,
        num_classes: int,
        activation: str | Activation,
    ) -> None:
        super().__init__()
        self.rows, self.cols = rows, cols
        self.embedding = nn.Linear(cols, d_model)
        self.position = nn.Embedding(rows, d_model)
        # small positions (as in ViT/GPT-2), not N(0, 1): the rows' content must not drown
        nn.init.normal_(self.position.weight, std=0.02)
        self.blocks = nn.Sequential(
            *(EncoderBlock(d_model, heads, mlp_hidden, activation) for _ in range(layers))
        )
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch = x.shape[0]
        tokens = x.reshape(batch, self.rows, self.cols)
        # the positions as a (B, T) index, so that each example looks up its own rows
        positions = torch.arange(self.rows, device=x.device).expand(batch, self.rows)
        h = self.embedding(tokens) + self.position(positions)
        return self.head(self.norm(self.blocks(h)).mean(dim=1))


def transformer(
    rows: int = 28,
    cols: int = 28,
    d_model: int = 48,
    heads: int = 4,
    layers: int = 2,
    mlp_hidden: int = 96,
    num_classes: int = 10,
    activation: str | Activation = "gelu",
) -> RowTransformer:
    """A row-sequential transformer encoder classifier (see :class:`RowTransformer`).

    Keyword arguments (``--arch transformer --arch-kwargs '{…}'``):

    - ``rows``, ``cols`` (int, default 28, 28): tokens per example and values per token.
    - ``d_model`` (int, default 48): token width; a multiple of ``heads``.
    - ``heads`` (int, default 4): attention heads.
    - ``layers`` (int, default 2): encoder blocks.
    - ``mlp_hidden`` (int, default 96): hidden width of each block's MLP.
    - ``num_classes`` (int, default 10): number of outputs.
    - ``activation`` (``relu``, ``tanh``, ``sigmoid``, ``gelu``, ``elu``; default ``gelu``):
      the MLPs' activation.

    >>> sum(p.numel() for p in transformer().parameters())
    41242
    """
    width, n_heads = positive_int(d_model, "d_model"), positive_int(heads, "heads")
    if width % n_heads:
        raise InvalidInputError(
            f"--arch-kwargs: d_model must be a multiple of heads, got d_model={width} and "
            f"heads={n_heads}",
            param="--arch-kwargs",
        )
    return RowTransformer(
        rows=positive_int(rows, "rows"),
        cols=positive_int(cols, "cols"),
        d_model=width,
        heads=n_heads,
        layers=positive_int(layers, "layers"),
        mlp_hidden=positive_int(mlp_hidden, "mlp_hidden"),
        num_classes=positive_int(num_classes, "num_classes"),
        activation=activation,
    )
