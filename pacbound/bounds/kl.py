"""The binary kl divergence and its upper and lower inverses, vectorized over NumPy arrays.

kl(q‖p) = q ln(q/p) + (1 − q) ln((1 − q)/(1 − p)) in nats, with 0·ln 0 = 0.

The upper inverse kl⁻¹(q, c) = max{p ∈ [q, 1] : kl(q‖p) ≤ c} turns a bound on kl into a bound on
the true risk. It is computed so that the returned value is **never below** the exact inverse:
Newton's method from the right (kl(q‖·) is convex and increasing on [q, 1], so iterates
approach the root from above), then a check that the returned point is infeasible beyond
the floating-point error of kl itself; any element that fails the check is finished by
bisection, which keeps an infeasible upper end and returns it. Brackets are at most
:data:`KL_INVERSE_XTOL` wide.
"""

from __future__ import annotations

from typing import overload

import numpy as np
from numpy.typing import ArrayLike, NDArray

from pacbound.errors import InvalidInputError, NumericalError

#: Largest width of the final bracket [lo, hi] around kl⁻¹ (absolute, in risk units).
KL_INVERSE_XTOL = 1e-12
#: Newton iterations before an element is handed to bisection.
NEWTON_MAXITER = 60
#: Bisection iterations before giving up (2⁻²⁰⁰ ≪ any tolerance; hitting it is a bug).
BISECT_MAXITER = 200
_EPS = float(np.finfo(np.float64).eps)
#: Above this c (nats) kl⁻¹ is 1.0 for every q: with u = 2⁻⁵³ (1 − u is the largest float below
#: 1), kl(q‖1 − u) = −H(q) − q ln(1 − u) − (1 − q) ln u ≤ 2u + 53 ln 2 < 36.8, so the exact
#: inverse lies above 1 − u and the smallest float not below it is 1. Taking this shortcut
#: also keeps huge c (up to 1.8e308) away from c², which would overflow.
KL_TRIVIAL_C = 37.0
#: Error of the computed kl, relative to the magnitudes of its two terms.
_KL_ERR_FACTOR = 16.0 * _EPS


def _kl_and_error(q: NDArray, p: NDArray) -> tuple[NDArray, NDArray]:
    """kl(q‖p) and a bound on the floating-point error of the computed value.

    Both terms are written as ``log1p`` of a relative difference,
    q ln(q/p) = q·log1p((q − p)/p) and (1 − q) ln((1 − q)/(1 − p)) = (1 − q)·log1p((p − q)/(1 − p)),
    so each is accurate to a few ulps of max(|term|, |p − q|) even when q ≈ p, where the
    difference of the two terms (≈ (p − q)²/(2p(1 − p))) is much smaller than either term.
    """
    q, p = np.atleast_1d(q, p)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        diff = p - q
        qc, pc = 1.0 - q, 1.0 - p
        x1, x2 = -diff / p, diff / pc
        log_r1, log_r2 = np.log1p(x1), np.log1p(x2)
        err_extra = np.zeros_like(diff)
        # When q ≪ p (or 1 − q ≪ 1 − p) the ratio minus one loses q's digits: take logs first.
        far1, far2 = x1 < -0.5, x2 < -0.5
        if far1.any():
            lq, lp = np.log(q[far1]), np.log(p[far1])
            log_r1[far1] = lq - lp
            err_extra[far1] += q[far1] * (np.abs(lq) + np.abs(lp))
        if far2.any():
            lqc, lpc = np.log(qc[far2]), np.log(pc[far2])
            log_r2[far2] = lqc - lpc
            err_extra[far2] += qc[far2] * (np.abs(lqc) + np.abs(lpc))
        t1 = np.where(q == 0.0, 0.0, q * log_r1)
        t2 = np.where(qc == 0.0, 0.0, qc * log_r2)
        value = t1 + t2
        err = (
            _KL_ERR_FACTOR * (np.abs(t1) + np.abs(t2) + np.abs(diff) + np.nan_to_num(err_extra))
            + 1e-300
        )
    # NaN only arises as inf − inf, i.e. p ∈ {0, 1} with q ∉ {0, 1}: kl is +inf there.
    value = np.where(np.isnan(value), np.inf, value)
    err = np.where(np.isfinite(err), err, 0.0)
    return value, err


@overload
def binary_kl(q: float, p: float) -> float: ...
@overload
def binary_kl(q: ArrayLike, p: ArrayLike) -> float | NDArray[np.float64]: ...
def binary_kl(q: ArrayLike, p: ArrayLike) -> float | NDArray[np.float64]:
    """Binary kl divergence kl(q‖p) between Bernoulli(q) and Bernoulli(p), in nats.

    Returns ``inf`` when p ∈ {0, 1} and q ≠ p. Inputs must lie in [0, 1].

    >>> round(binary_kl(0.1, 0.2), 12)
    0.036690014035
    >>> binary_kl(0.0, 0.0), binary_kl(1.0, 1.0)
    (0.0, 0.0)
    """
    q_arr, p_arr = _as_unit_arrays(q, "q"), _as_unit_arrays(p, "p")
    qb, pb = np.broadcast_arrays(q_arr, p_arr)
    value, _ = _kl_and_error(qb, pb)
    value = np.maximum(value, 0.0)  # kl ≥ 0; clip rounding noise at q ≈ p
    return _scalar_or_array(value, q, p)


def _as_unit_arrays(x: ArrayLike, name: str) -> NDArray[np.float64]:
    arr = np.asarray(x, dtype=np.float64)
    if not np.all(np.isfinite(arr)):
        raise InvalidInputError(f"{name} must be finite, got {x!r}", param=name)
    if np.any((arr < 0.0) | (arr > 1.0)):
        raise InvalidInputError(f"{name} must lie in [0, 1], got {x!r}", param=name)
    return arr


def _scalar_or_array(values: NDArray, *inputs: ArrayLike) -> float | NDArray[np.float64]:
    if all(np.ndim(x) == 0 for x in inputs):
        return float(values.reshape(()))
    return values


def _certainly_above(q: NDArray, p: NDArray, c: NDArray) -> NDArray[np.bool_]:
    """kl(q‖p) > c even allowing for the floating-point error of the computed kl."""
    value, err = _kl_and_error(q, p)
    return value - err > c


def _upper_interior(q: NDArray, c: NDArray) -> NDArray[np.float64]:
    """kl⁻¹ for 0 < q < 1, c > 0 (arrays of equal shape). Result ≥ exact inverse."""
    # Two valid upper bounds on the root start Newton on the right side of it:
    #   kl(q‖p) ≥ (p − q)² / (2p) for p ≥ q       ⇒ p* ≤ q + c + √(c² + 2qc)
    #   kl(q‖p) ≥ −H(q) − (1 − q) ln(1 − p)       ⇒ p* ≤ 1 − exp(−(c + H(q)) / (1 − q))
    entropy = -(q * np.log(q) + (1.0 - q) * np.log1p(-q))
    start = np.minimum(q + c + np.sqrt(c * c + 2.0 * q * c), -np.expm1(-(c + entropy) / (1.0 - q)))
    p = np.minimum(start, np.nextafter(1.0, 0.0))
    p = np.maximum(p, q)
    active = np.ones(p.shape, dtype=bool)
    for _ in range(NEWTON_MAXITER):
        if not active.any():
            break
        qa, pa, ca = q[active], p[active], c[active]
        # Newton only steers; the accurate kl and its error bound decide the final bracket.
        # The plain formula is fast; where c is small its cancellation matters, so use the
        # accurate form there.
        value = qa * np.log(qa / pa) + (1.0 - qa) * np.log((1.0 - qa) / (1.0 - pa))
        small = ca < 1e-3
        if small.any():
            value[small] = _kl_and_error(qa[small], pa[small])[0]
        slope = (pa - qa) / (pa * (1.0 - pa))
        with np.errstate(divide="ignore", invalid="ignore"):
            step = (value - ca) / slope
        step = np.where(np.isfinite(step), step, 0.0)
        new = np.clip(pa - step, qa, pa)  # convexity: iterates only move left, stay ≥ q
        converged = (step <= 4.0 * _EPS * pa) | (new == pa)
        p[active] = new
        idx = np.flatnonzero(active)
        active[idx[converged]] = False

    # Guarded right end: just right of the Newton iterate, by more than kl's rounding error.
    value, err = _kl_and_error(q, p)
    slope = (p - q) / (p * (1.0 - p))
    with np.errstate(divide="ignore", invalid="ignore"):
        pad = np.where(slope > 0, 4.0 * err / slope, 0.0)
    hi = np.minimum(p + np.maximum(pad, 4.0 * _EPS * p), 1.0)
    lo = np.maximum(hi - KL_INVERSE_XTOL, q)
    lo_value, lo_err = _kl_and_error(q, lo)
    ok = ((hi >= 1.0) | _certainly_above(q, hi, c)) & (lo_value - lo_err <= c)
    result = hi
    if not ok.all():
        bad = ~ok
        result[bad] = _bisect_upper(q[bad], c[bad])
    return result


def _bisect_upper(q: NDArray, c: NDArray) -> NDArray[np.float64]:
    """Bisection keeping ``hi`` certainly infeasible; returns ``hi`` (never a midpoint).

    Each element stops as soon as its own bracket is narrow enough, so the result for one
    element does not depend on the other elements of the array (vectorized == scalar calls).
    """
    lo = q.copy()
    hi = np.ones_like(q)
    for _ in range(BISECT_MAXITER):
        open_ = hi - lo > KL_INVERSE_XTOL
        if not open_.any():
            return hi
        mid = 0.5 * (lo + hi)
        above = _certainly_above(q, mid, c)
        hi = np.where(open_ & above, mid, hi)
        lo = np.where(open_ & ~above, mid, lo)
    raise NumericalError(
        f"kl inverse did not converge in {BISECT_MAXITER} bisection steps "
        f"(q={q.tolist()!r}, c={c.tolist()!r})"
    )


def _prepare(q: ArrayLike, c: ArrayLike) -> tuple[NDArray, NDArray]:
    q_arr = _as_unit_arrays(q, "q")
    c_arr = np.asarray(c, dtype=np.float64)
    if np.any(np.isnan(c_arr)):
        raise InvalidInputError(f"c must not be NaN, got {c!r}", param="c")
    qb, cb = np.broadcast_arrays(q_arr, c_arr)
    return qb.astype(np.float64, copy=True), cb.astype(np.float64, copy=True)


@overload
def kl_inv_upper(q: float, c: float) -> float: ...
@overload
def kl_inv_upper(q: ArrayLike, c: ArrayLike) -> float | NDArray[np.float64]: ...
def kl_inv_upper(q: ArrayLike, c: ArrayLike) -> float | NDArray[np.float64]:
    """Upper inverse of the binary kl: max{p ∈ [q, 1] : kl(q‖p) ≤ c}.

    Never below the exact value: the result is the upper end of a bracket of width at most
    ``KL_INVERSE_XTOL`` whose upper end is infeasible beyond kl's rounding error.
    Edge cases are exact: c ≤ 0 → q; q = 1 → 1; q = 0 → 1 − e^(−c) (rounded up one ulp);
    c > :data:`KL_TRIVIAL_C` (37 nats, up to +inf) → 1, the smallest float not below the exact
    inverse there (no overflow warning at c = 1e308 or inf).

    Raises :class:`~pacbound.errors.NumericalError` if bisection does not converge.

    >>> round(kl_inv_upper(0.02, 5000 / 60000), 10)
    0.1341843806
    >>> kl_inv_upper(0.3, 0.0)
    0.3
    >>> kl_inv_upper(0.3, 1e308), kl_inv_upper(0.0, float("inf"))
    (1.0, 1.0)
    """
    qb, cb = _prepare(q, c)
    out = qb.copy()
    positive = cb > 0.0
    infinite = cb > KL_TRIVIAL_C  # includes +inf: the answer rounds up to 1 (see the constant)
    out[infinite | (positive & (qb == 1.0))] = 1.0
    zero_q = positive & ~infinite & (qb == 0.0)
    out[zero_q] = np.minimum(np.nextafter(-np.expm1(-cb[zero_q]), 2.0), 1.0)
    interior = positive & ~infinite & (qb > 0.0) & (qb < 1.0)
    if interior.any():
        out[interior] = _upper_interior(qb[interior], cb[interior])
    return _scalar_or_array(out, q, c)


@overload
def kl_inv_lower(q: float, c: float) -> float: ...
@overload
def kl_inv_lower(q: ArrayLike, c: ArrayLike) -> float | NDArray[np.float64]: ...
def kl_inv_lower(q: ArrayLike, c: ArrayLike) -> float | NDArray[np.float64]:
    """Lower inverse of the binary kl: min{p ∈ [0, q] : kl(q‖p) ≤ c}.

    Never above the exact value. Uses kl(q‖p) = kl(1 − q‖1 − p) and the upper inverse, then
    steps two ulps down to absorb the rounding of the reflections. c ≤ 0 → q; q = 0 → 0;
    c > :data:`KL_TRIVIAL_C` (up to +inf) → 0.

    >>> round(kl_inv_lower(0.5, 0.1), 10)
    0.2871213685
    """
    qb, cb = _prepare(q, c)
    reflected = np.asarray(kl_inv_upper(1.0 - qb, cb), dtype=np.float64)
    lower = np.nextafter(np.nextafter(1.0 - reflected, -1.0), -1.0)
    out = np.where(cb <= 0.0, qb, np.clip(lower, 0.0, qb))
    out = np.where(qb == 0.0, 0.0, out)
    return _scalar_or_array(out, q, c)
