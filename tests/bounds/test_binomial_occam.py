"""Binomial-tail bounds: held-out (test-set) and Occam, in log space; bits ↔ nats."""

from __future__ import annotations

import math
import time
import tracemalloc
from decimal import Decimal, localcontext

import mpmath
import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from scipy import stats
from scipy.special import gammaln, logsumexp

from pacbound.bounds import (
    binomial_tail_inverse,
    bits_to_nats,
    clopper_pearson_upper,
    nats_to_bits,
    occam_binomial,
    occam_kl,
)
from pacbound.bounds import (
    test_set_bound as held_out_bound,
)
from pacbound.bounds.binomial import BINOMIAL_XTOL, _log_cdf
from pacbound.bounds.kl import KL_INVERSE_XTOL
from pacbound.errors import InvalidInputError
from tests.bounds.test_kl import ref_kl_inv_upper

#: Binomial inversions are brackets of absolute width BINOMIAL_XTOL; on top of that we allow
#: 1e-9 relative (issue #2). For values ≪ 1e-3 the absolute width dominates.
REL = 1e-9


def _decimal_binomial_cdf(k: int, m: int, p: float) -> Decimal:
    """P[Bin(m, p) ≤ k] in 50-digit arithmetic (exact integer binomial coefficients)."""
    with localcontext() as ctx:
        ctx.prec = 50
        pd = Decimal(p)
        return sum(
            (math.comb(m, j) * pd**j * (1 - pd) ** (m - j) for j in range(k + 1)), Decimal(0)
        )


# ---------------------------------------------------------------------------------------------
# MATH.md §7 held-out values
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("k", "m", "delta", "printed"),
    [
        (0, 1000, 0.05, 0.0029912),  # MATH.md §7, first value
        (5, 1000, 0.05, 0.0104841),  # MATH.md §7, second value
        (100, 10000, 0.01, 0.0125676),  # MATH.md §7, third value
    ],
)
def test_math_md_held_out_values(k: int, m: int, delta: float, printed: float) -> None:
    value = held_out_bound(k / m, n=m, delta=delta).value
    # MATH.md prints 7 decimals (rounded to nearest): agree to half a unit in the last place
    assert abs(value - printed) <= 0.5e-7
    # Clopper–Pearson limit from scipy (an independent implementation, boost's ibeta_inv)
    ref = float(stats.beta.ppf(1 - delta, k + 1, m - k))
    assert ref <= value <= ref * (1 + REL) + BINOMIAL_XTOL
    # exact: the returned p is infeasible, P[Bin(m, p) ≤ k] ≤ δ, so it is ≥ the exact limit
    assert _decimal_binomial_cdf(k, m, value) <= Decimal(delta)


def _one_minus_exp(x: float | Decimal) -> Decimal:
    """1 − e^x in 50-digit arithmetic."""
    with localcontext() as ctx:
        ctx.prec = 50
        return 1 - Decimal(x).exp()


def test_held_out_closed_form_for_zero_errors() -> None:
    # P[Bin(m, p) ≤ 0] = (1 − p)^m = δ  ⇒  p = 1 − δ^(1/m)
    for m, delta in [(1, 0.05), (1000, 0.05), (10**6, 1e-6)]:
        with localcontext() as ctx:
            ctx.prec = 50
            exact = _one_minus_exp(Decimal(delta).ln() / m)
        value = held_out_bound(0.0, n=m, delta=delta).value
        assert exact <= Decimal(value) <= exact * (1 + Decimal(REL)) + Decimal(BINOMIAL_XTOL)


#: scipy's beta.isf is not exact either: at (k, m, δ) = (1, 10⁶, 0.05) it is 1.5e-15 and at
#: (1, 10⁹, 0.01) 1e-8 relative *above* the exact limit (40-digit evaluation), and pacbound's
#: value lies between the two. Soundness is checked exactly below; against scipy we allow
#: its own error on the low side.
SCIPY_REL = 1e-7


@pytest.mark.parametrize("m", [1, 2, 10, 100, 1000, 10**4, 10**5, 10**6, 10**9])
@pytest.mark.parametrize("delta", [1e-9, 0.01, 0.05, 0.5])
def test_held_out_against_scipy_beta(m: int, delta: float) -> None:
    # REL applies at every m: the log-tail error is a few ulps of O(|mp − k|), not of ln m!
    for k in sorted(k for k in {0, 1, m // 100, m // 10, m // 2, m - 1} if k < m):
        value = clopper_pearson_upper(k, m, delta)
        ref = float(stats.beta.isf(delta, k + 1, m - k))  # = beta.ppf(1 − δ, …), no 1 − δ loss
        assert ref * (1 - SCIPY_REL) <= value <= ref * (1 + REL) + 2 * BINOMIAL_XTOL, (
            k, m, delta, value, ref
        )  # fmt: skip


def _mp_binomial_cdf(k: int, m: int, p: float) -> tuple[mpmath.mpf, mpmath.mpf]:
    """Bounds (lower, upper) on P[Bin(m, p) ≤ k] in 40-digit arithmetic: the terms from k down
    by the exact ratio b(j − 1)/b(j) = j(1 − p)/((m − j + 1)p) until they are 10⁻⁵⁰ of the sum,
    then a geometric bound on the rest (the ratios shrink as j falls)."""
    with mpmath.workdps(40):
        pm = mpmath.mpf(p)
        lb = mpmath.loggamma(m + 1) - mpmath.loggamma(k + 1) - mpmath.loggamma(m - k + 1)
        term = mpmath.exp(lb + k * mpmath.log(pm) + (m - k) * mpmath.log1p(-pm))
        total, j = term, k
        while j > 0:
            ratio = j * (1 - pm) / ((m - j + 1) * pm)
            if ratio < 1 and term < mpmath.mpf(10) ** -50 * total:
                return total, total + term * ratio / (1 - ratio)
            term *= ratio
            total += term
            j -= 1
        return total, total


@pytest.mark.parametrize(
    ("k", "m", "delta"),
    [(1, 10**6, 0.05), (10**4, 10**6, 0.5), (10**7, 10**9, 0.05), (10**5, 10**8, 1e-9)],
)
def test_held_out_is_never_below_the_exact_limit_at_large_m(k: int, m: int, delta: float) -> None:
    value = clopper_pearson_upper(k, m, delta)
    assert _mp_binomial_cdf(k, m, value)[1] <= delta  # value ≥ the exact limit
    # and tight: 1e-11 relative lower, the tail already exceeds δ
    assert _mp_binomial_cdf(k, m, value * (1 - 1e-11))[0] > delta


def _full_sum_inverse(k: int, m: int, log_target: float) -> float:
    """The previous implementation, kept as a reference: bisection on the log tail summed over
    all k + 1 terms (gammaln + logsumexp), with a margin of 64 ε (ln m! + m) nats."""
    j = np.arange(k + 1, dtype=np.float64)
    log_binom = gammaln(m + 1.0) - gammaln(j + 1.0) - gammaln(m - j + 1.0)
    eps = float(np.finfo(np.float64).eps)
    margin = 64.0 * eps * (float(gammaln(m + 1.0)) + m + 10.0)
    lo, hi = 0.0, 1.0
    while hi - lo > BINOMIAL_XTOL:
        mid = 0.5 * (lo + hi)
        terms = log_binom + j * math.log(mid) + (m - j) * math.log1p(-mid)
        scale = m * (abs(math.log(mid)) + abs(math.log1p(-mid)))
        if min(float(logsumexp(terms)), 0.0) + margin + 64.0 * eps * scale < log_target:
            hi = mid
        else:
            lo = mid
    return hi


@settings(deadline=None, max_examples=80)
@example(m=58, frac=1.0, log_target=-6.103515625e-05)
@example(m=16, frac=1.0, log_target=-1.0000000000000002e-06)
@given(
    m=st.integers(1, 400),
    frac=st.floats(0.0, 1.0),
    log_target=st.one_of(st.floats(-60.0, -1e-6), st.floats(-5000.0, -60.0)),
)
def test_inverse_agrees_with_the_full_sum_and_is_exactly_sound(
    m: int, frac: float, log_target: float
) -> None:
    k = min(round(frac * m), m - 1)
    value = binomial_tail_inverse(k, m, log_target)
    reference = _full_sum_inverse(k, m, log_target)
    # never looser than the old full sum (beyond the bisection tolerance)
    assert value <= reference + 2 * BINOMIAL_XTOL + 1e-9 * reference
    # and sound: the tail at the returned p is at most the target (50-digit sum). The old sum
    # kept a larger log margin, so near a target of 1 the new value is legitimately below it
    # by more than any fixed tolerance (k=15, m=16, ln target = −1e-6: old 0.42169652000,
    # new 0.42169650438, exact root 0.42169649025); soundness is this exact check, not
    # closeness to the old value
    if log_target > -700.0:
        assert _decimal_binomial_cdf(k, m, value) <= Decimal(log_target).exp()
    else:
        assert value >= reference * (1.0 - 1e-7)


@pytest.mark.parametrize(
    ("k", "m", "p"),
    [
        (1, 10, 0.3),
        (3, 10, 0.05),  # p below k/m: the largest term is inside, both sides are summed
        (50, 100, 0.999),
        (999, 1000, 0.5),
        (10**4, 10**6, 0.0101),
        (1000, 10**6, 0.5),  # ln F ≈ −6.9e5, the scale of an Occam bound with 10⁶ bits
        (10**7, 10**9, 0.010005),
        (10**5, 10**7, 0.0099),
    ],
)
def test_log_tail_error_bound_holds(k: int, m: int, p: float) -> None:
    value, err = _log_cdf(k, m, p)
    low, high = _mp_binomial_cdf(k, m, p)
    with mpmath.workdps(40):
        assert value - err <= mpmath.log(low) and mpmath.log(high) <= value + err
    assert err < 1e-6 * max(1.0, abs(value))  # and the bound is tight enough to be useful


def test_held_out_at_a_billion_examples_is_fast_and_small() -> None:
    # was 31 s and 0.7 GB: the tail was summed over all k + 1 terms at each of 40 bisections
    k, m = 10**7, 10**9
    clopper_pearson_upper(k, m, 0.05)  # warm up imports and caches
    tracemalloc.start()
    start = time.perf_counter()
    try:
        value = clopper_pearson_upper(k, m, 0.05)
        elapsed = time.perf_counter() - start
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert elapsed < 1.0
    assert peak < 16 * 2**20  # bytes: the windows, not the k + 1 terms (80 MB each)
    assert value == pytest.approx(float(stats.beta.isf(0.05, k + 1, m - k)), rel=REL)


def test_clopper_pearson_equals_held_out_bound() -> None:
    assert clopper_pearson_upper(12, 1000, 0.05) == held_out_bound(0.012, n=1000, delta=0.05).value


def test_all_errors_gives_the_trivial_bound() -> None:
    assert held_out_bound(1.0, n=50, delta=0.05).value == 1.0
    assert binomial_tail_inverse(7, 7, -1000.0) == 1.0


def test_binomial_tail_inverse_edges_and_errors() -> None:
    assert binomial_tail_inverse(3, 10, 0.0) == 0.0  # target 1: only p = 0 has tail mass 1
    with pytest.raises(InvalidInputError, match="log_target must be ≤ 0"):
        binomial_tail_inverse(3, 10, 0.1)
    with pytest.raises(InvalidInputError, match="log_target must be ≤ 0"):
        binomial_tail_inverse(3, 10, math.nan)
    with pytest.raises(InvalidInputError, match="errors = 11 exceeds the number of examples"):
        binomial_tail_inverse(11, 10, -1.0)


def test_test_set_bound_result_fields() -> None:
    result = held_out_bound(0.005, n=1000, delta=0.05)
    assert result.method == "test-set"
    assert result.complexity_nats == 0.0
    assert result.terms["errors"] == 5
    assert result.terms["log_term"] == pytest.approx(math.log(20))


# ---------------------------------------------------------------------------------------------
# Occam bounds
# ---------------------------------------------------------------------------------------------

N_BIG = 10**6
K_BIG = 10**6  # bits: the target δ·2^(−10⁶) underflows any float


def test_occam_binomial_in_log_space_at_a_million_bits_and_examples() -> None:
    kl = bits_to_nats(K_BIG)
    assert math.exp(math.log(0.05) - kl) == 0.0  # a linear-space target would underflow
    for errors in (0, 1000, 10_000, 300_000):
        r = errors / N_BIG
        binomial = occam_binomial(r, kl=kl, n=N_BIG, delta=0.05)
        kl_form = occam_kl(r, kl=kl, n=N_BIG, delta=0.05)
        assert 0.0 < binomial.value < 1.0
        assert r < binomial.value
        # Chernoff: P[Bin ≤ k] ≤ exp(−n kl(k/n‖p)), so the exact tail is the tighter one
        # (equal at k = 0, where (1 − p)^n = exp(−n kl(0‖p)): allow the two brackets' widths)
        assert binomial.value <= kl_form.value + BINOMIAL_XTOL + KL_INVERSE_XTOL
        assert binomial.terms["errors"] == errors
        assert binomial.terms["code_length_bits"] == pytest.approx(K_BIG, rel=1e-15)


def test_occam_binomial_zero_errors_closed_form_at_a_million_bits() -> None:
    # (1 − p)^n = δ 2^(−K)  ⇒  p = 1 − exp((ln δ − K ln 2)/n) ≈ 0.5000015
    kl, delta = bits_to_nats(K_BIG), 0.05
    with localcontext() as ctx:
        ctx.prec = 50
        # Decimal(delta) is the exact value of the float the library receives
        exact = _one_minus_exp((Decimal(delta).ln() - Decimal(kl)) / N_BIG)
    value = occam_binomial(0.0, kl=kl, n=N_BIG, delta=delta).value
    assert exact <= Decimal(value) <= exact * (1 + Decimal(REL)) + Decimal(BINOMIAL_XTOL)
    assert value == pytest.approx(0.5000014978639, rel=1e-12)


@pytest.mark.parametrize("bits", [10, 100, 1000])
def test_occam_binomial_against_scipy_beta_isf(bits: int) -> None:
    # δ·2^(−K) is still a normal float up to K ≈ 1000, so scipy can serve as a reference.
    delta, k, n = 0.05, 100, 10_000
    value = occam_binomial(k / n, kl=bits_to_nats(bits), n=n, delta=delta).value
    ref = float(stats.beta.isf(delta * 2.0**-bits, k + 1, n - k))
    assert ref <= value <= ref * (1 + REL) + BINOMIAL_XTOL


def test_occam_kl_closed_form_and_reference() -> None:
    # MATH.md §6 kl form; k = 0, K = 0: kl⁻¹(0, ln(20)/1000) = 1 − 0.05^(1/1000)
    delta = 0.05
    value = occam_kl(0.0, kl=0.0, n=1000, delta=delta).value
    with localcontext() as ctx:
        ctx.prec = 50
        exact = _one_minus_exp(Decimal(delta).ln() / 1000)
    assert exact <= Decimal(value)
    assert value == pytest.approx(float(exact), rel=1e-12)
    # a general case against the decimal reference inverse
    kl, n, delta, r = bits_to_nats(20_000), 60_000, 0.05, 300 / 60_000
    result = occam_kl(r, kl=kl, n=n, delta=delta)
    rhs = (kl + math.log(1 / delta)) / n
    exact_dec = ref_kl_inv_upper(r, rhs)
    assert Decimal(result.value) >= exact_dec
    assert result.value == pytest.approx(float(exact_dec), rel=REL)


@settings(deadline=None, max_examples=60)
@given(
    n=st.integers(1, 5000),
    frac=st.floats(0.0, 1.0),
    bits=st.floats(0.0, 1e4),
    # δ ≤ 1/2: a binomial upper limit may lie *below* k/n when δ > 1/2 (k = 2, n = 3,
    # δ = 0.75 gives 0.25^(1/3) = 0.63 < 2/3), correctly; P[Bin(n, k/n) ≤ k] ≥ 1/2.
    delta=st.floats(1e-10, 0.5),
)
def test_occam_binomial_le_kl_form_le_one(n: int, frac: float, bits: float, delta: float) -> None:
    k = round(frac * n)
    r = k / n
    kl = bits_to_nats(bits)
    binomial = occam_binomial(r, kl=kl, n=n, delta=delta).value
    kl_form = occam_kl(r, kl=kl, n=n, delta=delta).value
    assert r <= binomial <= kl_form + BINOMIAL_XTOL + KL_INVERSE_XTOL
    assert kl_form <= 1.0


@settings(deadline=None, max_examples=40)
@given(
    n=st.integers(1, 5000),
    frac=st.floats(0.0, 1.0),
    d1=st.floats(1e-10, 0.99),
    d2=st.floats(1e-10, 0.99),
)
def test_held_out_smaller_delta_never_gives_a_smaller_bound(n, frac, d1, d2) -> None:
    r = round(frac * n) / n
    small, large = sorted((d1, d2))
    tight = held_out_bound(r, n=n, delta=large).value
    # the exact limit is monotone; each computed value is in [exact, exact + XTOL]
    assert held_out_bound(r, n=n, delta=small).value >= tight - BINOMIAL_XTOL


def test_more_bits_cost_more() -> None:
    values = [
        occam_binomial(0.01, kl=bits_to_nats(b), n=10_000, delta=0.05).value
        for b in (0, 10, 100, 1000, 10_000)
    ]
    assert values == sorted(values)
    assert len(set(values)) == len(values)


# ---------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------

BAD = [
    pytest.param({"delta": 0.0}, r"delta must be in \(0, 1\)", id="delta=0"),
    pytest.param({"delta": 1.0}, r"delta must be in \(0, 1\)", id="delta=1"),
    pytest.param({"r": 1.5}, r"empirical_risk must be in \[0, 1\].*got 1\.5", id="risk=1.5"),
    pytest.param({"n": 0}, "n must be at least 1, got 0", id="n=0"),
    pytest.param({"n": 2.5}, "n must be an integer, got 2.5", id="n=2.5"),
    pytest.param({"r": math.nan}, "empirical_risk must be finite", id="risk=nan"),
    pytest.param({"delta": math.inf}, "delta must be finite", id="delta=inf"),
    pytest.param({"r": 0.0015}, "not a whole number of errors", id="risk-not-k/n"),
]
BAD_KL = [
    pytest.param({"kl": -1.0}, "kl must be ≥ 0 nats", id="kl<0"),
    pytest.param({"kl": math.nan}, "kl must be finite", id="kl=nan"),
    pytest.param({"kl": math.inf}, "kl must be finite", id="kl=inf"),
]


@pytest.mark.parametrize(("override", "match"), BAD + BAD_KL)
def test_occam_binomial_rejects_bad_inputs(override: dict, match: str) -> None:
    args = {"r": 0.01, "kl": 10.0, "n": 1000, "delta": 0.05} | override
    with pytest.raises(InvalidInputError, match=match):
        occam_binomial(args.pop("r"), **args)


@pytest.mark.parametrize(("override", "match"), [p for p in BAD if p.id != "risk-not-k/n"] + BAD_KL)
def test_occam_kl_rejects_bad_inputs(override: dict, match: str) -> None:
    args = {"r": 0.01, "kl": 10.0, "n": 1000, "delta": 0.05} | override
    with pytest.raises(InvalidInputError, match=match):
        occam_kl(args.pop("r"), **args)


@pytest.mark.parametrize(("override", "match"), BAD)
def test_test_set_bound_rejects_bad_inputs(override: dict, match: str) -> None:
    args = {"r": 0.01, "n": 1000, "delta": 0.05} | override
    with pytest.raises(InvalidInputError, match=match):
        held_out_bound(args.pop("r"), **args)


def test_clopper_pearson_rejects_too_many_errors() -> None:
    with pytest.raises(InvalidInputError, match="errors = 5 exceeds the number of examples n = 4"):
        clopper_pearson_upper(5, 4, 0.05)


# ---------------------------------------------------------------------------------------------
# Units: the one bits → nats helper
# ---------------------------------------------------------------------------------------------


def test_bits_to_nats_rounds_up_and_round_trips() -> None:
    assert bits_to_nats(0.0) == 0.0
    for bits in (1.0, 8.0, 20_000.0, 1e6):
        nats = bits_to_nats(bits)
        assert nats >= bits * math.log(2)
        assert nats == pytest.approx(bits * math.log(2), rel=1e-15)
        assert nats_to_bits(nats) == pytest.approx(bits, rel=1e-15)
    with localcontext() as ctx:
        ctx.prec = 40
        assert Decimal(bits_to_nats(1.0)) >= Decimal(2).ln()  # never below K ln 2


@pytest.mark.parametrize(
    ("bits", "match"), [(-1.0, "bits must be ≥ 0"), (math.nan, "bits must be finite")]
)
def test_bits_to_nats_rejects_bad_values(bits: float, match: str) -> None:
    with pytest.raises(InvalidInputError, match=match):
        bits_to_nats(bits)
