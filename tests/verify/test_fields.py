"""The leaf-by-leaf comparison of a reported results block with a re-derived one."""

from __future__ import annotations

import math

import pytest

from pacbound.verify.fields import (
    ABSENT,
    FieldCheck,
    Verification,
    compare_results,
    dotted,
    is_under,
    leaves,
    same,
)

RESULTS = {
    "bound": 0.25,
    "verdict": {"non_vacuous": True, "chance_error": 0.5},
    "delta_budget": {"parts": [{"name": "pac-bayes", "delta": 0.04}], "total": 0.05},
    "heldout": None,
    "search": [{"bound": 0.3}, {"bound": 0.25}],
    "empty": {},
}


def test_leaves_are_dotted_paths_with_list_indices() -> None:
    assert {dotted(p): v for p, v in leaves(RESULTS)} == {
        "bound": 0.25,
        "verdict.non_vacuous": True,
        "verdict.chance_error": 0.5,
        "delta_budget.parts[0].name": "pac-bayes",
        "delta_budget.parts[0].delta": 0.04,
        "delta_budget.total": 0.05,
        "heldout": None,
        "search[0].bound": 0.3,
        "search[1].bound": 0.25,
        "empty": {},
    }


def test_identical_blocks_agree_on_every_leaf() -> None:
    checks = compare_results(RESULTS, RESULTS)
    assert len(checks) == 10 and all(c.agree for c in checks)


def test_a_changed_leaf_disagrees_by_its_path() -> None:
    forged = {
        **RESULTS,
        "delta_budget": {"parts": [{"name": "pac-bayes", "delta": 0.05}], "total": 0.05},
    }
    bad = [c for c in compare_results(forged, RESULTS) if not c.agree]
    assert [(c.field, c.reported, c.recomputed) for c in bad] == [
        ("delta_budget.parts[0].delta", 0.05, 0.04)
    ]


def test_a_leaf_on_one_side_only_disagrees() -> None:
    added = {**RESULTS, "extra": 1}
    removed = {k: v for k, v in RESULTS.items() if k != "bound"}
    assert [
        (c.field, c.reported, c.recomputed) for c in compare_results(added, RESULTS) if not c.agree
    ] == [("extra", 1, ABSENT)]
    assert [
        (c.field, c.reported, c.recomputed)
        for c in compare_results(removed, RESULTS)
        if not c.agree
    ] == [("bound", ABSENT, 0.25)]


def test_a_statement_replaced_by_null_disagrees() -> None:
    recomputed = {**RESULTS, "heldout": {"bound": 0.3}}
    bad = {c.field for c in compare_results(RESULTS, recomputed) if not c.agree}
    assert bad == {"heldout", "heldout.bound"}


def test_choice_fields_are_skipped_with_everything_below_them() -> None:
    other = {**RESULTS, "search": [{"bound": 0.9}]}
    checks = compare_results(other, RESULTS, skip=("search",))
    assert all(c.agree for c in checks) and not any(c.field.startswith("search") for c in checks)
    assert is_under(("search", 0, "bound"), ("search",))
    assert not is_under(("searched",), ("search",))


@pytest.mark.parametrize(
    ("a", "b", "agree"),
    [
        (True, 1, False),
        (1, 1.0, True),
        (math.nan, math.nan, False),
        (None, None, True),
        ([1], [1], True),
    ],
)
def test_json_equality(a: object, b: object, agree: bool) -> None:
    assert same(a, b) is agree


def test_verification_summarises_its_checks() -> None:
    outcome = Verification("m", (FieldCheck("a", 1, 1), FieldCheck("b", 1, 2)))
    assert not outcome.agree and outcome.disagreeing == ["b"]
    assert outcome.recomputed("b") == 2
    with pytest.raises(KeyError):
        outcome.recomputed("c")
    longer = outcome.extended([FieldCheck("c", 0, 0)])
    assert [c.field for c in longer.checks] == ["a", "b", "c"] and longer.method == "m"
    assert outcome.to_dict()["fields"][1] == {
        "field": "b",
        "reported": 1,
        "recomputed": 2,
        "agree": False,
    }


def test_a_key_spelled_like_a_path_is_its_own_leaf() -> None:
    """A forged nested value cannot hide behind a top-level key ``"heldout.bound"`` that
    carries the true one: paths are compared as keys, not as joined strings."""
    recomputed = {"heldout": {"bound": 0.3}}
    forged = {"heldout": {"bound": 0.0}, "heldout.bound": 0.3}
    bad = {c.field: (c.reported, c.recomputed) for c in compare_results(forged, recomputed)}
    assert bad["heldout.bound"] == (0.0, 0.3)
    assert bad['"heldout.bound"'][0] == 0.3 and bad['"heldout.bound"'][1] is ABSENT
    assert not any(c.agree for c in compare_results(forged, recomputed))


def test_the_absent_marker_agrees_with_nothing() -> None:
    added = {**RESULTS, "forged": "(absent)"}
    bad = [c for c in compare_results(added, RESULTS) if not c.agree]
    assert [(c.field, c.reported) for c in bad] == [("forged", "(absent)")]
    assert bad[0].to_dict()["recomputed"] == "(absent)"
    assert not same(ABSENT, ABSENT)


def test_a_method_tolerance_admits_only_float_rounding() -> None:
    """``float_rel_tol`` (the marginal method's LAPACK rounding): floats within it agree,
    a real change, an integer, a string or a boolean never does; 0 is bit for bit."""
    reported = {"bound": 0.24836349856651155, "iterations": 19, "kernel": "relu", "ok": True}
    rounded = {**reported, "bound": 0.24836349856651146}  # measured: BLAS threads 1 vs 2
    assert not all(c.agree for c in compare_results(reported, rounded))
    assert all(c.agree for c in compare_results(reported, rounded, rel_tol=1e-9))
    for forged in ({"bound": 0.2483 * (1 + 1e-6)}, {"iterations": 20}, {"kernel": "erf"}):
        checks = compare_results(reported, {**reported, **forged}, rel_tol=1e-9)
        assert [c.field for c in checks if not c.agree] == list(forged)
    assert not same(1, 1.0000000001, rel_tol=1e-6)  # an int is never a float within tolerance
    assert not same(math.nan, math.nan, rel_tol=1.0)


def test_every_method_declares_its_tolerance_and_checkpoint_need() -> None:
    from pacbound.certify.registry import METHODS

    tolerances = {name: m.float_rel_tol for name, m in METHODS.items()}
    assert tolerances == {"gaussian": 0.0, "subspace": 0.0, "quantize": 0.0, "marginal": 1e-9}
    assert [n for n, m in METHODS.items() if not m.needs_checkpoint] == ["marginal"]
