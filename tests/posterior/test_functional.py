"""The functional sampler (MATH.md §10): the whole parameter vector drawn per example, each
example evaluated alone; exact by construction, ties and reuse included."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn
from torch.func import functional_call

from pacbound.certify.gaussian import certify_gaussian
from pacbound.certify.gaussian_options import GaussianOptions
from pacbound.errors import InvalidInputError
from pacbound.posterior import functional as functional_module
from pacbound.posterior.network import Sampler, build_stochastic_network
from pacbound.posterior.priors import PriorMean, ScaleGrid
from pacbound.posterior.streams import DrawKey
from tests.posterior._keyed import keyed_noise


class _TiedDifference(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 3, bias=False)
        self.b = nn.Linear(4, 3, bias=False)
        self.b.weight = self.a.weight

    def forward(self, x: Tensor) -> Tensor:
        return self.a(x) - self.b(x)  # zero for every draw of the one tied weight


def _functional(model: nn.Module, sigma: float = 0.5) -> nn.Module:
    net = build_stochastic_network(model, sampler=Sampler.FUNCTIONAL)
    net.set_log_sigma(math.log(sigma))
    return net


def test_a_tied_weight_is_one_draw_per_example() -> None:
    net = _functional(_TiedDifference())
    assert [s.name for s in net.slots] == ["a.weight"]
    net.set_mode("per_example", torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = net(torch.randn(16, 4))
    assert torch.equal(out, torch.zeros_like(out))


def test_per_example_outputs_are_the_model_at_each_examples_own_draw() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3))
    net = _functional(model, sigma=0.3)
    x = torch.randn(7, 4)
    key = DrawKey(11, "test")
    net.set_mode("per_example", key)
    with torch.no_grad():
        out = net(x)
    _assert_each_example_at_its_own_draw(model, out, x, key, 0.3)


def _assert_each_example_at_its_own_draw(
    model: nn.Module, out: Tensor, x: Tensor, key: DrawKey, sigma: float
) -> None:
    """``out[i]`` is the model on example i alone at θ_i = μ + σ·ε_i, with ε_i rebuilt from
    the stream (per parameter, one row per example)."""
    params = dict(model.named_parameters())
    noise = keyed_noise(model, key, len(x))
    for i in range(len(x)):
        theta = {n: p.detach() + sigma * noise[n][i] for n, p in params.items()}
        expected = functional_call(model, theta, (x[i : i + 1],))[0]
        assert torch.allclose(out[i], expected, atol=1e-5)


def test_linear_moments_match_the_exact_gaussian() -> None:
    torch.manual_seed(1)
    lin = nn.Linear(3, 2)
    net = _functional(nn.Sequential(lin), sigma=0.2)
    x = torch.randn(1, 3).expand(20000, 3).contiguous()
    net.set_mode("per_example", torch.Generator().manual_seed(2))
    with torch.no_grad():
        out = net(x)
    mean = lin(x[:1])[0].detach()
    var = 0.04 * (x[0] ** 2).sum() + 0.04
    assert torch.allclose(out.mean(0), mean, atol=4 * float(var.sqrt()) / 20000**0.5)
    assert torch.allclose(out.var(0), var.expand(2), rtol=0.05)


def test_randomness_inside_forward_is_refused() -> None:
    class Noisy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 2)

        def forward(self, x: Tensor) -> Tensor:
            return self.fc(x + torch.randn_like(x))

    net = _functional(Noisy())
    net.set_mode("per_example", torch.Generator().manual_seed(0))
    with pytest.raises(InvalidInputError, match="supplied per call"), torch.no_grad():
        net(torch.randn(3, 4))


def test_rms_norm_and_tied_models_certify_with_the_functional_sampler() -> None:
    torch.manual_seed(0)
    x = torch.randn(300, 4)
    y = (x[:, 0] > 0).long()
    model = nn.Sequential(nn.Linear(4, 8), nn.RMSNorm(8), nn.ReLU(), nn.Linear(8, 2))
    opts = GaussianOptions(
        prior=PriorMean.ZERO,
        prior_scales=ScaleGrid.log_spaced(1e-2, 1.0, 9),
        mc_passes=1,
        search_examples=100,
        sampler=Sampler.FUNCTIONAL,
    )
    cert = certify_gaussian(model, x, y, options=opts)
    assert 0.0 < cert.value <= 1.0
    assert cert.network.num_parameters() == sum(p.numel() for p in model.parameters())
    with pytest.raises(InvalidInputError, match="--sampler functional"):
        certify_gaussian(model, x, y, options=GaussianOptions(prior=PriorMean.ZERO))


def test_forward_code_reading_its_parameters_sees_the_drawn_ones() -> None:
    """``next(self.parameters()).device`` and a penalty over ``self.parameters()`` work and
    use the tensors of the current draw (review 3)."""

    class Reads(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 2)

        def forward(self, x: Tensor) -> Tensor:
            x = x.to(next(self.parameters()).device)
            return self.fc(x) - sum(p.pow(2).sum() for p in self.parameters())

    torch.manual_seed(0)
    model = Reads()
    net = _functional(model, sigma=0.3)
    x = torch.randn(5, 4)
    net.check_coverage(x)
    key = DrawKey(4, "test")
    net.set_mode("per_example", key)
    with torch.no_grad():
        out = net(x)
    params = dict(model.named_parameters())
    noise = keyed_noise(model, key, 5)
    for i in range(5):
        theta = {n: p.detach() + 0.3 * noise[n][i] for n, p in params.items()}
        assert torch.allclose(out[i], functional_call(model, theta, (x[i : i + 1],))[0], atol=1e-5)


def test_attention_models_certify_without_torch_warnings_escaping() -> None:
    """MultiheadAttention has no vmap batching rule on CPU: torch's performance notice must
    not escape (nor, under warnings-as-errors, turn into a refusal)."""

    class Attn(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.proj = nn.Linear(2, 8)
            self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
            self.head = nn.Linear(8, 2)

        def forward(self, x: Tensor) -> Tensor:
            h = self.proj(x.view(x.shape[0], 3, 2))
            a, _ = self.attn(h, h, h, need_weights=False)
            return self.head((h + a).mean(1))

    torch.manual_seed(0)
    net = _functional(Attn(), sigma=0.1)
    net.check_coverage(torch.randn(6, 6))
    net.set_mode("per_example", torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert net(torch.randn(6, 6)).shape == (6, 2)


class _Recurrent(nn.Module):
    def __init__(self, noisy: bool = False) -> None:
        super().__init__()
        self.noisy = noisy
        self.rnn = nn.GRU(3, 5, batch_first=True)
        self.out = nn.Linear(5, 2)

    def forward(self, x: Tensor) -> Tensor:
        x = x + torch.randn_like(x) if self.noisy else x
        return self.out(self.rnn(x.reshape(-1, 2, 3))[0][:, -1])


def test_a_recurrent_model_is_evaluated_example_by_example() -> None:
    """vmap has no batching rule for GRU's fused kernel: the examples are looped over, each
    at its own draw of the whole parameter vector (rebuilt here from the stream)."""
    torch.manual_seed(0)
    model = _Recurrent().eval()
    net = _functional(model, sigma=0.3)
    x = torch.randn(6, 6)
    key = DrawKey(5, "test")
    net.set_mode("per_example", key)
    with torch.no_grad():
        out = net(x)
    assert net.net.looped
    _assert_each_example_at_its_own_draw(model, out, x, key, 0.3)
    assert not torch.allclose(out[0], model(x[:1])[0], atol=1e-3)  # really drawn


def test_the_loop_gives_vmaps_outputs_under_the_same_draws(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    torch.manual_seed(0)
    net = _functional(nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)), sigma=0.3)
    x = torch.randn(9, 4)
    outs = []
    for looped in (False, True):
        net.net.looped = looped
        if looped:  # the second pass must not use vmap at all
            monkeypatch.setattr(functional_module, "vmap", _no_vmap)
        net.set_mode("per_example", DrawKey(3, "test"))
        with torch.no_grad():
            outs.append(net(x))
    assert torch.allclose(outs[0], outs[1], atol=1e-6)


def _no_vmap(*args: object, **kwargs: object) -> None:
    raise AssertionError("vmap called in loop mode")


def test_randomness_in_a_looped_forward_is_refused() -> None:
    net = _functional(_Recurrent(noisy=True).eval())
    net.set_mode("per_example", DrawKey(0, "test"))
    with pytest.raises(InvalidInputError, match="supplied per call"), torch.no_grad():
        net(torch.randn(3, 6))


def test_a_recurrent_layer_holding_a_foreign_flat_weight_is_refused() -> None:
    """GRU's ``_flat_weights`` cache is allowed only while it holds the layer's own
    parameters; another tensor there would be computed with and never drawn."""
    model = _Recurrent().eval()
    model.rnn._flat_weights[0] = torch.zeros_like(model.rnn.weight_ih_l0)  # not via setattr
    with pytest.raises(InvalidInputError, match=r"outside its parameters and buffers \(rnn._flat"):
        build_stochastic_network(model, sampler=Sampler.FUNCTIONAL)
