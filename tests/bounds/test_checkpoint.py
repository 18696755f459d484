"""The checkpoint certificate L(h) ≤ L(Q) + D(h, Q) (MATH.md §11)."""

from __future__ import annotations

import math

import pytest
from scipy import stats

from pacbound.bounds import BoundResult
from pacbound.bounds.checkpoint import checkpoint_bound, disagreement_bound
from pacbound.errors import InvalidInputError


@pytest.mark.parametrize(
    ("k", "m", "delta"), [(0, 1000, 0.05), (5, 1000, 0.05), (100, 10000, 0.01)]
)
def test_disagreement_bound_is_the_clopper_pearson_limit(k: int, m: int, delta: float) -> None:
    value = disagreement_bound(k, m=m, delta=delta).value
    exact = stats.beta.ppf(1 - delta, k + 1, m - k)
    assert value >= exact - 1e-12
    assert value == pytest.approx(exact, abs=1e-9)
    # Not above: at the bound the observed count is exactly δ-unlikely.
    assert stats.binom.cdf(k, m, value) <= delta * (1 + 1e-6)


def test_checkpoint_bound_adds_and_never_rounds_down() -> None:
    q = BoundResult(0.1, "pac-bayes-kl", 0.05, 1000, 0.04)
    d = disagreement_bound(3, m=500, delta=0.01)
    out = checkpoint_bound(q, d)
    assert out.value >= 0.1 + d.value
    assert out.value == pytest.approx(0.1 + d.value, rel=1e-15)
    assert out.delta == pytest.approx(0.05)
    assert out.terms["disagreement_rate"] == pytest.approx(3 / 500)


def test_checkpoint_bound_caps_at_one() -> None:
    q = BoundResult(0.9, "pac-bayes-kl", 0.5, 100, 0.04)
    d = disagreement_bound(40, m=100, delta=0.01)
    assert checkpoint_bound(q, d).value == 1.0


def test_disagreement_bound_refuses_bad_counts() -> None:
    with pytest.raises(InvalidInputError, match="errors"):
        disagreement_bound(11, m=10, delta=0.05)
    with pytest.raises(InvalidInputError, match="delta"):
        disagreement_bound(1, m=10, delta=1.5)
    assert math.isfinite(disagreement_bound(10, m=10, delta=0.05).value)
