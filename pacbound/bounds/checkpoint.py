"""A certificate for the deterministic checkpoint h from one on a classifier Q (MATH.md §11).

For every (x, y): 1[h(x) ≠ y] ≤ 1[h'(x) ≠ y] + 1[h(x) ≠ h'(x)]. Taking expectations over
h' ~ Q and (x, y) ~ D gives L(h) ≤ L(Q) + D(h, Q) with D(h, Q) = E_x E_{h'~Q} 1[h(x) ≠ h'(x)],
which needs no labels. On m inputs never used for anything else, one fresh draw h'_i per input
makes the disagreement indicators i.i.d. Bernoulli(D), so D is bounded by the exact binomial
tail (the test-set bound, Langford 2005) at its own δ_D. The same inequality moves an Occam
certificate of a decoded model (Q a point mass) to the checkpoint it was compressed from.
With the certificate on Q at δ_Q, the checkpoint's bound holds with probability ≥ 1 − δ_Q − δ_D.
"""

from __future__ import annotations

import math

from pacbound.bounds import binomial
from pacbound.bounds.result import BoundResult
from pacbound.bounds.validation import check_count, check_delta, check_errors


def disagreement_bound(disagreements: int, *, m: int, delta: float) -> BoundResult:
    """Upper bound on D(h, Q) from ``disagreements`` out of ``m`` held-out inputs, one fresh
    draw of Q per input (i.i.d. Bernoulli(D) indicators; exact binomial tail).

    >>> round(disagreement_bound(5, m=1000, delta=0.05).value, 7)
    0.0104841
    """
    m = check_count(m, "number of held-out inputs")
    k = check_errors(disagreements, m)
    base = binomial.test_set_bound(k / m, n=m, delta=check_delta(delta, "disagreement delta"))
    return BoundResult(
        base.value,
        "disagreement-test-set",
        base.empirical_risk,
        m,
        base.delta,
        0.0,
        {"disagreements": float(k), "log_term": -math.log(base.delta)},
    )


def checkpoint_bound(certificate: BoundResult, disagreement: BoundResult) -> BoundResult:
    """L(h) ≤ L(Q) + D(h, Q): the certificate on Q plus the bound on the disagreement.

    The sum is rounded one ulp up (never below the exact sum) and capped at 1.

    >>> q = BoundResult(0.1, "pac-bayes-kl", 0.05, 1000, 0.04)
    >>> d = disagreement_bound(5, m=1000, delta=0.01)
    >>> checkpoint_bound(q, d).value > 0.1 + d.value - 1e-15
    True
    """
    total = math.nextafter(certificate.value + disagreement.value, math.inf)
    return BoundResult(
        min(1.0, total),
        "checkpoint-via-disagreement",
        certificate.empirical_risk,
        certificate.n,
        certificate.delta + disagreement.delta,
        certificate.complexity_nats,
        {
            "bound_on_q": certificate.value,
            "disagreement_bound": disagreement.value,
            "disagreement_rate": disagreement.empirical_risk,
            "heldout_inputs": float(disagreement.n),
        },
    )
