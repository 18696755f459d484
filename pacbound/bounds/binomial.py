"""Binomial-tail inversion in log space: held-out (test-set) bounds and Occam bounds.

``binomial_tail_inverse(k, n, log_target)`` = max{p : P[Bin(n, p) ≤ k] ≥ exp(log_target)}.
The tail is summed in log space (``gammaln`` + ``logsumexp``) so that targets such as
δ·2^(−10⁶) do not underflow, and bisection keeps an upper end that is infeasible beyond the
rounding error of the log-tail; that end is returned.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.special import gammaln, logsumexp

from pacbound.bounds.result import BoundResult
from pacbound.bounds.validation import check_count, check_delta, check_errors
from pacbound.errors import InvalidInputError, NumericalError

#: Final bracket width in p.
BINOMIAL_XTOL = 1e-12
BISECT_MAXITER = 200
_EPS = float(np.finfo(np.float64).eps)


class _LogBinomialCdf:
    """log P[Bin(n, p) ≤ k] as a function of p, with the log-binomial coefficients cached."""

    def __init__(self, k: int, n: int) -> None:
        self.k, self.n = k, n
        j = np.arange(k + 1, dtype=np.float64)
        self.j = j
        self.log_binom = gammaln(n + 1.0) - gammaln(j + 1.0) - gammaln(n - j + 1.0)
        # Rounding of the gammaln terms (magnitude up to ~n ln n), as an absolute log error.
        self.abs_err = 64.0 * _EPS * (float(gammaln(n + 1.0)) + n + 10.0)

    def __call__(self, p: float) -> float:
        if p <= 0.0:
            return 0.0
        if p >= 1.0:
            return -math.inf  # k < n here
        terms = self.log_binom + self.j * math.log(p) + (self.n - self.j) * math.log1p(-p)
        return float(min(logsumexp(terms), 0.0))

    def error(self, p: float) -> float:
        scale = self.n * (abs(math.log(p)) + abs(math.log1p(-p))) if 0 < p < 1 else 0.0
        return self.abs_err + 64.0 * _EPS * scale


def binomial_tail_inverse(k: int, n: int, log_target: float) -> float:
    """max{p ∈ [0, 1] : P[Bin(n, p) ≤ k] ≥ exp(log_target)}, never below the exact value.

    ``log_target`` is the natural log of the required tail mass (ln δ for a held-out bound,
    ln δ − K ln 2 for an Occam bound with a K-bit code). Raises
    :class:`~pacbound.errors.NumericalError` if bisection does not converge.

    >>> round(binomial_tail_inverse(0, 1000, math.log(0.05)), 7)
    0.0029912
    """
    n = check_count(n)
    k = check_errors(k, n)
    if math.isnan(log_target) or log_target > 0.0:
        raise InvalidInputError(f"log_target must be ≤ 0, got {log_target!r}", param="log_target")
    if k == n:
        return 1.0
    if log_target == 0.0:
        return 0.0
    cdf = _LogBinomialCdf(k, n)
    lo, hi = 0.0, 1.0  # F(0) = 1 ≥ target; F(1) = 0 < target
    for _ in range(BISECT_MAXITER):
        if hi - lo <= BINOMIAL_XTOL:
            return hi
        mid = 0.5 * (lo + hi)
        value = cdf(mid)
        if value + cdf.error(mid) < log_target:  # certainly infeasible
            hi = mid
        else:
            lo = mid
    raise NumericalError(
        f"binomial tail inversion did not converge (k={k}, n={n}, log_target={log_target})"
    )


def test_set_bound(empirical_risk: float, *, n: int, delta: float) -> BoundResult:
    """Held-out (test-set) bound (Langford 2005, Thm 3.3): L ≤ max{p : P[Bin(n,p) ≤ k] ≥ δ}.

    Valid only for n examples never used for training, model selection or anything else.
    ``empirical_risk`` must be k/n for a whole number of errors k. This is the one-sided
    Clopper–Pearson upper limit.

    >>> round(test_set_bound(0.005, n=1000, delta=0.05).value, 7)
    0.0104841
    """
    from pacbound.bounds.validation import check_risk, errors_from_risk

    n = check_count(n)
    delta = check_delta(delta)
    risk = check_risk(empirical_risk)
    k = errors_from_risk(risk, n)
    value = binomial_tail_inverse(k, n, math.log(delta))
    return BoundResult(
        value, "test-set", risk, n, delta, 0.0, {"errors": float(k), "log_term": -math.log(delta)}
    )


def clopper_pearson_upper(errors: int, n: int, delta: float) -> float:
    """One-sided Clopper–Pearson upper limit at confidence 1 − δ (same as the test-set bound).

    >>> round(clopper_pearson_upper(100, 10000, 0.01), 7)
    0.0125677
    """
    n = check_count(n)
    k = check_errors(errors, n)
    return binomial_tail_inverse(k, n, math.log(check_delta(delta)))
