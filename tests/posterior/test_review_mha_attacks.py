"""Adversarial review of the nn.MultiheadAttention layer sampler (commit 3561172).

The most common host of nn.MultiheadAttention, nn.TransformerEncoderLayer, reads
``self_attn.batch_first`` in its forward; the Gaussian layer has no such attribute, so an
explicit ``--sampler layers`` build dies with a raw AttributeError instead of a clean
InvalidInputError refusal (``--sampler auto`` catches it and takes the functional path)."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from pacbound.errors import InvalidInputError
from pacbound.posterior.network import Sampler, build_stochastic_network


class EncoderLayerModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.layer(x)


def test_transformer_encoder_layer_is_refused_cleanly_or_computes_as_model() -> None:
    torch.manual_seed(0)
    model = EncoderLayerModel().eval()
    x = torch.randn(4, 5, 8)
    try:
        net = build_stochastic_network(model, sampler=Sampler.LAYERS)
        net.set_mode("mean")
        with torch.no_grad():
            assert torch.allclose(net(x), model(x), atol=1e-6)
    except InvalidInputError:
        pass  # a clean refusal is acceptable
    except AttributeError as exc:  # pragma: no cover - the bug
        pytest.fail(f"raw AttributeError instead of a refusal: {exc}")
