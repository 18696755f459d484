"""Binomial-tail inversion in log space: held-out (test-set) bounds and Occam bounds.

``binomial_tail_inverse(k, n, log_target)`` = max{p : P[Bin(n, p) ≤ k] ≥ exp(log_target)}.

How the result is kept **never below** the exact value, in O(1) memory and time independent
of k:

1. A guess: the regularized incomplete beta, P[Bin(n, p) ≤ k] = 1 − I_p(k + 1, n − k), so
   p = ``betainccinv(k + 1, n − k, target)`` (scipy/boost); when the target underflows a
   float (an Occam bound with a long code, target δ·2^(−K)), a root of the log-tail
   evaluation below found by Brent's method between 0 and the Chernoff bound.
2. An independent log-space evaluation of ln P[Bin(n, p) ≤ k] with a bound on its error:
   each term ln b(j) = −n·kl(j/n‖p) + ½ ln(n/(2πj(n − j))) + s(n) − s(j) − s(n − j), with
   Stirling's remainder s(m) = ln m! − (m + ½) ln m + m − ½ ln 2π, has an error of a few ulps
   of O(|np − j|) nats, not of ln n! (≈ 2·10¹⁰ at n = 10⁹). The terms are summed outward from
   the largest one in windows of at most :data:`_MAX_WINDOW`; what lies beyond the last window
   is bounded by a geometric series (ratios of consecutive terms shrink away from the mode).
3. The returned p is one at which that evaluation, plus its error bound, is **below** the
   target: P[Bin(n, p) ≤ k] < target, hence p ≥ the exact inverse. Starting from the guess, the
   search steps up (doubling steps) until this holds, steps down until it fails, and bisects
   the bracket to a relative width of :data:`BINOMIAL_RTOL`, always keeping the certified end.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from numpy.typing import NDArray
from scipy.optimize import brentq
from scipy.special import betainccinv, gammaln

from pacbound.bounds.kl import _kl_and_error, kl_inv_upper
from pacbound.bounds.result import BoundResult
from pacbound.bounds.validation import check_count, check_delta, check_errors
from pacbound.errors import InvalidInputError, NumericalError

#: Relative width of the final bracket [lo, hi] (hi is returned, hence at most 1e-12 absolute).
BINOMIAL_RTOL = 1e-12
#: Absolute width bound implied by :data:`BINOMIAL_RTOL` (p ≤ 1).
BINOMIAL_XTOL = 1e-12
#: Step or bisection iterations before giving up (hitting it is a bug).
BISECT_MAXITER = 2200
_EPS = float(np.finfo(np.float64).eps)
_LOG_2PI = math.log(2.0 * math.pi)
#: Below this, Stirling's remainder is taken from gammaln directly.
_STIRLING_SERIES_FROM = 16.0
#: Terms are summed in windows of growing size up to this many (memory is O(1) in k and n).
_MAX_WINDOW = 1 << 16
#: Summation stops once the window's edge is this many nats below the largest term.
_TAIL_NATS = 45.0
#: Smallest target handed to betainccinv (below it, Brent's method on the log tail).
_LOG_TINY = math.log(1e-280)


def _stirling_remainder(m: NDArray) -> tuple[NDArray, NDArray]:
    """s(m) = ln m! − (m + ½) ln m + m − ½ ln 2π for m ≥ 1, and a bound on its error.

    Series 1/(12m) − 1/(360m³) + 1/(1260m⁵) − 1/(1680m⁷): for real m > 0 the truncation error
    is below the first omitted term, 1/(1188m⁹).
    """
    small = m < _STIRLING_SERIES_FROM
    ms = np.where(small, _STIRLING_SERIES_FROM, m)
    inv, inv2 = 1.0 / ms, 1.0 / (ms * ms)
    series = inv * (1 / 12 - inv2 * (1 / 360 - inv2 * (1 / 1260 - inv2 / 1680)))
    series_err = inv2**4 * inv / 1188 + 8 * _EPS * series
    mm = np.where(small, m, 1.0)
    lg, lm = gammaln(mm + 1.0), (mm + 0.5) * np.log(mm)
    direct = lg - lm + mm - 0.5 * _LOG_2PI
    direct_err = 16 * _EPS * (np.abs(lg) + np.abs(lm) + mm + 1.0)
    return np.where(small, direct, series), np.where(small, direct_err, series_err)


def _log_pmf(j: NDArray, n: int, p: float) -> tuple[NDArray, NDArray]:
    """ln P[Bin(n, p) = j] for whole j ∈ [0, n − 1], 0 < p < 1, and a bound on each error."""
    nf = float(n)
    inner = j > 0
    ji = np.where(inner, j, 1.0)
    q = ji / nf
    kl, kl_err = _kl_and_error(q, np.full_like(q, p))
    # q = j/n is rounded (half an ulp): kl moves by |∂kl/∂q|·δq ≤ |ln(q/p)| + |ln((1−q)/(1−p))|
    slope = np.abs(np.log(q) - math.log(p)) + np.abs(np.log1p(-q) - math.log1p(-p))
    nkl = nf * kl
    half_log = 0.5 * (math.log(nf) - _LOG_2PI - np.log(ji) - np.log(nf - ji))
    s_n, e_n = _stirling_remainder(np.array([nf]))
    s_j, e_j = _stirling_remainder(ji)
    s_r, e_r = _stirling_remainder(nf - ji)
    value = -nkl + half_log + (s_n[0] - s_j - s_r)
    size = nkl + np.abs(half_log) + abs(s_n[0]) + np.abs(s_j) + np.abs(s_r) + 50.0
    err = nf * kl_err + _EPS * ji * slope + 8 * _EPS * size + (e_n[0] + e_j + e_r) + 1e-300
    edge = n * math.log1p(-p)  # j = 0: (1 − p)^n
    value = np.where(inner, value, edge)
    err = np.where(inner, err, 4 * _EPS * abs(edge) + 1e-300)
    return value, err


def _term_ratio(j: int, n: int, p: float, upward: bool) -> float:
    """An upper bound on b(j + 1)/b(j) (upward) or b(j − 1)/b(j) (downward)."""
    if upward:
        ratio = (n - j) * p / ((j + 1) * (1.0 - p))
    else:
        ratio = j * (1.0 - p) / ((n - j + 1) * p)
    return ratio * (1.0 + 16 * _EPS)


def _sum_side(k: int, n: int, p: float, start: int, upward: bool, top: float):
    """Log-sum of the terms from ``start`` (inclusive) away from the mode, plus a bound on the
    rest; returns (log-sum of the windows, log of the tail bound, largest error, count)."""
    parts: list[float] = []
    worst, count, size, j = 0.0, 0, 1024, start
    end = k if upward else 0
    while True:
        stop = min(j + size - 1, end) if upward else max(j - size + 1, end)
        js = np.arange(min(j, stop), max(j, stop) + 1, dtype=np.float64)
        values, errs = _log_pmf(js, n, p)
        peak = float(values.max())
        parts.append(peak + math.log(float(np.exp(values - peak).sum())))
        worst, count = max(worst, float(errs.max())), count + js.size
        top = max(top, peak)
        if stop == end:
            return _logsum(parts), -math.inf, worst, count
        edge = float(values[-1] if upward else values[0]) + float(errs[-1] if upward else errs[0])
        ratio = _term_ratio(stop, n, p, upward)
        if ratio < 1.0 and edge < top - _TAIL_NATS:
            tail = edge + math.log(ratio) - math.log1p(-ratio)
            return _logsum(parts), tail, worst, count
        j, size = stop + 1 if upward else stop - 1, min(2 * size, _MAX_WINDOW)


def _logsum(logs: list[float]) -> float:
    finite = [x for x in logs if x > -math.inf]
    if not finite:
        return -math.inf
    peak = max(finite)
    return peak + math.log(math.fsum(math.exp(x - peak) for x in finite))


def _log_cdf(k: int, n: int, p: float) -> tuple[float, float]:
    """(v, e) with |ln P[Bin(n, p) ≤ k] − v| ≤ e, for 0 ≤ k < n and 0 < p < 1."""
    if k == 0:
        value = n * math.log1p(-p)
        return value, 4 * _EPS * abs(value) + 1e-300
    mode = min(k, max(0, math.floor((n + 1) * p)))  # terms rise up to (n + 1)p, then fall
    down, down_tail, err_d, count_d = _sum_side(k, n, p, mode, False, -math.inf)
    if mode < k:
        up, up_tail, err_u, count_u = _sum_side(k, n, p, mode + 1, True, down)
    else:
        up, up_tail, err_u, count_u = -math.inf, -math.inf, 0.0, 0
    body = _logsum([down, up])
    tails = _logsum([down_tail, up_tail])
    value = _logsum([body, tails])
    # the windows' sum carries each term's error, plus rounding of exp and the sums (relative:
    # the count; absolute: the shifts by the peak and back, a few ulps of |value|); the tail
    # bound is included in the value, so the truth lies within its share of either side
    err = max(err_d, err_u) + (count_d + count_u + 16) * _EPS * 2.0 + 8 * _EPS * abs(value)
    err += math.exp(tails - body) if tails > -math.inf else 0.0
    return value, err


def _certified(k: int, n: int, log_target: float) -> Callable[[float], bool]:
    """p ↦ whether P[Bin(n, p) ≤ k] < exp(log_target) holds despite the evaluation error."""

    def certified(p: float) -> bool:
        if p >= 1.0:
            return True
        if p <= 0.0:
            return False
        value, err = _log_cdf(k, n, p)
        return value + err < log_target

    return certified


def _guess(k: int, n: int, log_target: float) -> float:
    """A close estimate of the inverse (any value works: the certified search fixes it)."""
    if k == 0:
        return -math.expm1(log_target / n)  # (1 − p)^n = target
    if log_target > _LOG_TINY:
        guess = float(betainccinv(k + 1.0, float(n - k), math.exp(log_target)))
        if 0.0 < guess < 1.0:
            return guess
    # Chernoff: P[Bin ≤ k] ≤ exp(−n kl(k/n‖p)) for p ≥ k/n, so the root lies below this hi
    hi = min(float(kl_inv_upper(k / n, -log_target / n)), math.nextafter(1.0, 0.0))

    def excess(p: float) -> float:
        return _log_cdf(k, n, p)[0] - log_target if p > 0.0 else -log_target

    if excess(hi) >= 0.0:
        return hi
    return float(brentq(excess, 0.0, hi, xtol=1e-300, rtol=8 * _EPS, maxiter=400))


def _certified_upper(certified: Callable[[float], bool], guess: float) -> float:
    """The upper end of a bracket of relative width BINOMIAL_RTOL around the point where
    ``certified`` turns true; that end is certified."""
    step = max(abs(guess) * 1e-13, 1e-300)
    lo, hi = guess, guess
    for _ in range(BISECT_MAXITER):
        if certified(hi):
            break
        lo, hi, step = hi, min(hi + step, 1.0), 2.0 * step
    else:
        raise NumericalError(f"binomial tail inversion: no certified point above {guess!r}")
    if lo == hi:  # the guess itself was certified: find an uncertified point below it
        for _ in range(BISECT_MAXITER):
            lo = max(hi - step, 0.0)
            if not certified(lo):
                break
            hi, step = lo, 2.0 * step
    for _ in range(BISECT_MAXITER):
        mid = lo + 0.5 * (hi - lo)
        if hi - lo <= BINOMIAL_RTOL * hi or not lo < mid < hi:
            return hi
        if certified(mid):
            hi = mid
        else:
            lo = mid
    raise NumericalError(f"binomial tail inversion did not converge near {guess!r}")


def binomial_tail_inverse(k: int, n: int, log_target: float) -> float:
    """max{p ∈ [0, 1] : P[Bin(n, p) ≤ k] ≥ exp(log_target)}, never below the exact value.

    ``log_target`` is the natural log of the required tail mass (ln δ for a held-out bound,
    ln δ − K ln 2 for an Occam bound with a K-bit code). Time and memory do not grow with k
    (see the module docstring). Raises :class:`~pacbound.errors.NumericalError` if the search
    does not converge.

    >>> round(binomial_tail_inverse(0, 1000, math.log(0.05)), 7)
    0.0029912
    """
    n = check_count(n)
    k = check_errors(k, n)
    if math.isnan(log_target) or log_target > 0.0:
        raise InvalidInputError(f"log_target must be ≤ 0, got {log_target!r}", param="log_target")
    if k == n or log_target == -math.inf:
        return 1.0
    if log_target == 0.0:
        return 0.0  # target 1: only p = 0 has tail mass 1
    return _certified_upper(_certified(k, n, log_target), _guess(k, n, log_target))


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
