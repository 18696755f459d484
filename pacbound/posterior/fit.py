"""Fitting the posterior: an isotropic σ by search, or a diagonal posterior by training.

Neither step needs to be "honest" in the PAC-Bayes sense: the posterior may depend on all
of S. What must be paid for is the choice of the prior scale (a grid, δ/G each), and the
final risk estimate must use fresh Monte-Carlo draws (done in :mod:`pacbound.certify`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from pacbound.bounds import kl_inv_upper
from pacbound.errors import NumericalError
from pacbound.posterior.kl import gaussian_kl_differentiable
from pacbound.posterior.network import StochasticNetwork
from pacbound.posterior.objectives import Objective, bound_objective
from pacbound.posterior.priors import ScaleGrid
from pacbound.posterior.risk import bounded_cross_entropy, count_stochastic_errors

ProgressHook = Callable[[int], None]


@torch.no_grad()
def kl_sufficient_stats(
    network: StochasticNetwork, prior_means: list[Tensor]
) -> tuple[float, float, int]:
    """(A, L, D) with A = Σ σ_q² + (μ_q − μ_p)², L = Σ ln σ_q², D = number of weights.

    For a prior N(μ_p, σ_p² I): KL(σ_p) = ½[A/σ_p² − D + D ln σ_p² − L].
    """
    a = 0.0
    log_sum = 0.0
    d = 0
    for slot, mu_p in zip(network.slots, prior_means, strict=True):
        mu = slot.mu.detach().double()
        log_sigma = slot.log_sigma.detach().double()
        a += float((torch.exp(2.0 * log_sigma) + (mu - mu_p.double()) ** 2).sum())
        log_sum += float(2.0 * log_sigma.sum())
        d += mu.numel()
    return a, log_sum, d


def kl_over_grid(stats: tuple[float, float, int], grid: ScaleGrid) -> np.ndarray:
    """KL for every prior scale of the grid (approximate: for choosing, not certifying)."""
    a, log_sum, d = stats
    s2 = np.asarray(grid.scales, dtype=np.float64) ** 2
    return 0.5 * (a / s2 - d + d * np.log(s2) - log_sum)


#: Isotropic σ_q values tried by the search: 41 log-spaced values in [1e-5, 1].
SIGMA_CANDIDATES: tuple[float, ...] = tuple(float(v) for v in np.geomspace(1e-5, 1.0, 41))


@dataclass(frozen=True)
class IsotropicSearch:
    """Result of the σ_q search: the chosen σ_q, the σ_p grid index, the estimated bound."""

    sigma_q: float
    prior_index: int
    estimated_bound: float
    candidates: tuple[tuple[float, float, float], ...]  # (σ_q, estimated risk, est. bound)


def search_isotropic_sigma(
    network: StochasticNetwork,
    prior_means: list[Tensor],
    grid: ScaleGrid,
    x: Tensor,
    y: Tensor,
    *,
    n_bound: int,
    delta_pac_bayes: float,
    generator: torch.Generator,
    sigma_candidates: tuple[float, ...] = SIGMA_CANDIDATES,
    batch_size: int = 1024,
    device: torch.device | None = None,
    progress: ProgressHook | None = None,
) -> IsotropicSearch:
    """Pick an isotropic σ_q (and σ_p from the grid) minimising an estimated kl bound.

    The risk for each candidate is a one-pass per-example estimate on (x, y) (a subset of
    the data is enough); these draws steer the choice only and are never reused by the
    certificate.
    """
    log_term = math.log(2.0 * math.sqrt(n_bound) * grid.size / delta_pac_bayes)
    rows = []
    best: tuple[float, float, int] | None = None
    for sigma in sigma_candidates:
        network.set_log_sigma(math.log(sigma))
        risk = count_stochastic_errors(
            network,
            x,
            y,
            passes=1,
            generator=generator,
            batch_size=batch_size,
            device=device,
            progress=progress,
        ).rate
        kls = kl_over_grid(kl_sufficient_stats(network, prior_means), grid)
        j = int(np.argmin(kls))
        est = float(kl_inv_upper(risk, max(float(kls[j]) + log_term, 0.0) / n_bound))
        rows.append((sigma, risk, est))
        if best is None or est < best[0]:
            best = (est, sigma, j)
    assert best is not None
    network.set_log_sigma(math.log(best[1]))
    return IsotropicSearch(best[1], best[2], best[0], tuple(rows))


@dataclass(frozen=True)
class TrainingRecipe:
    """How the diagonal posterior is trained (documented defaults; all configurable).

    Adam on μ (learning rate ``lr``) and on log σ, log σ_p (``sigma_lr``), minimising the
    chosen bound ``objective`` evaluated on the bounded cross-entropy (probabilities clamped
    at ``p_min``) of stochastic forward passes.
    """

    epochs: int = 10
    lr: float = 1e-3
    sigma_lr: float = 1e-2
    batch_size: int = 500
    p_min: float = 1e-4
    objective: Objective = "kl"
    seed: int = 0

    def to_dict(self) -> dict[str, object]:
        return dict(self.__dict__)


def _diverged(value: Tensor, kl: Tensor, epoch: int, step: int) -> None:
    raise NumericalError(
        f"posterior training diverged (loss={float(value.detach())!r}, "
        f"KL={float(kl.detach())!r}) at epoch {epoch + 1}, step {step + 1}; "
        "lower --posterior-lr / --sigma-lr"
    )


def train_diagonal_posterior(
    network: StochasticNetwork,
    prior_means: list[Tensor],
    initial_prior_scale: float,
    x: Tensor,
    y: Tensor,
    recipe: TrainingRecipe,
    *,
    n_bound: int,
    log_term: float,
    device: torch.device,
    progress: ProgressHook | None = None,
) -> list[float]:
    """Train μ and per-weight σ of ``network`` in place; returns the objective per epoch.

    The prior scale is a free continuous parameter during training; the caller snaps it to
    the grid afterwards (and pays ln G). Raises :class:`NumericalError` naming the epoch
    and step if the objective or the KL becomes NaN/Inf.
    """
    network.to(device).train()
    gen = torch.Generator(device=device).manual_seed(recipe.seed)
    network.set_mode("shared", gen)
    log_prior_scale = torch.tensor(math.log(initial_prior_scale), device=device, requires_grad=True)
    opt = torch.optim.Adam(
        [
            {"params": network.mean_parameters(), "lr": recipe.lr},
            {"params": [*network.log_sigma_parameters(), log_prior_scale], "lr": recipe.sigma_lr},
        ]
    )
    shuffle = torch.Generator().manual_seed(recipe.seed)
    priors = [m.to(device) for m in prior_means]
    n = x.shape[0]
    history: list[float] = []
    for epoch in range(recipe.epochs):
        perm = torch.randperm(n, generator=shuffle)
        total, batches = 0.0, 0
        for step, start in enumerate(range(0, n, recipe.batch_size)):
            idx = perm[start : start + recipe.batch_size]
            xb, yb = x[idx].to(device), y[idx].to(device)
            surrogate = bounded_cross_entropy(network(xb), yb, recipe.p_min)
            sigma_p = torch.exp(log_prior_scale)
            kl = sum(
                (
                    gaussian_kl_differentiable(s.mu, torch.exp(s.log_sigma), m, sigma_p)
                    for s, m in zip(network.slots, priors, strict=True)
                ),
                torch.zeros((), dtype=torch.float64, device=device),
            )
            if not (torch.isfinite(surrogate) and torch.isfinite(kl)):
                _diverged(surrogate, kl, epoch, step)
            objective = bound_objective(
                surrogate, kl, n=n_bound, log_term=log_term, objective=recipe.objective
            )
            if not torch.isfinite(objective):
                _diverged(objective, kl, epoch, step)
            opt.zero_grad(set_to_none=True)
            objective.backward()
            opt.step()
            total += float(objective.detach())
            batches += 1
            if progress is not None:
                progress(int(idx.numel()))
        history.append(total / max(batches, 1))
    network.eval()
    return history
