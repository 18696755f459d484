"""Training the diagonal posterior: optimizers, keeping the best epoch, estimated bounds."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

from pacbound.bounds import kl_inv_upper
from pacbound.posterior.fit import (
    TrainingRecipe,
    estimate_bound,
    kl_over_grid,
    kl_sufficient_stats,
    train_diagonal_posterior,
)
from pacbound.posterior.network import StochasticNetwork, build_stochastic_network
from pacbound.posterior.priors import ScaleGrid
from pacbound.posterior.streams import DrawStream


def _setup(seed: int = 0) -> tuple[StochasticNetwork, list[Tensor], Tensor, Tensor]:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(5, 16), nn.ReLU(), nn.Linear(16, 2))
    priors = [p.detach().clone() for p in model.parameters()]
    x = torch.randn(400, 5)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).long()
    net = build_stochastic_network(model)
    net.set_log_sigma(math.log(0.05))
    return net, priors, x, y


def _means(net: StochasticNetwork) -> list[Tensor]:
    return [s.mu.detach().clone() for s in net.slots]


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_keep_best_restores_the_epoch_with_the_smallest_estimate(optimizer: str) -> None:
    net, priors, x, y = _setup()
    scripted = iter([0.50, 0.40, 0.30, 0.45])  # before training, then after epochs 1..3
    seen: list[list[Tensor]] = []

    def select(n: StochasticNetwork) -> float:
        seen.append(_means(n))
        return next(scripted)

    recipe = TrainingRecipe(epochs=3, lr=0.05, optimizer=optimizer, batch_size=100)  # type: ignore[arg-type]
    history = train_diagonal_posterior(
        net, priors, 0.05, x, y, recipe, n_bound=400, log_term=5.0,
        device=torch.device("cpu"), select=select,
    )  # fmt: skip
    assert history.kept_epoch == 2
    assert history.estimated_bound_per_epoch == (0.50, 0.40, 0.30, 0.45)
    assert len(history.objective_per_epoch) == 3
    assert not all(torch.equal(a, b) for a, b in zip(seen[2], seen[3], strict=True))
    for kept, now in zip(seen[2], _means(net), strict=True):
        assert torch.equal(kept, now)


def test_keep_best_keeps_the_start_when_training_only_hurts() -> None:
    net, priors, x, y = _setup()
    start = _means(net)
    scripted = iter([0.10, 0.20, 0.30])
    recipe = TrainingRecipe(epochs=2, lr=0.05, batch_size=100)
    history = train_diagonal_posterior(
        net, priors, 0.05, x, y, recipe, n_bound=400, log_term=5.0,
        device=torch.device("cpu"), select=lambda n: next(scripted),
    )  # fmt: skip
    assert history.kept_epoch == 0
    for a, b in zip(start, _means(net), strict=True):
        assert torch.equal(a, b)


def test_keep_last_keeps_the_final_state() -> None:
    net, priors, x, y = _setup()
    calls: list[int] = []
    recipe = TrainingRecipe(epochs=2, lr=0.05, batch_size=100, keep_best=False)
    history = train_diagonal_posterior(
        net, priors, 0.05, x, y, recipe, n_bound=400, log_term=5.0,
        device=torch.device("cpu"), select=lambda n: calls.append(1) or 0.0,
    )  # fmt: skip
    assert calls == []  # the selector is not even evaluated
    assert history.kept_epoch == 2
    assert history.estimated_bound_per_epoch == ()


def test_sgd_moves_means_less_than_adam_at_the_same_learning_rate() -> None:
    """Adam's normalised steps move every mean by ~lr per step; SGD follows the gradient."""
    moved = {}
    for optimizer in ("sgd", "adam"):
        net, priors, x, y = _setup()
        recipe = TrainingRecipe(epochs=2, lr=1e-2, optimizer=optimizer, batch_size=100)  # type: ignore[arg-type]
        train_diagonal_posterior(
            net, priors, 0.05, x, y, recipe, n_bound=400, log_term=5.0,
            device=torch.device("cpu"),
        )  # fmt: skip
        moved[optimizer] = sum(
            float(((s.mu.detach() - p) ** 2).sum()) for s, p in zip(net.slots, priors, strict=True)
        )
    assert moved["sgd"] < moved["adam"]


def test_unknown_optimizer_is_refused() -> None:
    net, priors, x, y = _setup()
    with pytest.raises(ValueError, match="unknown optimizer 'rmsprop'"):
        train_diagonal_posterior(
            net, priors, 0.05, x, y, TrainingRecipe(optimizer="rmsprop"),  # type: ignore[arg-type]
            n_bound=400, log_term=5.0, device=torch.device("cpu"),
        )  # fmt: skip


def test_estimate_bound_is_the_kl_inverse_at_the_best_grid_scale() -> None:
    net, priors, x, y = _setup()
    grid = ScaleGrid.log_spaced(1e-3, 1.0, 31)
    risk, est, j = estimate_bound(
        net, priors, grid, x, y, n_bound=400, log_term=7.0,
        stream=DrawStream(0, "test"),
    )  # fmt: skip
    kls = kl_over_grid(kl_sufficient_stats(net, priors), grid)
    assert j == int(kls.argmin())
    assert grid.scales[j] == pytest.approx(0.05, rel=0.26)  # posterior = prior mean, σ = 0.05
    assert 0.0 <= risk <= 1.0
    assert est == kl_inv_upper(risk, (float(kls[j]) + 7.0) / 400)
    assert est > risk
