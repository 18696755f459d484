"""δ accounting: named parts that sum to the total, grids paying ln G (MATH.md §8)."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pacbound.bounds import DeltaBudget, DeltaPart
from pacbound.bounds.budget import BUDGET_RTOL, remaining_delta
from pacbound.errors import InvalidInputError


def test_split_parts_sum_to_the_total() -> None:
    budget = DeltaBudget.split(0.05, {"pac-bayes": 0.9, "monte-carlo": 0.1})
    assert budget.part("pac-bayes").delta == pytest.approx(0.045, rel=1e-15)
    assert budget.part("monte-carlo").delta == pytest.approx(0.005, rel=1e-15)
    assert math.fsum(p.delta for p in budget.parts) == pytest.approx(0.05, rel=1e-15)
    assert budget.spent == pytest.approx(budget.total, rel=1e-15)
    assert [p.name for p in budget.parts] == ["pac-bayes", "monte-carlo"]  # order kept


@settings(deadline=None, max_examples=200)
@given(
    total=st.floats(1e-12, 0.999),
    weights=st.dictionaries(
        st.text(min_size=1, max_size=8), st.floats(1e-6, 1e6), min_size=1, max_size=12
    ),
)
def test_split_always_sums_to_total(total: float, weights: dict[str, float]) -> None:
    budget = DeltaBudget.split(total, weights)
    exact = sum((Fraction(p.delta) for p in budget.parts), Fraction(0))
    assert exact <= Fraction(total)  # never above, not even by an ulp
    assert abs(budget.spent - total) <= BUDGET_RTOL * total
    assert len(budget.parts) == len(weights)
    for part in budget.parts:
        assert part.delta == pytest.approx(total * weights[part.name] / math.fsum(weights.values()))


def test_parts_not_summing_to_total_are_refused() -> None:
    with pytest.raises(InvalidInputError, match=r"sum to 0\.04, not the total delta 0\.05"):
        DeltaBudget(0.05, (DeltaPart("a", 0.02), DeltaPart("b", 0.02)))
    with pytest.raises(InvalidInputError, match=r"sum to more than the total delta 0\.05"):
        DeltaBudget(0.05, (DeltaPart("a", 0.03), DeltaPart("b", 0.03)))
    # exact sums are fine, and so is float rounding below the total within BUDGET_RTOL
    DeltaBudget(0.1 + 0.2, (DeltaPart("a", 0.1), DeltaPart("b", 0.2)))
    # but 0.1 + 0.2 (exactly, as the floats given) is above the float 0.3
    with pytest.raises(InvalidInputError, match=r"more than the total delta 0\.3 \(by 2\.78e-17\)"):
        DeltaBudget(0.3, (DeltaPart("a", 0.1), DeltaPart("b", 0.2)))
    DeltaBudget(0.05, (DeltaPart("a", 0.045), DeltaPart("b", math.nextafter(0.005, 0.0))))


def test_parts_summing_above_the_total_by_one_ulp_are_refused() -> None:
    # What split(0.05, {0.9, 0.1}) returned before: 3.5e-18 above 0.05 (exact sum), which
    # the old relative tolerance let through in both directions.
    parts = (DeltaPart("pac-bayes", 0.045000000000000005), DeltaPart("mc", 0.005000000000000001))
    with pytest.raises(
        InvalidInputError,
        match=r"sum to more than the total delta 0\.05 \(by 3\.47e-18\); round the parts down",
    ) as info:
        DeltaBudget(0.05, parts)
    assert "\n" not in str(info.value) and len(str(info.value)) < 200
    above = math.nextafter(0.04, 1.0)
    with pytest.raises(InvalidInputError, match="sum to more than the total delta"):
        DeltaBudget(0.05, (DeltaPart("a", above), DeltaPart("b", 0.01)))


def test_split_rounds_each_part_down() -> None:
    budget = DeltaBudget.split(0.05, {"pac-bayes": 0.9, "monte-carlo": 0.1})
    for part, weight in zip(budget.parts, (0.9, 0.1), strict=True):
        share = Fraction(0.05) * Fraction(weight) / (Fraction(0.9) + Fraction(0.1))
        assert Fraction(part.delta) <= share < Fraction(math.nextafter(part.delta, 1.0))


@settings(deadline=None, max_examples=300)
@given(total=st.floats(1e-12, 0.999), frac=st.floats(0.0, 1.0, exclude_max=True))
def test_remaining_delta_is_the_largest_float_that_fits(total: float, frac: float) -> None:
    spent = total * frac
    rest = remaining_delta(total, spent)
    assert Fraction(spent) + Fraction(rest) <= Fraction(total)
    assert Fraction(spent) + Fraction(math.nextafter(rest, 1.0)) > Fraction(total)
    if rest > 0.0:
        DeltaBudget(
            total,
            (DeltaPart("a", rest), DeltaPart("b", spent)) if spent else (DeltaPart("a", rest),),
        )


def test_remaining_delta_where_subtraction_rounds_up() -> None:
    delta, mc = 0.07842546823972447, 0.015685093647944896
    assert Fraction(delta - mc) + Fraction(mc) > Fraction(delta)  # plain − would overspend
    rest = remaining_delta(delta, mc)
    assert rest == math.nextafter(delta - mc, 0.0)
    DeltaBudget(delta, (DeltaPart("pac-bayes", rest), DeltaPart("monte-carlo", mc)))


def test_part_names_must_be_unique() -> None:
    with pytest.raises(InvalidInputError, match="unique names"):
        DeltaBudget(0.05, (DeltaPart("a", 0.025), DeltaPart("a", 0.025)))


def test_empty_budget_is_refused() -> None:
    with pytest.raises(InvalidInputError, match="at least one part"):
        DeltaBudget(0.05, ())
    with pytest.raises(InvalidInputError, match="at least one part"):
        DeltaBudget.split(0.05, {})


@pytest.mark.parametrize("weight", [0.0, -1.0, math.nan, math.inf])
def test_split_refuses_bad_weights(weight: float) -> None:
    with pytest.raises(InvalidInputError, match="must be a positive number"):
        DeltaBudget.split(0.05, {"a": 1.0, "b": weight})


@pytest.mark.parametrize("total", [0.0, 1.0, -0.1, math.nan])
def test_total_must_be_a_probability(total: float) -> None:
    with pytest.raises(InvalidInputError, match="delta must be"):
        DeltaBudget.split(total, {"a": 1.0})


def test_grid_part_gives_each_choice_delta_over_g() -> None:
    budget = DeltaBudget.split(
        0.05,
        {"pac-bayes": 0.95, "monte-carlo": 0.05},
        grid_sizes={"pac-bayes": 30},
        descriptions={"pac-bayes": "prior scale grid"},
    )
    part = budget.part("pac-bayes")
    assert part.grid_size == 30
    assert part.per_choice == pytest.approx(0.0475 / 30, rel=1e-15)
    assert part.union_cost_nats == pytest.approx(math.log(30), rel=1e-15)
    assert part.description == "prior scale grid"
    mc = budget.part("monte-carlo")
    assert mc.per_choice == mc.delta
    assert mc.union_cost_nats == 0.0
    # ln(1/per_choice) = ln(1/δ) + ln G: the search costs exactly ln G nats
    assert math.log(1 / part.per_choice) == pytest.approx(
        math.log(1 / part.delta) + part.union_cost_nats, rel=1e-14
    )


@pytest.mark.parametrize("g", [1, 2, 10, 1000])
def test_bigger_grid_costs_more(g: int) -> None:
    small, big = DeltaPart("x", 0.01, g), DeltaPart("x", 0.01, g + 1)
    assert big.union_cost_nats > small.union_cost_nats
    assert big.per_choice < small.per_choice


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"delta": 0.0}, "delta part 'p' must be in"),
        ({"delta": 1.5}, "delta part 'p' must be in"),
        ({"delta": 0.1, "grid_size": 0}, "grid size of delta part 'p' must be at least 1"),
        ({"delta": 0.1, "grid_size": 2.5}, "grid size of delta part 'p' must be an integer"),
    ],
)
def test_part_validation(kwargs: dict, match: str) -> None:
    with pytest.raises(InvalidInputError, match=match):
        DeltaPart("p", **kwargs)


def test_unknown_part_lists_valid_names() -> None:
    budget = DeltaBudget.split(0.05, {"pac-bayes": 1, "monte-carlo": 1})
    with pytest.raises(KeyError, match="the parts are: pac-bayes, monte-carlo"):
        budget.part("grid")


def test_budget_is_frozen_and_serializes() -> None:
    budget = DeltaBudget.split(0.05, {"a": 3, "b": 1}, grid_sizes={"a": 4})
    with pytest.raises(AttributeError):
        budget.total = 0.1  # type: ignore[misc]
    assert isinstance(budget.parts, tuple)
    doc = budget.to_dict()
    assert doc["total"] == 0.05
    assert doc["parts"][0] == {
        "name": "a",
        "delta": pytest.approx(0.0375),
        "grid_size": 4,
        "per_choice": pytest.approx(0.0375 / 4),
        "description": "",
    }
