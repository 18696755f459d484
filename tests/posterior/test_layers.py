"""Per-example Gaussian layers: exact distributions, independence, no local reparam for conv."""

from __future__ import annotations

import torch
from torch import nn

from pacbound.posterior.layers import GaussianLinear
from pacbound.posterior.layers_conv import GaussianConv2d


def _linear(seed: int = 0) -> GaussianLinear:
    torch.manual_seed(seed)
    layer = GaussianLinear(nn.Linear(5, 3), log_sigma_init=-1.0)
    with torch.no_grad():
        layer.weight_log_sigma.uniform_(-2.0, 0.0)
        layer.bias_log_sigma.uniform_(-2.0, 0.0)  # type: ignore[union-attr]
    return layer


def test_local_reparameterization_matches_fresh_weight_draws() -> None:
    """Moments of the per-example output equal those of x·W + b with W ~ N(μ, σ²) drawn fresh.

    Convergence test with a fixed seed: 200k draws, tolerance ≈ 5 standard errors.
    """
    layer = _linear()
    x = torch.tensor([[0.5, -1.0, 2.0, 0.0, 1.5]])
    draws = 200_000
    gen = torch.Generator().manual_seed(1)
    layer.mode = "per_example"
    layer.generator = gen
    with torch.no_grad():
        out = layer(x.expand(draws, -1))  # every row: an independent per-example draw
        # Reference: explicit fresh weight samples for every row.
        w = layer.weight_mu + torch.exp(layer.weight_log_sigma) * torch.randn(
            draws, 3, 5, generator=gen
        )
        b = layer.bias_mu + torch.exp(layer.bias_log_sigma) * torch.randn(draws, 3, generator=gen)  # type: ignore[operator]
        ref = torch.einsum("i,dji->dj", x[0], w) + b
        exact_mean = x[0] @ layer.weight_mu.T + layer.bias_mu
        exact_var = (x[0] ** 2) @ torch.exp(2 * layer.weight_log_sigma).T + torch.exp(
            2 * layer.bias_log_sigma  # type: ignore[operator]
        )
    se_mean = torch.sqrt(exact_var / draws)
    assert torch.all((out.mean(0) - exact_mean).abs() < 5 * se_mean)
    assert torch.all((ref.mean(0) - exact_mean).abs() < 5 * se_mean)
    # Variance: relative standard error of a sample variance is √(2/draws) ≈ 0.32 %.
    assert torch.allclose(out.var(0), exact_var, rtol=0.02)
    assert torch.allclose(ref.var(0), exact_var, rtol=0.02)
    # Output units are independent under a fresh weight draw: correlations ≈ 0.
    corr = torch.corrcoef(out.T)
    off_diagonal = corr - torch.diag(torch.diag(corr))
    assert off_diagonal.abs().max() < 0.02
    # Fourth moment: Gaussian kurtosis 3 (the pre-activation is exactly normal).
    z = (out - exact_mean) / torch.sqrt(exact_var)
    assert torch.allclose((z**4).mean(0), torch.full((3,), 3.0), atol=0.1)


def test_linear_draws_differ_between_examples_and_passes() -> None:
    layer = _linear()
    layer.generator = torch.Generator().manual_seed(0)
    x = torch.ones(2, 5)
    with torch.no_grad():
        first, second = layer(x), layer(x)
    assert not torch.equal(first[0], first[1])  # same input, independent draws
    assert not torch.equal(first, second)  # a new pass draws again


def test_mean_mode_is_deterministic() -> None:
    layer = _linear()
    layer.mode = "mean"
    x = torch.randn(4, 5)
    with torch.no_grad():
        assert torch.equal(layer(x), x @ layer.weight_mu.T + layer.bias_mu)


def test_conv_uses_real_per_example_kernels_not_local_reparameterization() -> None:
    """Two spatial positions that see the same patch share one kernel draw.

    With real per-example kernels their outputs are identical; the local reparameterization
    would draw them independently (and wrongly) per position.
    """
    torch.manual_seed(0)
    conv = GaussianConv2d(nn.Conv2d(1, 4, kernel_size=1), log_sigma_init=0.0)
    conv.generator = torch.Generator().manual_seed(3)
    x = torch.ones(8, 1, 3, 3)  # every position sees the same 1×1 patch
    with torch.no_grad():
        out = conv(x)
    assert torch.equal(out[:, :, 0, 0], out[:, :, 2, 1])
    assert torch.equal(out[:, :, 1, 1], out[:, :, 0, 2])
    # ... while different examples get different kernels.
    assert not torch.equal(out[0], out[1])


def test_conv_per_example_moments_match_weight_draws() -> None:
    torch.manual_seed(0)
    base = nn.Conv2d(2, 3, kernel_size=2, padding=1, stride=1)
    conv = GaussianConv2d(base, log_sigma_init=-1.0)
    conv.generator = torch.Generator().manual_seed(5)
    x1 = torch.randn(1, 2, 3, 3)
    draws = 20_000
    with torch.no_grad():
        out = conv(x1.expand(draws, -1, -1, -1))
        var_w = torch.exp(2 * conv.weight_log_sigma)
        exact_mean = nn.functional.conv2d(x1, conv.weight_mu, conv.bias_mu, padding=1)[0]
        exact_var = (
            nn.functional.conv2d(x1**2, var_w, padding=1)[0]
            + torch.exp(2 * conv.bias_log_sigma)[:, None, None]  # type: ignore[operator]
        )
    se = torch.sqrt(exact_var / draws)
    assert torch.all((out.mean(0) - exact_mean).abs() < 5 * se)
    assert torch.allclose(out.var(0), exact_var, rtol=0.06)


def test_conv_shared_mode_and_mean_mode() -> None:
    torch.manual_seed(0)
    conv = GaussianConv2d(nn.Conv2d(1, 2, kernel_size=3, padding=1), log_sigma_init=-1.0)
    conv.generator = torch.Generator().manual_seed(1)
    x = torch.ones(2, 1, 4, 4)
    conv.mode = "shared"
    with torch.no_grad():
        shared = conv(x)
    assert torch.equal(shared[0], shared[1])  # one draw per batch (training only)
    conv.mode = "mean"
    with torch.no_grad():
        assert torch.equal(
            conv(x), nn.functional.conv2d(x, conv.weight_mu, conv.bias_mu, padding=1)
        )
