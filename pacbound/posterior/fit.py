"""Fitting the posterior: an isotropic σ by search, or a diagonal posterior by training.

Neither step needs to be "honest" in the PAC-Bayes sense: the posterior may depend on all
of S. What must be paid for is the choice of the prior scale (a grid, δ/G each), and the
final risk estimate must use fresh Monte-Carlo draws (done in :mod:`pacbound.certify`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import Tensor, nn

from pacbound.bounds import kl_inv_upper
from pacbound.errors import NumericalError
from pacbound.parallel.training import (
    average_gradients,
    batch_share,
    rank_seed,
    shared_loss,
)
from pacbound.posterior.kl import gaussian_kl_differentiable
from pacbound.posterior.network import StochasticNetwork
from pacbound.posterior.objectives import Objective, bound_objective
from pacbound.posterior.priors import ScaleGrid
from pacbound.posterior.risk import bounded_cross_entropy, count_stochastic_errors
from pacbound.posterior.streams import DrawStream

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


def estimate_bound(
    network: StochasticNetwork,
    prior_means: list[Tensor],
    grid: ScaleGrid,
    x: Tensor,
    y: Tensor,
    *,
    n_bound: int,
    log_term: float,
    stream: DrawStream,
    batch_size: int = 1024,
    device: torch.device | None = None,
    progress: ProgressHook | None = None,
) -> tuple[float, float, int]:
    """(estimated risk, estimated kl bound, best prior-scale index) of the current posterior.

    The risk is a one-pass per-example estimate on (x, y); the bound is kl⁻¹(risk, (KL + log
    term)/n) at the grid's best prior scale. For *choosing* a posterior only: the draws made
    here are never reused by a certificate (the next pass of ``stream``, keyed by example).
    """
    risk = count_stochastic_errors(
        network,
        x,
        y,
        passes=1,
        stream=stream,
        batch_size=batch_size,
        device=device,
        progress=progress,
    ).rate
    kls = kl_over_grid(kl_sufficient_stats(network, prior_means), grid)
    j = int(np.argmin(kls))
    est = float(kl_inv_upper(risk, max(float(kls[j]) + log_term, 0.0) / n_bound))
    return risk, est, j


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
    stream: DrawStream,
    sigma_candidates: tuple[float, ...] = SIGMA_CANDIDATES,
    batch_size: int = 1024,
    device: torch.device | None = None,
    progress: ProgressHook | None = None,
) -> IsotropicSearch:
    """Pick an isotropic σ_q (and σ_p from the grid) minimising an estimated kl bound.

    The risk for each candidate is a one-pass per-example estimate on (x, y) (a subset of
    the data is enough); these draws steer the choice only and are never reused by the
    certificate (candidate k takes pass k of ``stream``).
    """
    log_term = math.log(2.0 * math.sqrt(n_bound) * grid.size / delta_pac_bayes)
    rows = []
    best: tuple[float, float, int] | None = None
    for sigma in sigma_candidates:
        network.set_log_sigma(math.log(sigma))
        risk, est, j = estimate_bound(
            network,
            prior_means,
            grid,
            x,
            y,
            n_bound=n_bound,
            log_term=log_term,
            stream=stream,
            batch_size=batch_size,
            device=device,
            progress=progress,
        )
        rows.append((sigma, risk, est))
        if best is None or est < best[0]:
            best = (est, sigma, j)
    assert best is not None
    network.set_log_sigma(math.log(best[1]))
    return IsotropicSearch(best[1], best[2], best[0], tuple(rows))


Optimizer = Literal["sgd", "adam"]


@dataclass(frozen=True)
class TrainingRecipe:
    """How the diagonal posterior is trained (documented defaults; all configurable).

    The means μ are moved by ``optimizer`` (SGD with ``momentum``, or Adam) at learning rate
    ``lr``; log σ and the continuous prior scale by Adam at ``sigma_lr``. The loss is the
    chosen bound ``objective`` evaluated on the bounded cross-entropy (probabilities clamped
    at ``p_min``) of stochastic forward passes. SGD is the default: Adam's per-coordinate
    step normalisation moves every mean by about ``lr`` per step, also those whose gradient
    is noise, so the KL to the prior grows much faster than the risk falls.

    With ``keep_best`` the posterior is evaluated before training and after every epoch
    (estimated bound: one pass of fresh per-example draws on a subset, the KL at the best
    grid scale) and the best state is kept. PAC-Bayes bounds hold for every posterior at
    once, so choosing among them is free; the certificate's Monte-Carlo draws are made
    afterwards and are independent of this choice.
    """

    epochs: int = 10
    lr: float = 1e-3
    sigma_lr: float = 1e-2
    optimizer: Optimizer = "sgd"
    momentum: float = 0.9
    batch_size: int = 500
    p_min: float = 1e-4
    objective: Objective = "kl"
    keep_best: bool = True
    seed: int = 0

    def to_dict(self) -> dict[str, object]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class TrainingHistory:
    """What training did: the mean objective per epoch and, with ``keep_best``, the estimated
    bound before training (index 0) and after each epoch, and the epoch kept (0 = the state
    before training)."""

    objective_per_epoch: tuple[float, ...]
    estimated_bound_per_epoch: tuple[float, ...]
    kept_epoch: int

    def to_dict(self) -> dict[str, object]:
        return {
            "objective_per_epoch": list(self.objective_per_epoch),
            "estimated_bound_per_epoch": list(self.estimated_bound_per_epoch),
            "kept_epoch": self.kept_epoch,
        }


#: Estimates the bound of the network's current posterior (for keeping the best epoch).
Selector = Callable[[StochasticNetwork], float]


def _diverged(value: Tensor, kl: Tensor, epoch: int, step: int) -> None:
    raise NumericalError(
        f"posterior training diverged (loss={float(value.detach())!r}, "
        f"KL={float(kl.detach())!r}) at epoch {epoch + 1}, step {step + 1}; "
        "lower --posterior-lr / --sigma-lr"
    )


def _mean_optimizer(params: list[nn.Parameter], recipe: TrainingRecipe) -> torch.optim.Optimizer:
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(params, lr=recipe.lr, momentum=recipe.momentum)
    if recipe.optimizer == "adam":
        return torch.optim.Adam(params, lr=recipe.lr)
    raise ValueError(f"unknown optimizer {recipe.optimizer!r}; valid: 'sgd', 'adam'")


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
    select: Selector | None = None,
    progress: ProgressHook | None = None,
) -> TrainingHistory:
    """Train μ and per-weight σ of ``network`` in place.

    The prior scale is a free continuous parameter during training; the caller snaps it to
    the grid afterwards (and pays ln G). With ``recipe.keep_best`` and a ``select`` function,
    the network ends in the state (before training or after some epoch) with the smallest
    estimated bound. Raises :class:`NumericalError` naming the epoch and step if the
    objective or the KL becomes NaN/Inf.

    Under torchrun every rank takes its share of each mini-batch (the one-process order),
    the surrogate risk is the whole batch's (summed over ranks) and the gradients are
    averaged before each step, so every rank keeps the same posterior; rank r > 0 draws its
    training noise from its own stream (:func:`pacbound.parallel.training.rank_seed`). One
    process is bit for bit the one-process run; at world size > 1 the trained posterior
    differs from it (the other ranks' noise, floating-point reduction order), which the
    certificate, computed from the posterior as saved, does not depend on.
    """
    # Eval mode throughout: the Gaussian layers draw in either mode, and a train-mode pass
    # would let normalization layers refit their running statistics to the data (buffers
    # the KL does not pay for) and dropout change the model being certified.
    network.to(device).eval()
    gen = torch.Generator(device=device).manual_seed(rank_seed(recipe.seed))
    log_prior_scale = torch.tensor(math.log(initial_prior_scale), device=device, requires_grad=True)
    mean_opt = _mean_optimizer(network.mean_parameters(), recipe)
    sigma_opt = torch.optim.Adam(
        [*network.log_sigma_parameters(), log_prior_scale], lr=recipe.sigma_lr
    )
    shuffle = torch.Generator().manual_seed(recipe.seed)
    priors = [m.to(device) for m in prior_means]
    n = x.shape[0]
    history: list[float] = []
    selecting = recipe.keep_best and select is not None
    estimates: list[float] = []
    best_state: dict[str, Tensor] | None = None
    kept = 0
    if selecting:
        assert select is not None
        estimates.append(select(network))
        best_state = _snapshot(network)
    for epoch in range(recipe.epochs):
        network.set_mode("shared", gen)
        perm = torch.randperm(n, generator=shuffle)
        mean_objective = _train_epoch(
            network,
            (x, y, perm),
            priors,
            log_prior_scale,
            (mean_opt, sigma_opt),
            recipe,
            n_bound=n_bound,
            log_term=log_term,
            epoch=epoch,
            device=device,
            progress=progress,
        )
        history.append(mean_objective)
        if selecting:
            assert select is not None
            estimates.append(select(network))
            if estimates[-1] < estimates[kept]:
                kept = epoch + 1
                best_state = _snapshot(network)
    if selecting and best_state is not None and kept != recipe.epochs:
        network.load_state_dict(best_state)
    network.eval()
    return TrainingHistory(tuple(history), tuple(estimates), kept if selecting else recipe.epochs)


def _train_epoch(
    network: StochasticNetwork,
    batches_of: tuple[Tensor, Tensor, Tensor],
    priors: list[Tensor],
    log_prior_scale: Tensor,
    optimizers: tuple[torch.optim.Optimizer, torch.optim.Optimizer],
    recipe: TrainingRecipe,
    *,
    n_bound: int,
    log_term: float,
    epoch: int,
    device: torch.device,
    progress: ProgressHook | None,
) -> float:
    """One epoch of mini-batch steps on the bound objective over (x, y) in the order
    ``perm``; returns the mean objective."""
    x, y, perm = batches_of
    mean_opt, sigma_opt = optimizers
    total, batches = 0.0, 0
    for step, start in enumerate(range(0, int(x.shape[0]), recipe.batch_size)):
        idx = perm[start : start + recipe.batch_size]
        share = batch_share(idx)
        local = None
        if not share.empty:
            xb, yb = x[share.rows].to(device), y[share.rows].to(device)
            local = bounded_cross_entropy(network(xb), yb, recipe.p_min)
        surrogate = shared_loss(local, share, like=network.slots[0].mu)
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
        mean_opt.zero_grad(set_to_none=True)
        sigma_opt.zero_grad(set_to_none=True)
        objective.backward()
        average_gradients(
            [*network.mean_parameters(), *network.log_sigma_parameters(), log_prior_scale]
        )
        mean_opt.step()
        sigma_opt.step()
        total += float(objective.detach())
        batches += 1
        if progress is not None:
            progress(int(idx.numel()))
    return total / max(batches, 1)


def _snapshot(network: StochasticNetwork) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in network.state_dict().items()}
