"""The marginal-likelihood PAC-Bayes bound of the random sampler, and its memory needs.

Q = the prior P conditioned on fitting S (the random sampler), so L̂(Q) = 0 and
KL(Q‖P) = ln(1/P(U)) (MATH.md §12). With ln P(U) ≥ ℓ (certified with probability
≥ 1 − δ_IS by :func:`~pacbound.marginal.ghk.certified_log_orthant`) the Seeger–Maurer
PAC-Bayes-kl bound gives, with probability ≥ 1 − δ − δ_IS,

    L(Q) ≤ kl⁻¹(0, [−ℓ + ln(2√n/δ)]/n) = 1 − exp(−[−ℓ + ln(2√n/δ)]/n)

(a larger KL only loosens the bound, so the certified −ℓ ≥ ln(1/P(U)) may replace it).
"""

from __future__ import annotations

import math

from pacbound.bounds import BoundResult, pac_bayes_kl
from pacbound.bounds.validation import check_count
from pacbound.errors import InvalidInputError

#: float64 n × n matrices the binary certificate holds at its peak (kernel, constraint
#: covariance, its Cholesky factor, the EP precision and its factor); the guide of the
#: importance sampler replaces the EP matrices, so this is also its peak.
MATRICES_AT_ONCE = 5
_BYTES = 8


def marginal_bound(log_lower: float, n: int, delta: float) -> BoundResult:
    """PAC-Bayes-kl bound on the random sampler's risk from a certified ln P(U) ≥ ``log_lower``.

    ``delta`` is the PAC-Bayes part only (δ_IS is spent by the lower bound on ln P(U)).

    >>> c = (300 + math.log(2 * math.sqrt(1000) / 0.04)) / 1000
    >>> abs(marginal_bound(-300.0, 1000, 0.04).value - (1 - math.exp(-c))) < 1e-9
    True
    """
    if not math.isfinite(log_lower) or log_lower > 0.0:
        raise InvalidInputError(
            f"log_lower must be a finite log-probability ≤ 0, got {log_lower!r}",
            param="log_lower",
        )
    result = pac_bayes_kl(0.0, kl=-float(log_lower), n=n, delta=delta)
    return BoundResult(
        result.value,
        "marginal-likelihood",
        0.0,
        result.n,
        result.delta,
        result.complexity_nats,
        {**result.terms, "log_p_u_lower": float(log_lower)},
    )


def matrix_bytes(n: int, classes: int = 2) -> int:
    """Bytes of the n(C − 1)-square float64 matrices held at once (:data:`MATRICES_AT_ONCE`).

    The kernel is n × n; the constraint covariance, its factor and EP's matrices are
    m × m with m = n(C − 1) (m = n for binary labels).
    """
    n = check_count(n)
    classes = check_count(classes, "classes", minimum=2)
    m = n * (classes - 1)
    return _BYTES * (n * n + (MATRICES_AT_ONCE - 1) * m * m)


def max_n_for_memory(budget_bytes: int, classes: int = 2) -> int:
    """The largest n with :func:`matrix_bytes` (n, classes) ≤ ``budget_bytes`` (0 if none)."""
    if budget_bytes < 0:
        raise InvalidInputError(f"memory budget must be ≥ 0, got {budget_bytes}", param="budget")
    classes = check_count(classes, "classes", minimum=2)
    per = _BYTES * (1 + (MATRICES_AT_ONCE - 1) * (classes - 1) ** 2)
    n = math.isqrt(budget_bytes // per)
    while n > 0 and matrix_bytes(n, classes) > budget_bytes:
        n -= 1
    while matrix_bytes(n + 1, classes) <= budget_bytes:
        n += 1
    return n
