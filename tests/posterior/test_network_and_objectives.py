"""Stochastic copies of models, coverage checks, and the differentiable training objective."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from pacbound.bounds import kl_inv_upper
from pacbound.errors import InvalidInputError
from pacbound.posterior.network import build_stochastic_network
from pacbound.posterior.objectives import bound_objective, kl_inverse
from pacbound.posterior.priors import ScaleGrid, split_data


def test_every_parameter_is_covered_in_order() -> None:
    model = nn.Sequential(
        nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 4 * 4, 3, bias=False)
    )
    net = build_stochastic_network(model)
    assert [s.name for s in net.slots] == [n for n, _ in model.named_parameters()]
    assert net.num_parameters() == sum(p.numel() for p in model.parameters())
    for slot, (_, p) in zip(net.slots, model.named_parameters(), strict=True):
        assert torch.equal(slot.mu, p)
    net.set_mode("mean")
    x = torch.randn(3, 1, 6, 6)
    with torch.no_grad():
        assert torch.allclose(net(x), model(x), atol=1e-6)


def test_unsupported_parameterized_modules_are_listed() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 4), nn.RMSNorm(4), nn.Linear(4, 2))
    with pytest.raises(InvalidInputError, match=r"2 \(RMSNorm\)"):
        build_stochastic_network(model)


def test_buffers_must_equal_their_data_independent_values() -> None:
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2, affine=False), nn.Flatten())
    fresh = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(InvalidInputError, match=r"1\.running_mean"):
        build_stochastic_network(model)  # no reference at all
    net = build_stochastic_network(model, fixed_buffers=fresh)
    assert net.num_parameters() == sum(p.numel() for p in model.parameters())
    with torch.no_grad():
        model[1].running_mean.add_(0.5)  # statistics estimated from data
    with pytest.raises(InvalidInputError, match=r"1\.running_mean \(float32\)"):
        build_stochastic_network(model, fixed_buffers=fresh)


def test_kl_inverse_gradients_match_finite_differences() -> None:
    q = torch.tensor(0.05, dtype=torch.float64, requires_grad=True)
    c = torch.tensor(0.02, dtype=torch.float64, requires_grad=True)
    p = kl_inverse(q, c)
    p.backward()
    h = 1e-6
    dq = (kl_inv_upper(0.05 + h, 0.02) - kl_inv_upper(0.05 - h, 0.02)) / (2 * h)
    dc = (kl_inv_upper(0.05, 0.02 + h) - kl_inv_upper(0.05, 0.02 - h)) / (2 * h)
    assert q.grad is not None and c.grad is not None
    assert float(q.grad) == pytest.approx(dq, rel=1e-4)
    assert float(c.grad) == pytest.approx(dc, rel=1e-4)
    assert float(p.detach()) == pytest.approx(kl_inv_upper(0.05, 0.02), rel=1e-12)


def test_quad_objective_value() -> None:
    emp = torch.tensor(0.02, dtype=torch.float64)
    kl = torch.tensor(5000.0, dtype=torch.float64)
    log_term = math.log(2 * math.sqrt(60000) / 0.025)
    value = bound_objective(emp, kl, n=60000, log_term=log_term, objective="quad")
    assert float(value) == pytest.approx(0.2050453143, rel=1e-9)  # MATH.md §2 row 1
    kl_value = bound_objective(emp, kl, n=60000, log_term=log_term, objective="kl")
    assert float(kl_value) == pytest.approx(0.1343519412, rel=1e-9)


def test_scale_grid_parsing_and_errors() -> None:
    grid = ScaleGrid.parse("1e-3:1e-1:3")
    assert grid.scales == pytest.approx((1e-3, 1e-2, 1e-1))
    assert ScaleGrid.parse("0.1,0.2").size == 2
    with pytest.raises(InvalidInputError, match="--prior-scales"):
        ScaleGrid.parse("a:b")
    with pytest.raises(InvalidInputError, match="must exceed"):
        ScaleGrid.parse("1:0.1:4")


def test_split_is_seeded_disjoint_and_complete() -> None:
    a = split_data(1000, prior_fraction=0.3, seed=7)
    b = split_data(1000, prior_fraction=0.3, seed=7)
    c = split_data(1000, prior_fraction=0.3, seed=8)
    assert a.sha256 == b.sha256 != c.sha256
    assert a.prior_indices.numel() == 300 and a.bound_indices.numel() == 700
    both = torch.cat([a.prior_indices, a.bound_indices])
    assert torch.equal(torch.sort(both).values, torch.arange(1000))
    for bad in (0.0, 1.0, -0.5, float("nan")):
        with pytest.raises(InvalidInputError, match="--prior-fraction"):
            split_data(1000, prior_fraction=bad, seed=0)
