"""recheck_heldout: one re-derivation for every held-out statement of a report."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from pacbound.bounds import test_set_bound as binomial_test_set_bound
from pacbound.report.recheck_heldout import deterministic_test_set, recheck_heldout


def _report(statement: dict[str, Any] | None, record: dict[str, Any] | None) -> dict[str, Any]:
    inputs: dict[str, Any] = {} if record is None else {"unlabeled": record}
    return {"results": {"checkpoint": statement}, "inputs": inputs}


def _recompute(data: Any) -> dict[str, Any]:
    return {"inputs": int(data.x.shape[0]), "bound": 0.25}


def _load(record: dict[str, Any], root: Path) -> Any:
    assert record == {"path": "u.npy"} and root == Path("/r")
    return SimpleNamespace(x=torch.zeros(7, 2))


def _check(report: dict[str, Any], **kw: Any) -> list[Any]:
    return recheck_heldout(
        report,
        Path("/r"),
        field="checkpoint",
        recompute=_recompute,
        source="unlabeled",
        load=_load,
        **kw,
    )


def test_statement_recomputed_from_its_own_source_field_by_field() -> None:
    checks = _check(_report({"inputs": 7, "bound": 0.2}, {"path": "u.npy"}))
    assert [(c.field, c.reported, c.recomputed, c.agree) for c in checks] == [
        ("checkpoint.inputs", 7, 7, True),
        ("checkpoint.bound", 0.2, 0.25, False),
    ]


def test_a_statement_without_its_recorded_set_disagrees() -> None:
    (check,) = _check(_report({"inputs": 7, "bound": 0.25}, None))
    assert check.field == "checkpoint" and not check.agree
    assert "inputs.unlabeled" in check.recomputed


@pytest.mark.parametrize(("expected", "count"), [(None, 1), (True, 1), (False, 0)])
def test_a_missing_statement_disagrees_only_when_expected(
    expected: bool | None, count: int
) -> None:
    checks = _check(_report(None, {"path": "u.npy"}), expected=expected)
    assert len(checks) == count and not any(c.agree for c in checks)


def test_nothing_reported_nothing_recorded_no_checks() -> None:
    assert _check(_report(None, None)) == []


def test_deterministic_test_set_counts_and_bounds_like_certify() -> None:
    model = torch.nn.Linear(2, 2)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
        model.bias.zero_()
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    y = torch.tensor([0, 1, 1, 1])  # one error
    out = deterministic_test_set(
        model, SimpleNamespace(x=x, y=y), delta=0.1, batch_size=3, device=torch.device("cpu")
    )
    expected = binomial_test_set_bound(0.25, n=4, delta=0.1)
    assert out == {"errors": 1, "n": 4, "delta": 0.1, "bound": expected.value}
    assert 0.25 < out["bound"] < 1.0


def test_a_statement_that_is_not_an_object_disagrees_whole() -> None:
    (check,) = _check(_report(0.1, {"path": "u.npy"}))  # type: ignore[arg-type]
    assert check.field == "checkpoint" and check.reported == 0.1 and not check.agree
    assert check.recomputed == {"inputs": 7, "bound": 0.25}
