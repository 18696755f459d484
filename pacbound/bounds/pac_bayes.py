"""PAC-Bayes bounds on the true risk L(Q) of a stochastic classifier Q.

All bounds share one signature, ``(empirical_risk, *, kl, n, delta)`` with KL(Q‖P) in nats,
and hold with probability ≥ 1 − δ over an i.i.d. sample of size n, simultaneously for all
posteriors Q, for a loss with values in [0, 1] and a prior P fixed before the sample was
seen. Each returns a :class:`~pacbound.bounds.result.BoundResult` capped at 1.

The kl form is the tightest of the kl/classic/quad/lambda family for the same inputs (the
others are relaxations of it). Fix the certificate's inequality in advance; reporting the
best of several is itself a choice that costs a union bound.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy.special import gammaln, logsumexp, xlogy

from pacbound.bounds._conservative import clip_unit, up
from pacbound.bounds.kl import kl_inv_upper
from pacbound.bounds.result import BoundResult
from pacbound.bounds.validation import (
    check_count,
    check_delta,
    check_kl,
    check_open_interval,
    check_positive,
    check_risk,
)
from pacbound.errors import InvalidInputError

_EPS = float(np.finfo(np.float64).eps)
#: Above this n, ln ξ(n) is replaced by its upper bound ln(2√n) (valid, 0.47 nats looser).
XI_EXACT_MAX_N = 10_000_000


def _validate(empirical_risk: float, kl: float, n: int, delta: float) -> tuple:
    return check_risk(empirical_risk), check_kl(kl), check_count(n), check_delta(delta)


def log_two_sqrt_n_over_delta(n: int, delta: float) -> float:
    """ln(2√n/δ), the confidence term of the Seeger–Maurer bound, rounded up."""
    return up(math.log(2.0) + 0.5 * math.log(n) - math.log(delta))


def log_maurer_xi(n: int) -> float:
    """ln ξ(n), ξ(n) = Σ_{k=0}^{n} C(n,k) (k/n)^k (1 − k/n)^(n−k) (Maurer 2004), rounded up.

    Computed in log space with ``gammaln`` and ``logsumexp``; a margin for the rounding of
    the large ``gammaln`` terms is added so that the result is never below the exact value.
    √(πn/2) ≤ ξ(n) ≤ 2√n. Above ``XI_EXACT_MAX_N`` the upper bound ln(2√n) is returned.

    >>> round(log_maurer_xi(1), 12)  # ξ(1) = 2
    0.69314718056
    """
    n = check_count(n)
    if n > XI_EXACT_MAX_N:
        return up(math.log(2.0) + 0.5 * math.log(n))
    k = np.arange(n + 1, dtype=np.float64)
    log_binom = gammaln(n + 1.0) - gammaln(k + 1.0) - gammaln(n - k + 1.0)
    log_terms = log_binom + xlogy(k, k / n) + xlogy(n - k, (n - k) / n)
    value = float(logsumexp(log_terms))
    margin = 64.0 * _EPS * (float(gammaln(n + 1.0)) + n * math.log(n) + 1.0)
    return min(value + margin, up(math.log(2.0) + 0.5 * math.log(n)))


def _kl_form(
    empirical_risk: float, kl: float, n: int, log_term: float, method: str, delta: float
) -> BoundResult:
    rhs = up((kl + log_term) / n)
    value = clip_unit(float(kl_inv_upper(empirical_risk, rhs)))
    return BoundResult(
        value, method, empirical_risk, n, delta, kl, {"kl": kl, "log_term": log_term, "rhs": rhs}
    )


def pac_bayes_kl(empirical_risk: float, *, kl: float, n: int, delta: float) -> BoundResult:
    """Seeger–Maurer PAC-Bayes-kl bound (Seeger 2002; Maurer 2004).

    kl(L̂(Q) ‖ L(Q)) ≤ [KL(Q‖P) + ln(2√n/δ)] / n, hence L(Q) ≤ kl⁻¹(L̂(Q), RHS).

    >>> round(pac_bayes_kl(0.02, kl=5000.0, n=60000, delta=0.025).value, 10)
    0.1343519412
    """
    r, kl, n, delta = _validate(empirical_risk, kl, n, delta)
    return _kl_form(r, kl, n, log_two_sqrt_n_over_delta(n, delta), "pac-bayes-kl", delta)


def pac_bayes_kl_xi(empirical_risk: float, *, kl: float, n: int, delta: float) -> BoundResult:
    """PAC-Bayes-kl with Maurer's exact ξ(n) in place of 2√n (Maurer 2004, Thm 5).

    kl(L̂ ‖ L) ≤ [KL + ln(ξ(n)/δ)] / n; about 0.47 nats tighter than 2√n for large n.

    >>> pac_bayes_kl_xi(0.02, kl=5000.0, n=60000, delta=0.025).value < 0.1343519412
    True
    """
    r, kl, n, delta = _validate(empirical_risk, kl, n, delta)
    log_term = up(log_maurer_xi(n) - math.log(delta))
    return _kl_form(r, kl, n, log_term, "pac-bayes-kl-xi", delta)


def _b_term(kl: float, n: int, delta: float) -> tuple[float, float]:
    log_term = log_two_sqrt_n_over_delta(n, delta)
    return log_term, up((kl + log_term) / n)


def pac_bayes_classic(empirical_risk: float, *, kl: float, n: int, delta: float) -> BoundResult:
    """McAllester-style bound, as used by Pérez-Ortiz et al. (2021): L ≤ L̂ + √(B/2).

    B = [KL + ln(2√n/δ)] / n. A relaxation of the kl bound (Pinsker).

    >>> round(pac_bayes_classic(0.02, kl=5000.0, n=60000, delta=0.025).value, 10)
    0.2243257831
    """
    r, kl, n, delta = _validate(empirical_risk, kl, n, delta)
    log_term, b = _b_term(kl, n, delta)
    value = clip_unit(up(r + math.sqrt(b / 2.0)))
    return BoundResult(
        value, "pac-bayes-classic", r, n, delta, kl, {"kl": kl, "log_term": log_term, "B": b}
    )


def pac_bayes_quad(empirical_risk: float, *, kl: float, n: int, delta: float) -> BoundResult:
    """PAC-Bayes-quadratic (Rivasplata et al.; Pérez-Ortiz et al. 2021, eq. 8).

    L ≤ (√(L̂ + B/2) + √(B/2))², B = [KL + ln(2√n/δ)] / n.

    >>> round(pac_bayes_quad(0.02, kl=5000.0, n=60000, delta=0.025).value, 10)
    0.2050453143
    """
    r, kl, n, delta = _validate(empirical_risk, kl, n, delta)
    log_term, b = _b_term(kl, n, delta)
    value = clip_unit(up((math.sqrt(r + b / 2.0) + math.sqrt(b / 2.0)) ** 2))
    return BoundResult(
        value, "pac-bayes-quad", r, n, delta, kl, {"kl": kl, "log_term": log_term, "B": b}
    )


def pac_bayes_lambda(
    empirical_risk: float, *, kl: float, n: int, delta: float, lam: float
) -> BoundResult:
    """PAC-Bayes-λ (Thiemann et al. 2017, Thm 3), λ ∈ (0, 2) fixed before seeing the data.

    L ≤ L̂ / (1 − λ/2) + B / (λ(1 − λ/2)), B = [KL + ln(2√n/δ)] / n.

    >>> round(pac_bayes_lambda(0.1, kl=200.0, n=1000, delta=0.05, lam=1.0).value, 6)
    0.614286
    """
    r, kl, n, delta = _validate(empirical_risk, kl, n, delta)
    lam = check_open_interval(lam, "lam", 0.0, 2.0)
    log_term, b = _b_term(kl, n, delta)
    denom = 1.0 - lam / 2.0
    value = clip_unit(up(r / denom + b / (lam * denom)))
    return BoundResult(
        value,
        "pac-bayes-lambda",
        r,
        n,
        delta,
        kl,
        {"kl": kl, "log_term": log_term, "B": b, "lambda": lam},
    )


def _catoni_value(r: float, kl: float, n: int, log_inv_delta: float, c: float) -> float:
    exponent = -c * r - (kl + log_inv_delta) / n
    return clip_unit(up(-math.expm1(exponent) / -math.expm1(-c)))


def pac_bayes_catoni(
    empirical_risk: float, *, kl: float, n: int, delta: float, c: float
) -> BoundResult:
    """Catoni's bound (Catoni 2007, Thm 1.2.6) for a C > 0 fixed before seeing the data.

    L ≤ [1 − exp(−C L̂ − (KL + ln(1/δ)) / n)] / (1 − e^(−C)).

    >>> round(pac_bayes_catoni(0.1, kl=200.0, n=1000, delta=0.05, c=1.0).value, 6)
    0.413525
    """
    r, kl, n, delta = _validate(empirical_risk, kl, n, delta)
    c = check_positive(c, "c")
    log_inv_delta = up(-math.log(delta))
    value = _catoni_value(r, kl, n, log_inv_delta, c)
    return BoundResult(
        value, "pac-bayes-catoni", r, n, delta, kl, {"kl": kl, "log_term": log_inv_delta, "C": c}
    )


#: Default Catoni grid: C = 2^(j/4) for j = −16..16 (33 values spanning 1/16..16).
DEFAULT_CATONI_GRID: tuple[float, ...] = tuple(2.0 ** (j / 4.0) for j in range(-16, 17))


def pac_bayes_catoni_grid(
    empirical_risk: float,
    *,
    kl: float,
    n: int,
    delta: float,
    grid: Sequence[float] = DEFAULT_CATONI_GRID,
) -> BoundResult:
    """Catoni's bound minimised over a finite grid of C, paying the union bound.

    Each of the G grid values is given δ/G, so the confidence term is ln(G/δ): the search
    costs ln G nats. The grid must be fixed before the data are seen.

    >>> r = pac_bayes_catoni_grid(0.1, kl=200.0, n=1000, delta=0.05)
    >>> r.terms["grid_size"], round(r.terms["C"], 4), round(r.value, 6)
    (33.0, 1.6818, 0.383907)
    """
    r, kl, n, delta = _validate(empirical_risk, kl, n, delta)
    values = [check_positive(c, "grid value C") for c in grid]
    if not values:
        raise InvalidInputError("the Catoni grid must not be empty", param="grid")
    g = len(values)
    log_term = up(math.log(g) - math.log(delta))
    bounds = [_catoni_value(r, kl, n, log_term, c) for c in values]
    best = int(np.argmin(bounds))
    return BoundResult(
        bounds[best],
        "pac-bayes-catoni-grid",
        r,
        n,
        delta,
        kl,
        {
            "kl": kl,
            "log_term": log_term,
            "union_cost_nats": math.log(g),
            "grid_size": float(g),
            "C": values[best],
        },
    )
