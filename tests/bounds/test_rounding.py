"""Display rounding goes up, never to nearest (MATH.md §7: "Round up, not to nearest")."""

from __future__ import annotations

import math
from decimal import Decimal

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pacbound.bounds import format_up, round_up
from pacbound.bounds.rounding import format_percent_up


@pytest.mark.parametrize(
    ("value", "digits", "expected"),
    [
        (0.13435194124, 4, "0.1344"),  # MATH.md §2 row 1 kl bound, shown rounded up
        (0.25, 2, "0.25"),  # exact decimals stay put
        (0.1, 1, "0.2"),  # the float 0.1 is 0.1000000000000000055…: strictly above 0.1
        (0.5, 1, "0.5"),
        (0.0, 3, "0.000"),
        (1.0, 4, "1.0000"),
        (0.0029912495450953, 7, "0.0029913"),  # MATH.md §7 first value, rounded up
        (1e-20, 4, "0.0001"),
        (0.99999, 4, "1.0000"),
        # plain notation at every digit count (str(Decimal) would give '0E-7', '1.0001E-8')
        (0.0, 7, "0.0000000"),
        (1e-20, 7, "0.0000001"),
        (1e-8, 12, "0.000000010001"),
        (5e-324, 12, "0.000000000001"),
    ],
)
def test_format_up_values(value: float, digits: int, expected: str) -> None:
    assert format_up(value, digits) == expected


def _check_format_up(value: float, digits: int) -> None:
    text = format_up(value, digits)
    shown, exact = Decimal(text), Decimal(value)  # Decimal(float) is exact
    assert shown >= exact  # never rounds down
    # by less than one unit in the last place (a comparison, so no Decimal rounding)
    assert shown - Decimal(1).scaleb(-digits) < exact
    assert len(text.split(".")[1]) == digits


def test_format_up_never_rounds_down_exhaustive_grid() -> None:
    # every k/10⁴ and its float neighbours, at 1..6 digits
    for k in range(10_001):
        x = k / 10_000
        for value in (math.nextafter(x, -1.0), x, math.nextafter(x, 2.0)):
            if 0.0 <= value <= 1.0:
                for digits in (1, 2, 3, 4, 6):
                    _check_format_up(value, digits)


def test_format_up_random_values() -> None:
    rng = np.random.default_rng(0)
    for value in np.concatenate([rng.random(2000), 10 ** rng.uniform(-15, 0, 2000)]).tolist():
        for digits in (1, 4, 7, 12):
            _check_format_up(value, digits)


@settings(deadline=None, max_examples=300)
@given(value=st.floats(0.0, 1e6), digits=st.integers(1, 12))
def test_format_up_property(value: float, digits: int) -> None:
    _check_format_up(value, digits)


@settings(deadline=None, max_examples=300)
@given(value=st.floats(0.0, 1.0), digits=st.integers(1, 12))
def test_round_up_is_a_float_at_or_above(value: float, digits: int) -> None:
    rounded = round_up(value, digits)
    assert rounded >= value
    # the nearest float to the shown decimal, nudged up if that float sits below value
    shown = Decimal(format_up(value, digits))
    assert abs(Decimal(rounded) - shown) <= Decimal(math.ulp(float(shown))) or rounded == value


def test_round_up_examples() -> None:
    assert round_up(0.13435194124, 4) == 0.1344
    assert round_up(0.25, 2) == 0.25
    assert round_up(0.1, 1) == 0.2


def test_format_percent_up() -> None:
    assert format_percent_up(0.034512) == "3.46%"
    assert format_percent_up(0.03) == "3.00%"  # 100 × 0.03 is exactly 3.0 in float
    assert format_percent_up(0.0300001, 2) == "3.01%"
    assert format_percent_up(1e-9, 4) == "0.0001%"


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_format_up_refuses_non_finite(value: float) -> None:
    with pytest.raises(ValueError, match="cannot format a non-finite bound"):
        format_up(value)
