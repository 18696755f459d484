"""Negative controls: the certification pipelines with a planted, optimistic bug.

A soundness harness is only evidence if it can fail. Each control below is a pipeline
variant built by passing an alternative function (no monkeypatching); the coverage runner
records its bound next to the correct one on the *same* run, and the test suite asserts that
the binomial test rejects it (MATH.md §9).

* :func:`n_full_gaussian_bound` — a data-dependent prior, but n counted as the whole sample
  |S| instead of |S_bound| (MATH.md §5; a peer's bug).
* :func:`midpoint_kl_inverse` — the kl inversion returns a midpoint instead of the upper end
  of its bracket (MATH.md §1). The real bug lands ~1e-6 below the truth, far below what any
  coverage experiment can resolve (the exact tests in ``tests/bounds`` catch that one); this
  control is the same mistake at the coarsest bracket, [q, kl⁻¹(q, c)], whose midpoint halves
  the slack.
* :func:`count_shared_draw_errors` — one weight draw per pass shared by all examples, while
  the Chernoff bound still counts n·K independent draws (MATH.md §3; a peer's bug).
* :func:`count_per_position_errors` — local reparameterization on a Linear that sees a
  sequence: noise drawn per position instead of one weight per example (pacbound before
  issue #11; MATH.md §10).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import torch
from torch import Tensor

from pacbound.bounds import kl_inv_upper
from pacbound.posterior.network import StochasticNetwork
from pacbound.posterior.risk import ErrorCount, batch_errors

#: ``kl_inverse(q, c)``: an (intended) upper inverse of the binary kl.
KlInverse = Callable[[float, float], float]

#: Names of the controls, as they appear in coverage results.
N_FULL = "control:n-full"
MIDPOINT = "control:midpoint-kl-inverse"
SHARED_DRAW = "control:shared-draw"
CONTROLS = (N_FULL, MIDPOINT, SHARED_DRAW)
#: The sequence-model control (:mod:`pacbound.harness.planted`), not a Gaussian-pipeline one.
PER_POSITION = "control:per-position-draws"


def correct_kl_inverse(q: float, c: float) -> float:
    return float(kl_inv_upper(q, c))


def midpoint_kl_inverse(q: float, c: float) -> float:
    """PLANTED BUG: the midpoint of the bracket [q, kl⁻¹(q, c)] instead of its upper end."""
    return 0.5 * (q + float(kl_inv_upper(q, c)))


def chernoff_bound(rate: float, *, draws: int, delta: float, kl_inverse: KlInverse) -> float:
    """kl⁻¹(ê, ln(1/δ′)/m): the Monte-Carlo upper bound with a pluggable kl inversion."""
    return kl_inverse(rate, math.log(1.0 / delta) / draws)


def gaussian_bound(
    rate: float,
    *,
    draws: int,
    kl: float,
    n: int,
    delta_pac_bayes: float,
    delta_monte_carlo: float,
    kl_inverse: KlInverse = correct_kl_inverse,
) -> float:
    """The Gaussian certificate re-assembled from its parts with pluggable pieces.

    kl⁻¹(kl⁻¹(ê, ln(1/δ′)/m), [KL + ln(2√n/δ_PB)]/n), capped at 1. With the correct pieces
    this reproduces ``certify_gaussian``'s value up to the library's outward rounding.
    """
    mc = chernoff_bound(rate, draws=draws, delta=delta_monte_carlo, kl_inverse=kl_inverse)
    rhs = (kl + math.log(2.0 * math.sqrt(n) / delta_pac_bayes)) / n
    return min(kl_inverse(mc, rhs), 1.0)


def n_full_gaussian_bound(
    rate: float,
    *,
    passes: int,
    kl: float,
    n_total: int,
    delta_pac_bayes: float,
    delta_monte_carlo: float,
) -> float:
    """PLANTED BUG: the data-dependent-prior certificate with n = |S| instead of |S_bound|.

    ``rate`` is still measured on S_bound; only the count is wrong (in the Monte-Carlo bound
    as n·K draws and in the PAC-Bayes bound as n).
    """
    return gaussian_bound(
        rate,
        draws=n_total * passes,
        kl=kl,
        n=n_total,
        delta_pac_bayes=delta_pac_bayes,
        delta_monte_carlo=delta_monte_carlo,
    )


@torch.no_grad()
def sample_network(network: StochasticNetwork, generator: torch.Generator) -> StochasticNetwork:
    """One whole-network draw h ~ Q as a deterministic network (mode ``mean`` at the draw)."""
    drawn = copy.deepcopy(network)
    for slot in drawn.slots:
        noise = torch.randn(slot.mu.shape, generator=generator, dtype=slot.mu.dtype)
        slot.mu.add_(torch.exp(slot.log_sigma) * noise.to(slot.mu.device))
    drawn.set_mode("mean")
    drawn.eval()
    return drawn


@torch.no_grad()
def count_shared_draw_errors(
    network: StochasticNetwork,
    x: Tensor,
    y: Tensor,
    *,
    passes: int,
    generator: torch.Generator,
    batch_size: int = 1024,
) -> ErrorCount:
    """PLANTED BUG: one draw per pass shared by all n examples, reported as n·K evaluations.

    The n losses of one pass are not independent given the sample, so the Chernoff bound
    with m = n·K is optimistic; the honest count would be m = K (whole-network draws).
    """
    errors = total = 0
    for _ in range(passes):
        h = sample_network(network, generator)
        for start in range(0, x.shape[0], batch_size):
            e, m = batch_errors(h(x[start : start + batch_size]), y[start : start + batch_size])
            errors, total = errors + e, total + m
    return ErrorCount(errors, total)


@torch.no_grad()
def count_per_position_errors(
    network: StochasticNetwork, x: Tensor, y: Tensor, *, generator: torch.Generator
) -> ErrorCount:
    """PLANTED BUG: per-position local reparameterization on sequence input (the training
    mode ``"shared"`` of the Linear layers), counted as n independent per-example draws."""
    network.set_mode("shared", generator)
    try:
        e, m = batch_errors(network(x), y)
    finally:
        network.set_mode("per_example")
    return ErrorCount(e, m)
