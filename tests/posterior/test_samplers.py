"""The layer-sampler registry: which modules get an exact per-example sampler, and when."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pacbound.errors import InvalidInputError
from pacbound.posterior.layers import GaussianConv2d, GaussianLinear, GaussianModule
from pacbound.posterior.network import build_stochastic_network
from pacbound.posterior.samplers import (
    LAYER_SAMPLERS,
    LayerSampler,
    altered_modules,
    layer_sampler,
    supported_types,
    unsupported_modules,
)


def test_registry_holds_linear_and_conv2d() -> None:
    assert list(LAYER_SAMPLERS) == [nn.Linear, nn.Conv2d]
    assert LAYER_SAMPLERS[nn.Linear].layer is GaussianLinear
    assert LAYER_SAMPLERS[nn.Conv2d].layer is GaussianConv2d
    assert supported_types(" and ") == "nn.Linear and nn.Conv2d"
    assert supported_types("/") == "nn.Linear/nn.Conv2d"


def test_exact_type_only() -> None:
    class MyLinear(nn.Linear):
        def forward(self, x: Tensor) -> Tensor:
            return super().forward(2 * x)

    assert layer_sampler(nn.Linear(2, 2)) is LAYER_SAMPLERS[nn.Linear]
    assert layer_sampler(MyLinear(2, 2)) is None  # a subclass may change forward
    model = nn.Sequential(MyLinear(2, 3), nn.ReLU(), nn.LayerNorm(3), nn.Linear(3, 2))
    assert unsupported_modules(model) == ["0 (MyLinear)", "2 (LayerNorm)"]


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


class GaussianConv1d(GaussianModule):
    """A per-example Conv1d sampler, as a new registry entry would add it."""

    def __init__(self, base: nn.Conv1d, log_sigma_init: float) -> None:
        super().__init__(base.weight, base.bias, log_sigma_init)
        self.padding = base.padding

    def forward(self, x: Tensor) -> Tensor:
        self._enter(x)
        if self.mode == "mean":
            return F.conv1d(x, self.weight_mu, self.bias_mu, padding=self.padding)
        b, out_ch = x.shape[0], self.weight_mu.shape[0]
        noise = self._noise((b, *self.weight_mu.shape), x)
        kernels = (self.weight_mu + torch.exp(self.weight_log_sigma) * noise).flatten(0, 1)
        out = F.conv1d(x.reshape(1, -1, x.shape[-1]), kernels, padding=self.padding, groups=b)
        assert self.bias_mu is not None and self.bias_log_sigma is not None
        bias = self.bias_mu + torch.exp(self.bias_log_sigma) * self._noise((b, out_ch), x)
        return out.reshape(b, out_ch, -1) + bias.unsqueeze(-1)


def test_a_new_layer_type_is_one_entry(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv1d(2, 3, 3, padding=1), nn.Flatten(), nn.Linear(15, 4))
    with pytest.raises(InvalidInputError, match=r"nn\.Linear and nn\.Conv2d only.*0 \(Conv1d\)"):
        build_stochastic_network(model)
    monkeypatch.setitem(LAYER_SAMPLERS, nn.Conv1d, LayerSampler(GaussianConv1d, "grouped conv"))
    net = build_stochastic_network(model, log_sigma_init=-1.0)
    assert [s.name for s in net.slots] == [n for n, _ in model.named_parameters()]
    assert isinstance(net.net[0], GaussianConv1d)
    x = torch.randn(6, 2, 5)
    net.check_coverage(x)  # data flow, noise locality, batch independence
    net.set_mode("mean")
    with torch.no_grad():
        torch.testing.assert_close(net(x), model(x))
    net.set_mode("per_example", torch.Generator().manual_seed(1))
    with torch.no_grad():
        twice = net(torch.cat([x[:1], x[:1]]))
    assert not torch.equal(twice[0], twice[1])  # two examples, two independent draws
