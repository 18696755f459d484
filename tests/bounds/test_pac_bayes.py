"""PAC-Bayes bounds: MATH.md §2 reference values, Maurer's ξ(n), properties, validation."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from decimal import Decimal, localcontext
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pacbound.bounds import (
    DEFAULT_CATONI_GRID,
    BoundResult,
    log_maurer_xi,
    pac_bayes_catoni,
    pac_bayes_catoni_grid,
    pac_bayes_classic,
    pac_bayes_kl,
    pac_bayes_kl_xi,
    pac_bayes_lambda,
    pac_bayes_quad,
)
from pacbound.bounds.kl import KL_INVERSE_XTOL
from pacbound.errors import InvalidInputError
from tests.bounds.test_kl import ref_kl_inv_upper

# ---------------------------------------------------------------------------------------------
# MATH.md §2 reference table (exact, ln(2√n/δ) form), 10 decimals as printed there.
# ---------------------------------------------------------------------------------------------
MATH_MD_TABLE = [
    # (L̂, KL, n, δ, kl bound, quad, classic)
    pytest.param(0.02, 5000, 60000, 0.025, 0.1343519412, 0.2050453143, 0.2243257831, id="row1"),
    pytest.param(0.1, 200, 1000, 0.05, 0.3843804304, 0.5975505277, 0.4218250745, id="row2"),
    pytest.param(0.0, 10000, 55000, 0.05, 0.1663857224, 0.3639689609, 0.3016492006, id="row3"),
]
#: Issue #2: each reference value to 1e-9 relative (the table prints 10 decimals, so its own
#: rounding is ≤ 5e-11 absolute, far inside this).
TABLE_RTOL = 1e-9


def _decimal_b(kl: float, n: int, delta: float) -> Decimal:
    """B = [KL + ln(2√n/δ)] / n in 60-digit arithmetic."""
    with localcontext() as ctx:
        ctx.prec = 60
        return (Decimal(kl) + (2 * Decimal(n).sqrt() / Decimal(delta)).ln()) / Decimal(n)


@pytest.mark.parametrize(
    ("r", "kl", "n", "delta", "kl_ref", "quad_ref", "classic_ref"), MATH_MD_TABLE
)
def test_math_md_table_kl_form(r, kl, n, delta, kl_ref, quad_ref, classic_ref) -> None:
    result = pac_bayes_kl(r, kl=kl, n=n, delta=delta)
    exact = ref_kl_inv_upper(r, float(_decimal_b(kl, n, delta)))
    assert result.value == pytest.approx(kl_ref, rel=TABLE_RTOL)
    assert Decimal(result.value) >= exact  # never rounded down
    assert result.method == "pac-bayes-kl"


@pytest.mark.parametrize(
    ("r", "kl", "n", "delta", "kl_ref", "quad_ref", "classic_ref"), MATH_MD_TABLE
)
def test_math_md_table_quad_and_classic(r, kl, n, delta, kl_ref, quad_ref, classic_ref) -> None:
    with localcontext() as ctx:
        ctx.prec = 60
        b = _decimal_b(kl, n, delta)
        quad_exact = ((Decimal(r) + b / 2).sqrt() + (b / 2).sqrt()) ** 2
        classic_exact = Decimal(r) + (b / 2).sqrt()
    quad = pac_bayes_quad(r, kl=kl, n=n, delta=delta).value
    classic = pac_bayes_classic(r, kl=kl, n=n, delta=delta).value
    assert quad == pytest.approx(quad_ref, rel=TABLE_RTOL)
    assert classic == pytest.approx(classic_ref, rel=TABLE_RTOL)
    assert Decimal(quad) >= quad_exact
    assert Decimal(classic) >= classic_exact


def test_lambda_and_catoni_against_their_formulas() -> None:
    # Thiemann et al. 2017 and Catoni 2007 formulas (MATH.md §2), evaluated in decimal.
    r, kl, n, delta = 0.1, 200.0, 1000, 0.05
    with localcontext() as ctx:
        ctx.prec = 60
        b = _decimal_b(kl, n, delta)
        lam = Decimal(1)
        lam_exact = Decimal(r) / (1 - lam / 2) + b / (lam * (1 - lam / 2))
        c = Decimal(1)
        num = 1 - (-c * Decimal(r) - (Decimal(kl) + (1 / Decimal(delta)).ln()) / n).exp()
        catoni_exact = num / (1 - (-c).exp())
    lam_value = pac_bayes_lambda(r, kl=kl, n=n, delta=delta, lam=1.0).value
    catoni_value = pac_bayes_catoni(r, kl=kl, n=n, delta=delta, c=1.0).value
    for value, exact in [(lam_value, lam_exact), (catoni_value, catoni_exact)]:
        assert Decimal(value) >= exact
        assert value == pytest.approx(float(exact), rel=1e-12)


def test_catoni_grid_reference_value() -> None:
    # 33-point grid C = 2^(j/4): confidence term ln(33/δ); best C is 2^(3/4) here.
    result = pac_bayes_catoni_grid(0.1, kl=200.0, n=1000, delta=0.05)
    expected = pac_bayes_catoni(0.1, kl=200.0, n=1000, delta=0.05 / 33, c=2.0**0.75).value
    assert result.value == pytest.approx(expected, rel=1e-12)
    assert result.terms["C"] == 2.0**0.75
    assert result.terms["grid_size"] == 33
    assert result.terms["union_cost_nats"] == pytest.approx(math.log(33), rel=1e-15)
    assert round(result.value, 6) == 0.383907


# ---------------------------------------------------------------------------------------------
# Maurer's ξ(n)
# ---------------------------------------------------------------------------------------------


def _exact_xi(n: int) -> Fraction:
    """ξ(n) = Σ_k C(n,k)(k/n)^k(1 − k/n)^(n−k), exactly (0^0 = 1)."""
    return sum(
        (
            math.comb(n, k) * Fraction(k, n) ** k * Fraction(n - k, n) ** (n - k)
            for k in range(n + 1)
        ),
        Fraction(0),
    )


@pytest.mark.parametrize("n", [*range(1, 21), 30, 37, 50])
def test_log_maurer_xi_against_exact_sum(n: int) -> None:
    xi = _exact_xi(n)
    log_xi = log_maurer_xi(n)
    with localcontext() as ctx:
        ctx.prec = 50
        exp_log_xi = Decimal(log_xi).exp()
        xi_dec = Decimal(xi.numerator) / Decimal(xi.denominator)
    assert exp_log_xi >= xi_dec  # never below the exact value
    assert exp_log_xi <= xi_dec * (1 + Decimal("1e-9"))
    # Maurer 2004: √(πn/2) ≤ ξ(n) ≤ 2√n
    assert math.sqrt(math.pi * n / 2) <= float(xi) <= 2 * math.sqrt(n)


def test_log_maurer_xi_small_n_closed_forms() -> None:
    assert log_maurer_xi(1) == pytest.approx(math.log(2.0), rel=1e-15)  # ξ(1) = 2
    assert log_maurer_xi(2) == pytest.approx(math.log(2.5), rel=1e-12)  # 1/4 + 2·1/4·… = 5/2


@pytest.mark.parametrize("n", [1000, 60000, 1_000_000])
def test_log_maurer_xi_bounds_for_large_n(n: int) -> None:
    log_xi = log_maurer_xi(n)
    assert 0.5 * math.log(math.pi * n / 2) <= log_xi <= math.log(2 * math.sqrt(n))


def test_xi_is_about_047_nats_tighter_at_60000() -> None:
    # MATH.md §2: "≈0.47 nats tighter at n=60000"; asymptotically ln(2/√(π/2)) = 0.4674.
    gap = math.log(2 * math.sqrt(60000)) - log_maurer_xi(60000)
    assert gap == pytest.approx(0.465, abs=0.005)


def test_log_maurer_xi_above_exact_range_uses_the_upper_bound() -> None:
    n = 10_000_001
    assert log_maurer_xi(n) >= math.log(2 * math.sqrt(n))
    assert log_maurer_xi(n) == pytest.approx(math.log(2 * math.sqrt(n)), rel=1e-14)


# ---------------------------------------------------------------------------------------------
# Properties
# ---------------------------------------------------------------------------------------------

risks = st.floats(min_value=0.0, max_value=1.0)
kls = st.floats(min_value=0.0, max_value=1e5)
# ≤ 10⁶: pac_bayes_kl_xi sums all n + 1 terms of ξ(n) (1.6 s per call at n = 10⁷).
sizes = st.integers(min_value=1, max_value=10**6)
deltas = st.floats(min_value=1e-12, max_value=0.999)

BoundFn = Callable[..., BoundResult]
PLAIN_BOUNDS: list[BoundFn] = [
    pac_bayes_kl,
    pac_bayes_kl_xi,
    pac_bayes_classic,
    pac_bayes_quad,
    lambda r, **kw: pac_bayes_lambda(r, lam=1.0, **kw),
    lambda r, **kw: pac_bayes_catoni(r, c=2.0, **kw),
    pac_bayes_catoni_grid,
]


@settings(deadline=None, max_examples=100)
@given(r=risks, kl=kls, n=sizes, delta=deltas)
def test_empirical_risk_le_bound_le_one(r: float, kl: float, n: int, delta: float) -> None:
    for func in PLAIN_BOUNDS:
        result = func(r, kl=kl, n=n, delta=delta)
        assert r <= result.value <= 1.0, func


@settings(deadline=None, max_examples=100)
@given(r=risks, kl=kls, n=sizes, d1=deltas, d2=deltas)
def test_smaller_delta_never_gives_a_smaller_bound(r, kl, n, d1, d2) -> None:
    small, large = sorted((d1, d2))
    for func in PLAIN_BOUNDS:
        tight = func(r, kl=kl, n=n, delta=large).value
        # kl-form values sit in [exact, exact + XTOL]; closed forms are exactly monotone
        assert func(r, kl=kl, n=n, delta=small).value >= tight - KL_INVERSE_XTOL, func


@settings(deadline=None, max_examples=100)
@given(r=risks, kl=kls, n=sizes, delta=deltas, lam=st.floats(0.01, 1.99))
def test_kl_form_is_the_tightest_of_its_relaxations(r, kl, n, delta, lam) -> None:
    kl_value = pac_bayes_kl(r, kl=kl, n=n, delta=delta).value
    # ξ(n) ≤ 2√n, with equality at n = 1 (then the two differ only by their upward roundings)
    assert pac_bayes_kl_xi(r, kl=kl, n=n, delta=delta).value <= kl_value + KL_INVERSE_XTOL
    for relaxed in (
        pac_bayes_classic(r, kl=kl, n=n, delta=delta),
        pac_bayes_quad(r, kl=kl, n=n, delta=delta),
        pac_bayes_lambda(r, kl=kl, n=n, delta=delta, lam=lam),
    ):
        assert kl_value <= relaxed.value + KL_INVERSE_XTOL, relaxed.method


@settings(deadline=None, max_examples=60)
@given(r=risks, kl=st.floats(0.0, 1e4), n=st.integers(10, 10**6), delta=deltas)
def test_catoni_grid_never_below_the_infimum_of_fixed_c_bounds(r, kl, n, delta) -> None:
    # inf over C > 0 at the same δ ≤ min over a dense C grid ∪ the default grid; the grid
    # bound (which pays ln G) must not beat even that minimum.
    dense = np.geomspace(1e-3, 1e3, 400).tolist() + list(DEFAULT_CATONI_GRID)
    fixed = min(pac_bayes_catoni(r, kl=kl, n=n, delta=delta, c=c).value for c in dense)
    grid = pac_bayes_catoni_grid(r, kl=kl, n=n, delta=delta)
    assert grid.value >= fixed


@settings(deadline=None, max_examples=60)
@given(
    r=risks,
    kl=st.floats(0.0, 1e4),
    n=st.integers(10, 10**6),
    delta=deltas,
    c=st.floats(0.05, 20.0),
    g1=st.integers(1, 50),
    extra=st.integers(1, 50),
)
def test_a_bigger_grid_costs_more(r, kl, n, delta, c, g1, extra) -> None:
    # The same C repeated G times: only the union-bound cost ln G changes.
    small = pac_bayes_catoni_grid(r, kl=kl, n=n, delta=delta, grid=[c] * g1)
    big = pac_bayes_catoni_grid(r, kl=kl, n=n, delta=delta, grid=[c] * (g1 + extra))
    assert big.terms["union_cost_nats"] > small.terms["union_cost_nats"]
    assert big.terms["log_term"] > small.terms["log_term"]
    assert big.value >= small.value
    if small.value < 1.0:  # strictly more unless both are clipped at the trivial bound
        assert big.value > small.value


def test_catoni_grid_of_one_equals_fixed_c() -> None:
    grid = pac_bayes_catoni_grid(0.05, kl=300.0, n=5000, delta=0.05, grid=[1.5])
    fixed = pac_bayes_catoni(0.05, kl=300.0, n=5000, delta=0.05, c=1.5)
    assert grid.value == fixed.value
    assert grid.terms["union_cost_nats"] == 0.0


# ---------------------------------------------------------------------------------------------
# Result objects
# ---------------------------------------------------------------------------------------------


def test_bound_result_is_frozen_and_json_ready() -> None:
    result = pac_bayes_kl(0.02, kl=5000.0, n=60000, delta=0.025)
    assert result.n == 60000
    assert result.delta == 0.025
    assert result.complexity_nats == 5000.0
    assert result.terms["log_term"] == pytest.approx(math.log(2 * math.sqrt(60000) / 0.025))
    assert result.terms["rhs"] == pytest.approx((5000 + result.terms["log_term"]) / 60000)
    with pytest.raises(AttributeError):
        result.value = 0.0  # type: ignore[misc]
    with pytest.raises(TypeError):
        result.terms["rhs"] = 0.0  # type: ignore[index]
    doc = json.loads(json.dumps(result.to_dict(), allow_nan=False))
    assert doc["method"] == "pac-bayes-kl"
    assert doc["value"] == result.value
    assert set(doc) == {
        "method",
        "value",
        "empirical_risk",
        "n",
        "delta",
        "complexity_nats",
        "terms",
    }
    assert "pac-bayes-kl" in repr(result)
    assert "0.1343519412" in repr(result)


# ---------------------------------------------------------------------------------------------
# Validation: every bad value raises InvalidInputError naming the argument
# ---------------------------------------------------------------------------------------------

ALL_BOUNDS = [
    pytest.param(pac_bayes_kl, id="kl"),
    pytest.param(pac_bayes_kl_xi, id="kl-xi"),
    pytest.param(pac_bayes_classic, id="classic"),
    pytest.param(pac_bayes_quad, id="quad"),
    pytest.param(lambda r, **kw: pac_bayes_lambda(r, lam=0.5, **kw), id="lambda"),
    pytest.param(lambda r, **kw: pac_bayes_catoni(r, c=1.0, **kw), id="catoni"),
    pytest.param(pac_bayes_catoni_grid, id="catoni-grid"),
]

BAD_INPUTS = [
    pytest.param({"delta": 0.0}, r"delta must be in \(0, 1\).*got 0\.0", id="delta=0"),
    pytest.param({"delta": 1.0}, r"delta must be in \(0, 1\).*got 1\.0", id="delta=1"),
    pytest.param({"r": 1.5}, r"empirical_risk must be in \[0, 1\].*got 1\.5", id="risk=1.5"),
    pytest.param({"n": 0}, "n must be at least 1, got 0", id="n=0"),
    pytest.param({"n": 2.5}, "n must be an integer, got 2.5", id="n=2.5"),
    pytest.param({"kl": -1.0}, r"kl must be ≥ 0 nats.*got -1\.0", id="kl<0"),
    pytest.param({"kl": math.nan}, "kl must be finite, got nan", id="kl=nan"),
    pytest.param({"r": math.nan}, "empirical_risk must be finite, got nan", id="risk=nan"),
    pytest.param({"delta": math.nan}, "delta must be finite, got nan", id="delta=nan"),
    pytest.param({"kl": math.inf}, "kl must be finite, got inf", id="kl=inf"),
    pytest.param({"r": math.inf}, "empirical_risk must be finite, got inf", id="risk=inf"),
    pytest.param({"n": True}, "n must be an integer, got True", id="n=True"),
]


@pytest.mark.parametrize("func", ALL_BOUNDS)
@pytest.mark.parametrize(("override", "match"), BAD_INPUTS)
def test_every_bound_rejects_bad_inputs(func: BoundFn, override: dict, match: str) -> None:
    args = {"r": 0.1, "kl": 10.0, "n": 100, "delta": 0.05} | override
    with pytest.raises(InvalidInputError, match=match) as info:
        func(args.pop("r"), **args)
    assert info.value.exit_code == 3


@pytest.mark.parametrize("lam", [0.0, 2.0, -0.5, math.nan])
def test_lambda_outside_open_interval(lam: float) -> None:
    with pytest.raises(InvalidInputError, match="lam must be"):
        pac_bayes_lambda(0.1, kl=1.0, n=100, delta=0.05, lam=lam)


@pytest.mark.parametrize("c", [0.0, -1.0, math.inf])
def test_catoni_c_must_be_positive_and_finite(c: float) -> None:
    with pytest.raises(InvalidInputError, match="c must be"):
        pac_bayes_catoni(0.1, kl=1.0, n=100, delta=0.05, c=c)


def test_catoni_grid_must_be_nonempty_and_positive() -> None:
    with pytest.raises(InvalidInputError, match="grid must not be empty"):
        pac_bayes_catoni_grid(0.1, kl=1.0, n=100, delta=0.05, grid=[])
    with pytest.raises(InvalidInputError, match="grid value C must be > 0"):
        pac_bayes_catoni_grid(0.1, kl=1.0, n=100, delta=0.05, grid=[1.0, 0.0])
