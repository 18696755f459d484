"""Diagonal-Gaussian KL against torch.distributions."""

from __future__ import annotations

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from pacbound.errors import NumericalError
from pacbound.posterior.kl import gaussian_kl, gaussian_kl_differentiable


def test_gaussian_kl_matches_torch_distributions() -> None:
    gen = torch.Generator().manual_seed(0)
    mu_q, mu_p = torch.randn(1000, generator=gen), torch.randn(1000, generator=gen)
    s_q = torch.rand(1000, generator=gen) + 0.05
    s_p = torch.rand(1000, generator=gen) + 0.05
    reference = float(
        kl_divergence(
            Normal(mu_q.double(), s_q.double()), Normal(mu_p.double(), s_p.double())
        ).sum()
    )
    ours = gaussian_kl([(mu_q, s_q, mu_p, s_p)])
    assert ours >= reference  # the margin only ever adds
    assert ours == pytest.approx(reference, rel=1e-10)


def test_gaussian_kl_blocks_add_up_and_scalar_prior_scale() -> None:
    mu = torch.linspace(-1, 1, 50)
    s = torch.full((50,), 0.1)
    one = gaussian_kl([(mu, s, torch.zeros(50), 0.5)])
    two = gaussian_kl(
        [(mu[:20], s[:20], torch.zeros(20), 0.5), (mu[20:], s[20:], torch.zeros(30), 0.5)]
    )
    assert one == pytest.approx(two, rel=1e-12)
    # Closed form for an isotropic case: ½ Σ [σq²/σp² + μ²/σp² − 1 + ln(σp²/σq²)].
    expected = 0.5 * float(
        (s**2 / 0.25 + mu.double() ** 2 / 0.25 - 1 + torch.log(torch.tensor(0.25 / 0.01))).sum()
    )
    assert one == pytest.approx(expected, rel=1e-6)


def test_kl_is_zero_when_posterior_equals_prior() -> None:
    mu, s = torch.randn(100), torch.full((100,), 0.3)
    assert gaussian_kl([(mu, s, mu, s)]) == pytest.approx(0.0, abs=1e-10)
    assert gaussian_kl([(mu, s, mu, s)]) >= 0.0


def test_nonpositive_scale_raises() -> None:
    with pytest.raises(NumericalError, match="not positive"):
        gaussian_kl([(torch.zeros(3), torch.tensor([0.1, 0.0, 0.1]), torch.zeros(3), 1.0)])


def test_differentiable_kl_agrees_and_has_gradients() -> None:
    mu = torch.randn(20, requires_grad=True)
    log_s = torch.full((20,), -1.0, requires_grad=True)
    kl = gaussian_kl_differentiable(mu, torch.exp(log_s), torch.zeros(20), 0.5)
    kl.backward()
    assert mu.grad is not None and log_s.grad is not None
    assert float(kl.detach()) == pytest.approx(
        gaussian_kl([(mu.detach(), torch.exp(log_s.detach()), torch.zeros(20), 0.5)]), rel=1e-6
    )
