"""The Gaussian certificate's δ budget never spends more than --delta (issue #11)."""

from __future__ import annotations

from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pacbound.certify.gaussian_options import GaussianOptions


def _spent(options: GaussianOptions) -> Fraction:
    return sum((Fraction(p.delta) for p in options.budget().parts), Fraction(0))


def test_pac_bayes_part_is_rounded_down_where_subtraction_rounds_up() -> None:
    # delta − mc_delta rounds up here: the old budget summed to 1 ulp above delta, which the
    # strict DeltaBudget check now refuses
    delta, mc = 0.07842546823972447, 0.015685093647944896
    assert Fraction(delta - mc) + Fraction(mc) > Fraction(delta)
    options = GaussianOptions(delta=delta, mc_delta=mc)
    assert _spent(options) <= Fraction(delta)
    assert options.budget().part("pac-bayes").delta == pytest.approx(delta - mc, rel=1e-15)


@settings(deadline=None, max_examples=200)
@given(delta=st.floats(1e-9, 0.99), frac=st.one_of(st.just(0.2), st.floats(1e-6, 0.999)))
def test_gaussian_budget_never_exceeds_delta(delta: float, frac: float) -> None:
    options = GaussianOptions(delta=delta, mc_delta=None if frac == 0.2 else delta * frac)
    assert _spent(options) <= Fraction(delta)
