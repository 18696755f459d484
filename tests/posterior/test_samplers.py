"""The layer-sampler registry: which modules get an exact per-example sampler, and when."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from pacbound.errors import InvalidInputError
from pacbound.posterior.layers import GaussianLinear, GaussianModule
from pacbound.posterior.layers_affine import GaussianChannelAffine, GaussianLayerNorm
from pacbound.posterior.layers_attention import GaussianMultiheadAttention
from pacbound.posterior.layers_conv import GaussianConv
from pacbound.posterior.layers_embedding import GaussianEmbedding
from pacbound.posterior.network import build_stochastic_network
from pacbound.posterior.normalization import ChannelAffine
from pacbound.posterior.samplers import (
    LAYER_SAMPLERS,
    LayerSampler,
    altered_modules,
    layer_sampler,
    supported_types,
    unsupported_modules,
)


def test_registry_holds_every_exact_sampler() -> None:
    assert list(LAYER_SAMPLERS) == [
        nn.Linear,
        nn.Conv2d,
        nn.Conv1d,
        nn.Conv3d,
        nn.Embedding,
        nn.LayerNorm,
        nn.GroupNorm,
        ChannelAffine,
        nn.MultiheadAttention,
    ]
    assert LAYER_SAMPLERS[nn.Linear].layer is GaussianLinear
    assert {LAYER_SAMPLERS[t].layer for t in (nn.Conv1d, nn.Conv2d, nn.Conv3d)} == {GaussianConv}
    assert LAYER_SAMPLERS[nn.Embedding].layer is GaussianEmbedding
    assert LAYER_SAMPLERS[nn.LayerNorm].layer is GaussianLayerNorm
    assert LAYER_SAMPLERS[ChannelAffine].layer is GaussianChannelAffine
    assert supported_types(", ").startswith("nn.Linear, nn.Conv2d, nn.Conv1d, nn.Conv3d, ")
    assert LAYER_SAMPLERS[nn.MultiheadAttention].layer is GaussianMultiheadAttention
    assert supported_types(", ").endswith("nn.GroupNorm, ChannelAffine, nn.MultiheadAttention")


def test_exact_type_only() -> None:
    class MyLinear(nn.Linear):
        def forward(self, x: Tensor) -> Tensor:
            return super().forward(2 * x)

    assert layer_sampler(nn.Linear(2, 2)) is LAYER_SAMPLERS[nn.Linear]
    assert layer_sampler(MyLinear(2, 2)) is None  # a subclass may change forward
    model = nn.Sequential(MyLinear(2, 3), nn.ReLU(), nn.RMSNorm(3), nn.Linear(3, 2))
    assert unsupported_modules(model) == ["0 (MyLinear)", "2 (RMSNorm)"]


def test_applicability_rule() -> None:
    conv = nn.Conv2d(1, 2, 3, padding=1, padding_mode="circular")
    linear = nn.Linear(2, 2)
    linear.register_forward_pre_hook(lambda m, a: None)
    linear.register_parameter("scale", nn.Parameter(torch.ones(1)))
    assert LAYER_SAMPLERS[nn.Conv2d].refusals(conv) == ["padding_mode 'circular'"]
    assert LAYER_SAMPLERS[nn.Linear].refusals(linear) == ["forward hooks", "extra parameters scale"]
    assert LAYER_SAMPLERS[nn.Conv2d].refusals(nn.Conv2d(1, 2, 3)) == []
    model = nn.Sequential(conv, nn.Flatten(), linear)
    assert altered_modules(model) == [
        "0 (padding_mode 'circular')",
        "2 (forward hooks)",
        "2 (extra parameters scale)",
    ]


class Scale(nn.Module):
    """A layer type with no sampler in the registry: x ↦ x ⊙ weight."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(features))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.weight


class GaussianScale(GaussianModule):
    """Its per-example sampler, as a new registry entry would add it."""

    def __init__(self, base: Scale, log_sigma_init: float) -> None:
        super().__init__(base.weight, None, log_sigma_init)

    def forward(self, x: Tensor) -> Tensor:
        self._enter(x)
        if self.mode == "mean":
            return x * self.weight_mu
        return x * self._draws(self.weight_mu, self.weight_log_sigma, x.shape[0])


def test_a_new_layer_type_is_one_entry(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 3), Scale(3), nn.Linear(3, 4))
    with pytest.raises(InvalidInputError, match=r"registered layer types only.*1 \(Scale\)"):
        build_stochastic_network(model)
    monkeypatch.setitem(LAYER_SAMPLERS, Scale, LayerSampler(GaussianScale, "a vector per example"))
    net = build_stochastic_network(model, log_sigma_init=-1.0)
    assert [s.name for s in net.slots] == [n for n, _ in model.named_parameters()]
    assert isinstance(net.net[1], GaussianScale)
    x = torch.randn(6, 2)
    net.check_coverage(x)  # data flow, noise locality, batch independence
    net.set_mode("mean")
    with torch.no_grad():
        torch.testing.assert_close(net(x), model(x))
    net.set_mode("per_example", torch.Generator().manual_seed(1))
    with torch.no_grad():
        twice = net(torch.cat([x[:1], x[:1]]))
    assert not torch.equal(twice[0], twice[1])  # two examples, two independent draws
