"""The binary kl and its inverses: reference values, edge cases, properties, and an
independent high-precision cross-check (pure-Python ``decimal``, no third-party library).

The contract under test (MATH.md §1): kl⁻¹ is never below the exact inverse (a certificate
must not be optimistic) and is the upper end of a bracket at most ``KL_INVERSE_XTOL`` wide.
"""

from __future__ import annotations

import math
from decimal import Decimal, localcontext

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from pacbound.bounds import binary_kl, kl_inv_lower, kl_inv_upper
from pacbound.bounds.kl import KL_INVERSE_XTOL, KL_TRIVIAL_C
from pacbound.errors import InvalidInputError

# ---------------------------------------------------------------------------------------------
# Independent reference: kl and its inverses in 60-digit decimal arithmetic.
# Decimal(x) is exact for a float x, so "kl(q‖v) ≥ c" below is decided without float rounding.
# ---------------------------------------------------------------------------------------------
PREC = 60
#: Relative width of the reference bracket (far below anything float64 can resolve).
REF_RTOL = Decimal("1e-30")


def _log1p(x: Decimal) -> Decimal:
    """ln(1 + x), by its series when |x| is small (Decimal has no log1p)."""
    if abs(x) >= Decimal("1e-3"):
        return (1 + x).ln()
    term, total, k = x, Decimal(0), 1
    while True:
        t = term / k
        if t == 0 or abs(t) <= abs(total) * Decimal(10) ** (-PREC - 5):
            return total
        total += t
        term *= -x
        k += 1


def _ln_ratio(a: Decimal, b: Decimal, rel: Decimal) -> Decimal:
    """ln(a/b) where rel = (a − b)/b is supplied exactly (avoids 1 − tiny rounding to 1)."""
    return _log1p(rel) if abs(rel) < Decimal("1e-3") else (a / b).ln()


def decimal_kl(q: float | Decimal, p: float | Decimal) -> Decimal:
    """kl(q‖p) to ~50 significant digits (Decimal('Infinity') when p ∈ {0, 1} and q ≠ p)."""
    with localcontext() as ctx:
        ctx.prec = PREC
        q, p = Decimal(q), Decimal(p)
        if q == p:
            return Decimal(0)
        if (p == 0 and q > 0) or (p == 1 and q < 1):
            return Decimal("Infinity")
        t1 = q * _ln_ratio(q, p, (q - p) / p) if q > 0 else Decimal(0)
        t2 = (1 - q) * _ln_ratio(1 - q, 1 - p, (p - q) / (1 - p)) if q < 1 else Decimal(0)
        return +(t1 + t2)


def _bisect(q: Decimal, c: Decimal, feasible: Decimal, infeasible: Decimal) -> Decimal:
    """Shrink [feasible, infeasible] (either order) to relative width REF_RTOL; return the
    feasible end. Geometric midpoints while the ends differ by more than 2× (tiny roots)."""
    with localcontext() as ctx:
        ctx.prec = PREC
        for _ in range(2000):
            a, b = sorted((feasible, infeasible))
            if b - a <= REF_RTOL * b:
                return feasible
            mid = (a * b).sqrt() if a > 0 and b > 2 * a else (a + b) / 2
            if decimal_kl(q, mid) > c:
                infeasible = mid
            else:
                feasible = mid
    raise AssertionError("reference bisection did not converge")


def ref_kl_inv_upper(q: float, c: float) -> Decimal:
    """Exact max{p ∈ [q, 1] : kl(q‖p) ≤ c}, to relative 1e-30 (the feasible end)."""
    qd, cd = Decimal(q), Decimal(c)
    if cd <= 0:
        return qd
    if decimal_kl(qd, Decimal(1) - Decimal("1e-45")) <= cd:
        return Decimal(1)
    return _bisect(qd, cd, feasible=qd, infeasible=Decimal(1))


def ref_kl_inv_lower(q: float, c: float) -> Decimal:
    """Exact min{p ∈ [0, q] : kl(q‖p) ≤ c}, to relative 1e-30 (the feasible end)."""
    qd, cd = Decimal(q), Decimal(c)
    if cd <= 0 or qd == 0:
        return qd
    if decimal_kl(qd, Decimal("1e-320")) <= cd:
        return Decimal(0)
    return _bisect(qd, cd, feasible=qd, infeasible=Decimal("1e-320"))


def _is_not_below_exact(q: float, c: float, value: float) -> bool:
    """value ≥ kl⁻¹(q, c) exactly: kl(q‖·) increases on [q, 1], so kl(q‖value) ≥ c suffices."""
    return value == 1.0 or decimal_kl(q, value) >= Decimal(c)


def _is_not_above_exact(q: float, c: float, value: float) -> bool:
    """value ≤ lower inverse exactly: kl(q‖·) decreases on [0, q]."""
    return value == 0.0 or (value <= q and decimal_kl(q, value) >= Decimal(c))


# ---------------------------------------------------------------------------------------------
# Reference values
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("q", "p", "expected"),
    [
        # closed form: 0.1 ln(0.5) + 0.9 ln(0.9/0.8) = 0.0366900140…
        (0.1, 0.2, 0.1 * math.log(0.5) + 0.9 * math.log(0.9 / 0.8)),
        (0.5, 0.5, 0.0),
        (0.0, 0.3, -math.log(0.7)),  # kl(0‖p) = −ln(1 − p)
        (1.0, 0.3, -math.log(0.3)),  # kl(1‖p) = −ln p
        (0.0, 0.0, 0.0),  # 0·ln 0 = 0
        (1.0, 1.0, 0.0),
    ],
)
def test_binary_kl_closed_forms(q: float, p: float, expected: float) -> None:
    assert binary_kl(q, p) == pytest.approx(expected, rel=1e-14, abs=1e-300)


@pytest.mark.parametrize(("q", "p"), [(0.3, 0.0), (0.3, 1.0), (0.0, 1.0), (1.0, 0.0)])
def test_binary_kl_is_infinite_at_the_ends(q: float, p: float) -> None:
    assert binary_kl(q, p) == math.inf


@pytest.mark.parametrize(
    ("q", "p"), [(1e-12, 1e-12 * (1 + 1e-9)), (0.3, 0.3 + 1e-10), (1 - 1e-9, 1 - 2e-9), (0.2, 0.9)]
)
def test_binary_kl_matches_decimal_reference_without_cancellation(q: float, p: float) -> None:
    # q ≈ p is where the naive formula cancels; the library uses log1p forms (rel 1e-12 here).
    assert binary_kl(q, p) == pytest.approx(float(decimal_kl(q, p)), rel=1e-12)


def test_kl_inv_upper_docstring_value_against_decimal_reference() -> None:
    # pac_bayes_kl's RHS for MATH.md §2 row 1 without the log term: kl⁻¹(0.02, 5000/60000).
    q, c = 0.02, 5000 / 60000
    value = kl_inv_upper(q, c)
    exact = ref_kl_inv_upper(q, c)
    assert _is_not_below_exact(q, c, value)
    assert Decimal(value) - exact <= Decimal("1e-9") * exact
    assert round(value, 10) == 0.1341843806


# ---------------------------------------------------------------------------------------------
# Edge cases (MATH.md §1 rules)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("q", [0.0, 1e-300, 0.3, 1.0])
@pytest.mark.parametrize("c", [0.0, -1.0, -math.inf])
def test_kl_inv_nonpositive_budget_returns_q(q: float, c: float) -> None:
    assert kl_inv_upper(q, c) == q
    assert kl_inv_lower(q, c) == q


@pytest.mark.parametrize("c", [1e-300, 1e-15, 1e-6, 0.1, 1.0, 50.0, 745.0])
def test_kl_inv_upper_at_q_zero_is_one_minus_exp(c: float) -> None:
    value = kl_inv_upper(0.0, c)
    exact = -math.expm1(-c)
    # rounded up by at most one ulp from the closed form, and never below it
    assert exact <= value <= math.nextafter(exact, 2.0)
    assert _is_not_below_exact(0.0, c, value)


@pytest.mark.parametrize("c", [1e-300, 1e-9, 1.0, 1e6])
def test_kl_inv_upper_at_q_one_is_one(c: float) -> None:
    assert kl_inv_upper(1.0, c) == 1.0


@pytest.mark.parametrize("q", [0.0, 1e-12, 0.5, 1.0 - 1e-12, 1.0])
def test_kl_inv_with_infinite_budget(q: float) -> None:
    assert kl_inv_upper(q, math.inf) == 1.0
    assert kl_inv_lower(q, math.inf) == 0.0


HUGE_BUDGETS = [1e154, 1e155, 1e299, 1e308, 1.7976931348623157e308, math.inf]


@pytest.mark.parametrize("q", [0.0, 5e-324, 1e-300, 1e-10, 0.3, 0.5, 1.0 - 1e-16, 1.0])
@pytest.mark.parametrize("c", HUGE_BUDGETS)
def test_kl_inv_with_a_huge_budget_is_trivial_without_overflow(q: float, c: float) -> None:
    # was: RuntimeWarning "overflow encountered in multiply" (c·c in the Newton start) for
    # c > 1.3e154, an error under filterwarnings = error
    assert kl_inv_upper(q, c) == 1.0
    assert kl_inv_lower(q, c) == 0.0
    values = kl_inv_upper(np.full(3, q), np.array([c, 0.5, 0.0]))
    assert values[0] == 1.0
    assert values[1] == kl_inv_upper(q, 0.5)
    assert values[2] == q


@pytest.mark.parametrize("q", [0.0, 1e-300, 1e-10, 0.3, 0.5, 0.9, 1.0 - 1e-12])
def test_trivial_budget_threshold_is_exact(q: float) -> None:
    # Above KL_TRIVIAL_C the exact inverse lies above the largest float below 1, so 1.0 is
    # the smallest float not below it (and 0.0 the largest not above the lower inverse).
    below_one = math.nextafter(1.0, 0.0)
    assert decimal_kl(q, below_one) < Decimal(KL_TRIVIAL_C)
    assert decimal_kl(1.0 - q, below_one) < Decimal(KL_TRIVIAL_C)
    assert kl_inv_upper(q, math.nextafter(KL_TRIVIAL_C, math.inf)) == 1.0


def test_kl_inv_lower_at_q_zero_is_zero() -> None:
    assert kl_inv_lower(0.0, 0.7) == 0.0


@pytest.mark.parametrize(
    ("q", "c", "match"),
    [
        (1.5, 0.1, r"q must lie in \[0, 1\]"),
        (-0.1, 0.1, r"q must lie in \[0, 1\]"),
        (math.nan, 0.1, "q must be finite"),
        (math.inf, 0.1, "q must be finite"),
        (0.1, math.nan, "c must not be NaN"),
    ],
)
def test_kl_inv_rejects_bad_inputs(q: float, c: float, match: str) -> None:
    with pytest.raises(InvalidInputError, match=match):
        kl_inv_upper(q, c)
    with pytest.raises(InvalidInputError, match=match):
        kl_inv_lower(q, c)


def test_binary_kl_rejects_out_of_range() -> None:
    with pytest.raises(InvalidInputError, match=r"p must lie in \[0, 1\]"):
        binary_kl(0.1, 1.2)


# ---------------------------------------------------------------------------------------------
# Independent cross-check against the decimal reference on a few hundred cases
# ---------------------------------------------------------------------------------------------


def _cross_check_cases() -> list[tuple[float, float]]:
    rng = np.random.default_rng(20240601)
    m = 60
    families = [
        (
            10 ** rng.uniform(-12.5, -11.5, m),
            10 ** rng.uniform(-15.5, -14.5, m),
        ),  # q~1e-12, c~1e-15
        (1 - 10 ** rng.uniform(-12.5, -11.5, m), 10 ** rng.uniform(-16, 1, m)),  # q ~ 1 − 1e-12
        (rng.uniform(0, 1, m), rng.uniform(40, 60, m)),  # c ~ 50
        (rng.uniform(0, 0.3, m), 10 ** rng.uniform(-6, 0, m)),  # realistic certificates
        (10 ** rng.uniform(-13, 0, m), 10 ** rng.uniform(-16, 2, m)),  # log-uniform everything
    ]
    cases = [(float(q), float(c)) for qs, cs in families for q, c in zip(qs, cs, strict=True)]
    fixed_q = [1e-12, 1e-6, 0.02, 0.5, 1 - 1e-6, 1 - 1e-12, 5e-324]
    fixed_c = [1e-15, 1e-7, 1e-3, 0.5, 5.0, 50.0]
    cases += [(q, c) for q in fixed_q for c in fixed_c]
    return cases


CROSS_CHECK_CASES = _cross_check_cases()


def test_kl_inv_upper_matches_decimal_reference_on_hundreds_of_cases() -> None:
    qs = np.array([q for q, _ in CROSS_CHECK_CASES])
    cs = np.array([c for _, c in CROSS_CHECK_CASES])
    values = kl_inv_upper(qs, cs)
    optimistic, loose = [], []
    for q, c, value in zip(qs.tolist(), cs.tolist(), values.tolist(), strict=True):
        exact = ref_kl_inv_upper(q, c)
        if not _is_not_below_exact(q, c, value):
            optimistic.append((q, c, value, exact))
        # 1e-9 relative (issue #2); the bracket's absolute width 1e-12 is smaller still.
        if Decimal(value) - exact > Decimal("1e-9") * exact:
            loose.append((q, c, value, exact))
    assert len(CROSS_CHECK_CASES) >= 300
    assert optimistic == [], "kl⁻¹ below the exact inverse (an optimistic certificate)"
    assert loose == []


@pytest.mark.parametrize("q", [5e-324, 1e-300, 1e-12, 1e-6, 0.5])
def test_kl_inv_upper_degenerate_tiny_budget_stays_within_the_bracket(q: float) -> None:
    # c = 1e-300: the root is q + O(1e-150); only the absolute bracket width
    # (KL_INVERSE_XTOL) is promised there, not 1e-9 relative.
    c = 1e-300
    value = kl_inv_upper(q, c)
    assert _is_not_below_exact(q, c, value)
    assert Decimal(value) - ref_kl_inv_upper(q, c) <= Decimal(KL_INVERSE_XTOL)


def test_kl_inv_lower_matches_decimal_reference() -> None:
    rng = np.random.default_rng(7)
    qs = np.concatenate([10 ** rng.uniform(-13, 0, 50), 1 - 10 ** rng.uniform(-13, -0.3, 50)])
    cs = 10 ** rng.uniform(-16, 2, 100)
    values = kl_inv_lower(qs, cs)
    for q, c, value in zip(qs.tolist(), cs.tolist(), values.tolist(), strict=True):
        exact = ref_kl_inv_lower(q, c)
        assert _is_not_above_exact(q, c, value), (q, c, value, exact)
        # Computed by reflection 1 − kl⁻¹(1 − q, c): absolute accuracy (bracket + 2 ulps).
        assert exact - Decimal(value) <= Decimal("1e-9") * exact + Decimal(2 * KL_INVERSE_XTOL)


# ---------------------------------------------------------------------------------------------
# Hypothesis properties
# ---------------------------------------------------------------------------------------------

unit = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)
interior_q = st.floats(min_value=1e-9, max_value=1 - 1e-9)
budgets = st.floats(min_value=1e-10, max_value=100.0)


@settings(deadline=None, max_examples=300)
@given(q=interior_q, c=budgets)
def test_kl_of_the_inverse_is_the_budget(q: float, c: float) -> None:
    value = kl_inv_upper(q, c)
    assume(value < 1.0 - 1e-9)  # interior: the constraint is active
    slope = (value - q) / (value * (1.0 - value))  # d kl(q‖p)/dp at the root
    achieved = binary_kl(q, value)
    # Never below c (up to kl's own rounding), and above c by at most slope × bracket width.
    assert achieved >= c * (1 - 1e-12)
    assert achieved - c <= slope * 2 * KL_INVERSE_XTOL + 1e-12 * c


@settings(deadline=None, max_examples=300)
@given(q=unit, c=st.floats(min_value=0.0, max_value=1e3))
def test_kl_inverses_bracket_q(q: float, c: float) -> None:
    lower, upper = kl_inv_lower(q, c), kl_inv_upper(q, c)
    assert 0.0 <= lower <= q <= upper <= 1.0


@settings(deadline=None, max_examples=200)
@given(q1=unit, q2=unit, c=st.floats(min_value=0.0, max_value=1e3))
def test_kl_inv_upper_is_monotone_in_q(q1: float, q2: float, c: float) -> None:
    lo, hi = sorted((q1, q2))
    # exact inverse is increasing; each computed value lies in [exact, exact + XTOL]
    assert kl_inv_upper(lo, c) <= kl_inv_upper(hi, c) + KL_INVERSE_XTOL


@settings(deadline=None, max_examples=200)
@given(q=unit, c1=st.floats(0.0, 1e3), c2=st.floats(0.0, 1e3))
def test_kl_inv_upper_is_monotone_in_c(q: float, c1: float, c2: float) -> None:
    lo, hi = sorted((c1, c2))
    assert kl_inv_upper(q, lo) <= kl_inv_upper(q, hi) + KL_INVERSE_XTOL
    assert kl_inv_lower(q, lo) >= kl_inv_lower(q, hi) - 2 * KL_INVERSE_XTOL


@settings(deadline=None, max_examples=100)
@given(q=st.floats(1e-12, 1 - 1e-12), c=st.floats(1e-15, 60.0))
def test_kl_inv_upper_never_below_exact_property(q: float, c: float) -> None:
    assert _is_not_below_exact(q, c, kl_inv_upper(q, c))


@settings(deadline=None, max_examples=100)
@given(q=st.floats(1e-12, 1 - 1e-12), c=st.floats(1e-15, 60.0))
def test_kl_inv_lower_never_above_exact_property(q: float, c: float) -> None:
    assert _is_not_above_exact(q, c, kl_inv_lower(q, c))


# ---------------------------------------------------------------------------------------------
# Vectorization: array in → same shape out, equal to elementwise scalar calls
# ---------------------------------------------------------------------------------------------


def _grid_inputs() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    q = np.concatenate([[0.0, 1.0, 0.5], rng.uniform(0, 1, 9), 10 ** rng.uniform(-12, -1, 12)])
    c = np.concatenate([[0.0, math.inf, 1e-300], 10 ** rng.uniform(-15, 2, 21)])
    return q.reshape(4, 6), c.reshape(4, 6)


@pytest.mark.parametrize("func", [kl_inv_upper, kl_inv_lower])
def test_kl_inverses_vectorize_elementwise(func) -> None:
    q, c = _grid_inputs()
    values = func(q, c)
    assert isinstance(values, np.ndarray)
    assert values.shape == (4, 6)
    expected = np.array([func(a, b) for a, b in zip(q.ravel(), c.ravel(), strict=True)])
    np.testing.assert_array_equal(values.ravel(), expected)


def test_kl_inv_upper_mixed_bisection_elements_equal_scalar_calls() -> None:
    # Both elements are finished by the bisection fallback, with initial brackets of different
    # widths (1 − q); each must stop on its own width, not run on until the other one stops.
    q, c = np.array([0.5, 1e-7]), np.array([1e-300, 0.0011])
    values = kl_inv_upper(q, c)
    assert values.tolist() == [kl_inv_upper(0.5, 1e-300), kl_inv_upper(1e-7, 0.0011)]


def test_kl_functions_broadcast() -> None:
    q = np.array([[0.01], [0.1], [0.4]])
    c = np.array([0.0, 0.01, 0.1, 1.0])
    for func in (kl_inv_upper, kl_inv_lower, binary_kl):
        values = func(q, np.clip(c, 0, 0.99) if func is binary_kl else c)
        assert values.shape == (3, 4)
    upper = kl_inv_upper(q, c)
    assert upper[1, 2] == kl_inv_upper(0.1, 0.1)


def test_scalar_in_scalar_out() -> None:
    assert type(kl_inv_upper(0.1, 0.2)) is float
    assert type(kl_inv_lower(0.1, 0.2)) is float
    assert type(binary_kl(0.1, 0.2)) is float
    assert type(kl_inv_upper(np.float64(0.1), 0.2)) is float
