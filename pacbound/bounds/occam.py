"""Occam / compression bounds for one deterministic classifier described in K bits.

If h is described by a prefix-free code of K(h) bits fixed before the sample was seen, the
prior P(h) = 2^(−K(h)) sums to at most 1 (Kraft) and, with probability ≥ 1 − δ,
the bounds below hold (Langford 2005, Thm 4.1 "Occam's razor bound"; MATH.md §6).

Signature convention as everywhere: ``(empirical_risk, *, kl, n, delta)`` with the
complexity in **nats** (``kl = K ln 2``; use :func:`pacbound.bounds.units.bits_to_nats`).
"""

from __future__ import annotations

import math

from pacbound.bounds._conservative import clip_unit, up
from pacbound.bounds.binomial import binomial_tail_inverse
from pacbound.bounds.kl import kl_inv_upper
from pacbound.bounds.result import BoundResult
from pacbound.bounds.units import LN2
from pacbound.bounds.validation import (
    check_count,
    check_delta,
    check_kl,
    check_risk,
    errors_from_risk,
)


def occam_kl(empirical_risk: float, *, kl: float, n: int, delta: float) -> BoundResult:
    """Occam bound in kl form: kl(L̂(h) ‖ L(h)) ≤ [K ln 2 + ln(1/δ)] / n.

    >>> round(occam_kl(0.0, kl=0.0, n=1000, delta=0.05).value, 9)  # 1 − 0.05^(1/1000)
    0.00299125
    """
    r, kl, n, delta = check_risk(empirical_risk), check_kl(kl), check_count(n), check_delta(delta)
    log_term = up(-math.log(delta))
    rhs = up((kl + log_term) / n)
    value = clip_unit(float(kl_inv_upper(r, rhs)))
    return BoundResult(
        value,
        "occam-kl",
        r,
        n,
        delta,
        kl,
        {"code_length_bits": kl / LN2, "log_term": log_term, "rhs": rhs},
    )


def occam_binomial(empirical_risk: float, *, kl: float, n: int, delta: float) -> BoundResult:
    """Occam bound by exact binomial-tail inversion, the tightest form (Langford 2005, Thm 4.1).

    L(h) ≤ max{p : P[Bin(n, p) ≤ k] ≥ δ·e^(−kl)}, where k = n·L̂ errors and kl = K ln 2.
    Computed in log space: no underflow at n = 10⁶ and K = 10⁶ bits.

    >>> round(occam_binomial(0.0, kl=0.0, n=1000, delta=0.05).value, 7)
    0.0029912
    """
    r, kl, n, delta = check_risk(empirical_risk), check_kl(kl), check_count(n), check_delta(delta)
    k = errors_from_risk(r, n)
    log_target = math.log(delta) - kl
    value = binomial_tail_inverse(k, n, log_target)
    return BoundResult(
        value,
        "occam-binomial",
        r,
        n,
        delta,
        kl,
        {"errors": float(k), "code_length_bits": kl / LN2, "log_term": -log_target},
    )
