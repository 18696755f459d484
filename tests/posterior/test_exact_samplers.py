"""The layer samplers of issue #13 are exact (MATH.md §10): each example's output is the
module at a genuine per-example draw of its weights, drawn independently per example.

Three kinds of evidence per sampler: equality with the generic functional path (the whole
parameter vector drawn per example, evaluated alone under vmap) under the same noise; the
output moments against the closed form; independence across examples."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap

from pacbound.posterior.layers_embedding import GaussianEmbedding
from pacbound.posterior.network import Sampler, StochasticNetwork, build_stochastic_network
from pacbound.posterior.normalization import ChannelAffine


def _pair(model: nn.Module, seed: int = 0) -> tuple[StochasticNetwork, StochasticNetwork]:
    """The layers and the functional network of ``model`` with the same random σ."""
    layers = build_stochastic_network(model)
    functional = build_stochastic_network(model, sampler=Sampler.FUNCTIONAL)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for a, b in zip(layers.slots, functional.slots, strict=True):
            assert a.name == b.name
            value = torch.empty_like(a.log_sigma).uniform_(-2.0, 0.0, generator=gen)
            a.log_sigma.copy_(value)
            b.log_sigma.copy_(value)
    return layers, functional


def _first(net: StochasticNetwork) -> Any:
    return net.net.get_submodule("0")


def _draw(net: StochasticNetwork, x: Tensor, seed: int) -> Tensor:
    net.set_mode("per_example", torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return net(x)


def _channel_affine(channels: int) -> ChannelAffine:
    mod = ChannelAffine(channels)
    with torch.no_grad():
        mod.scale.uniform_(0.5, 1.5)
        mod.shift.normal_()
    return mod


CASES = {
    "conv1d": (lambda: nn.Conv1d(4, 6, 3, padding=1), (5, 4, 7)),
    "conv1d groups": (lambda: nn.Conv1d(4, 6, 3, groups=2, stride=2, dilation=2), (5, 4, 9)),
    "conv2d": (lambda: nn.Conv2d(2, 3, 3, padding=1), (5, 2, 5, 5)),
    "conv2d depthwise": (lambda: nn.Conv2d(3, 6, 3, groups=3, padding=1), (5, 3, 4, 4)),
    "conv3d": (lambda: nn.Conv3d(2, 2, 2, bias=False), (5, 2, 3, 3, 3)),
    "layernorm": (lambda: nn.LayerNorm(6), (5, 3, 6)),
    "layernorm 2-d shape": (lambda: nn.LayerNorm([3, 4]), (5, 2, 3, 4)),
    "layernorm no bias": (lambda: nn.LayerNorm(6, bias=False), (5, 6)),
    "groupnorm": (lambda: nn.GroupNorm(2, 4), (5, 4, 3, 3)),
    "channel affine": (lambda: _channel_affine(4), (5, 4, 3)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_layer_sampler_equals_the_functional_path_under_the_same_noise(case: str) -> None:
    """Noise on the weights in the same order (weight, then bias, all examples at once):
    the grouped convolution / per-example affine equals evaluating every example alone
    with its own whole weight draw."""
    torch.manual_seed(0)
    make, shape = CASES[case]
    model = nn.Sequential(make())
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    layers, functional = _pair(model)
    x = torch.randn(shape)
    out = _draw(layers, x, 7)
    torch.testing.assert_close(out, _draw(functional, x, 7), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(out, _draw(layers, x, 8))  # the noise matters
    layers.set_mode("mean")
    with torch.no_grad():
        torch.testing.assert_close(layers(x), model(x))  # the mean is the module itself
    layers.check_coverage(x)  # data flow, noise locality, batch independence


@pytest.mark.parametrize("case", ["conv1d groups", "groupnorm", "layernorm", "channel affine"])
def test_examples_draw_independently(case: str) -> None:
    """One input repeated over the batch: outputs of different examples are uncorrelated,
    and every example varies (its own draw, not a shared one)."""
    torch.manual_seed(1)
    make, shape = CASES[case]
    layers, _ = _pair(nn.Sequential(make()))
    x = torch.randn(1, *shape[1:]).expand(4000, *shape[1:]).contiguous()
    out = _draw(layers, x, 3).reshape(4000, -1)
    centred = out - out.mean(0)
    corr = (centred[0::2] * centred[1::2]).mean(0) / centred.var(0)
    assert corr.abs().max() < 0.12  # 2000 pairs: |corr| ~ N(0, 1/2000), bound ≫ 5 sd
    assert torch.all(out.std(0) > 0)


def test_affine_moments_match_the_closed_form() -> None:
    """LayerNorm at a per-example draw: n(x)·w + b with w ~ N(μ_w, σ_w²), b ~ N(μ_b, σ_b²)
    has mean n·μ_w + μ_b and variance n²σ_w² + σ_b² at every position."""
    torch.manual_seed(2)
    layers, _ = _pair(nn.Sequential(nn.LayerNorm(5)))
    x1 = torch.randn(1, 3, 5)
    draws = 20_000
    out = _draw(layers, x1.expand(draws, 3, 5), 4)
    layer = _first(layers)
    n = nn.functional.layer_norm(x1, (5,))[0]
    s_w, s_b = torch.exp(layer.weight_log_sigma), torch.exp(layer.bias_log_sigma)
    mean = n * layer.weight_mu + layer.bias_mu
    var = n**2 * s_w**2 + s_b**2
    with torch.no_grad():
        assert torch.all((out.mean(0) - mean).abs() < 5 * torch.sqrt(var / draws))
        torch.testing.assert_close(out.var(0), var, rtol=0.06, atol=0.0)
        # the positions of one example share its draw: (out - mean)/n is the same w-noise
        # where the bias noise is absent
    assert torch.corrcoef(torch.stack([out[:, 0, 0], out[:, 1, 0]]))[0, 1] > 0.0


def _embedding_model() -> nn.Sequential:
    torch.manual_seed(3)
    return nn.Sequential(nn.Embedding(7, 3, padding_idx=0))


def test_embedding_draws_one_row_per_distinct_index_per_example() -> None:
    layers, _ = _pair(_embedding_model())
    x = torch.tensor([[1, 2, 1, 0], [1, 1, 3, 3], [2, 2, 2, 2]])
    out = _draw(layers, x, 5)
    torch.testing.assert_close(out[0, 0], out[0, 2])  # the same row twice: one draw
    torch.testing.assert_close(out[1, 0], out[1, 1])
    torch.testing.assert_close(out[2, 0], out[2, 3])
    assert not torch.allclose(out[0, 0], out[1, 0])  # row 1 in two examples: two draws
    assert not torch.allclose(out[0, 1], out[2, 0])
    assert not torch.allclose(out[0, 3], _first(layers).weight_mu[0])  # padding row drawn too
    layers.check_coverage(x)


def test_embedding_output_is_the_module_at_a_per_example_table() -> None:
    """The generic path: each example evaluated alone with a whole table whose used rows are
    the rows the layer drew (the others arbitrary: unused) gives the layer's output."""
    model = _embedding_model()
    layers, _ = _pair(model)
    layer = _first(layers)
    assert isinstance(layer, GaussianEmbedding)
    noises: list[Tensor] = []
    draw_noise = layer._row_noise

    def spy(*args: object, **kwargs: object) -> Tensor:
        noise = draw_noise(*args, **kwargs)  # type: ignore[arg-type]
        noises.append(noise)  # one row per distinct (example, row) pair, sorted
        return noise

    layer._row_noise = spy  # type: ignore[method-assign]
    x = torch.tensor([[4, 2, 4], [6, 6, 1]])
    out = _draw(layers, x, 9)
    (noise,) = noises
    keys = torch.unique((torch.arange(2)[:, None] * 7 + x).reshape(-1))
    tables = layer.weight_mu + torch.exp(layer.weight_log_sigma) * torch.randn(2, 7, 3)
    tables[keys // 7, keys % 7] = (
        layer.weight_mu[keys % 7] + torch.exp(layer.weight_log_sigma[keys % 7]) * noise
    )

    def one(table: Tensor, xi: Tensor) -> Tensor:
        return functional_call(model, {"0.weight": table}, (xi,))

    with torch.no_grad():
        torch.testing.assert_close(out, vmap(one)(tables.detach(), x))


def test_embedding_moments_and_independence() -> None:
    layers, _ = _pair(_embedding_model())
    draws = 20_000
    x = torch.tensor([[3, 5, 3]]).expand(draws, 3)
    out = _draw(layers, x, 11)
    layer = _first(layers)
    sigma = torch.exp(layer.weight_log_sigma)
    with torch.no_grad():
        for pos, row in ((0, 3), (1, 5)):
            se = sigma[row] / draws**0.5
            assert torch.all((out[:, pos].mean(0) - layer.weight_mu[row]).abs() < 5 * se)
            torch.testing.assert_close(out[:, pos].std(0), sigma[row], rtol=0.03, atol=0.0)
    centred = out[:, 0] - out[:, 0].mean(0)
    corr = (centred[0::2] * centred[1::2]).mean(0) / centred.var(0)
    assert corr.abs().max() < 0.1  # examples independent
    assert torch.equal(out[:, 0], out[:, 2])  # one example, one row, one draw


def test_embedding_settings_refused_or_reproduced() -> None:
    from pacbound.errors import InvalidInputError
    from pacbound.posterior.samplers import LAYER_SAMPLERS

    entry = LAYER_SAMPLERS[nn.Embedding]
    assert entry.refusals(nn.Embedding(5, 2, max_norm=1.0)) == ["max_norm (rewrites the table)"]
    assert entry.refusals(nn.Embedding(5, 2, padding_idx=1, scale_grad_by_freq=True)) == []
    assert entry.refusals(nn.Embedding(5, 2, sparse=True)) == []
    layers, _ = _pair(_embedding_model())
    with pytest.raises(InvalidInputError, match="outside 0…6"):
        _draw(layers, torch.tensor([[1, 7]]), 0)
