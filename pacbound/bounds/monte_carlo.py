"""Sound upper bounds on a stochastic classifier's empirical risk from Monte-Carlo draws.

L̂(Q) = E_{h~Q} (1/n) Σ_i ℓ(h, z_i) cannot be computed exactly; the certificate uses an upper
confidence bound on it, paid for with its own δ′ (MATH.md §3).

All three estimators (whole-network, per-example and per-batch draws) average independent
[0, 1]-valued variables whose means average to L̂(Q);
the one-sided Chernoff bound then gives, with probability ≥ 1 − δ′ over the draws,
L̂(Q) ≤ kl⁻¹(ê, ln(1/δ′) / m), m the number of independent draws actually made
(Langford & Caruana 2002). For non-identical means the bound still holds (the MGF of the
sum is at most that of a binomial with the average mean).
"""

from __future__ import annotations

import math
from dataclasses import replace

from pacbound.bounds._conservative import up
from pacbound.bounds.kl import kl_inv_upper
from pacbound.bounds.result import BoundResult
from pacbound.bounds.validation import check_count, check_delta, check_risk
from pacbound.errors import InvalidInputError


def mc_risk_upper_bound(mean_loss: float, *, draws: int, delta: float) -> BoundResult:
    """L̂(Q) ≤ kl⁻¹(ê, ln(1/δ′)/m) for the average ê of m independent [0, 1] draws.

    >>> round(mc_risk_upper_bound(0.0, draws=1000, delta=0.01).value, 9)  # 1 − 0.01^(1/1000)
    0.004594583
    """
    e = check_risk(mean_loss, "mean_loss")
    m = check_count(draws, "draws")
    delta = check_delta(delta)
    rhs = up(-math.log(delta) / m)
    value = float(kl_inv_upper(e, rhs))
    return BoundResult(
        value, "monte-carlo-chernoff", e, m, delta, 0.0, {"draws": float(m), "rhs": rhs}
    )


def mc_upper_whole_network(mean_loss: float, *, m: int, delta: float) -> BoundResult:
    """Whole-network draws: m networks h_j ~ Q, each evaluated on all n examples.

    ``mean_loss`` is the mean over j of L̂(h_j). The draw count is m, not m·n: the n losses
    of one network are not independent given the sample.
    """
    return mc_risk_upper_bound(mean_loss, draws=m, delta=delta)


def mc_upper_per_example(mean_loss: float, *, n: int, passes: int, delta: float) -> BoundResult:
    """Per-example draws: a fresh h_ik ~ Q for each example i and pass k (n·K draws).

    ``mean_loss`` is the average of the n·K losses ℓ(h_ik, z_i).

    >>> mc_upper_per_example(0.01, n=60000, passes=5, delta=0.01).n
    300000
    """
    n = check_count(n, "n")
    passes = check_count(passes, "passes")
    return mc_risk_upper_bound(mean_loss, draws=n * passes, delta=delta)


def per_batch_size(n: int, batch_size: int) -> int:
    """The per-batch draws' batch B: the largest divisor of n not above ``batch_size``.

    Per-batch draws need n/B batches of exactly B examples, so that every example is in one
    batch per pass and the batch means average to L̂(Q) (MATH.md §10).

    >>> per_batch_size(60000, 1024), per_batch_size(10007, 1024)
    (1000, 1)
    """
    n = check_count(n, "n")
    batch_size = check_count(batch_size, "batch_size")
    return next(b for b in range(min(n, batch_size), 0, -1) if n % b == 0)


def mc_upper_per_batch(
    mean_loss: float, *, n: int, passes: int, batch: int, delta: float
) -> BoundResult:
    """Per-batch draws: one h_bk ~ Q for each batch b of B examples and pass k.

    The batch error rates X_bk ∈ [0, 1] are independent given S, so the count is the number
    of batches, m = K·n/B, not K·n (MATH.md §10). ``mean_loss`` is the average of the X_bk
    (with equal batches, also the average of all K·n losses). B must divide n.

    >>> mc_upper_per_batch(0.01, n=60000, passes=5, batch=1000, delta=0.01).n
    300
    """
    n = check_count(n, "n")
    passes = check_count(passes, "passes")
    batch = check_count(batch, "batch")
    if n % batch:
        raise InvalidInputError(
            f"per-batch draws need batches of equal size: B = {batch} does not divide n = {n} "
            f"(use B = {per_batch_size(n, batch)}, the largest divisor of n not above {batch})"
        )
    result = mc_risk_upper_bound(mean_loss, draws=passes * (n // batch), delta=delta)
    return replace(result, terms={**result.terms, "batch": float(batch)})
