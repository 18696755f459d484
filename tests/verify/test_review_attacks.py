"""Attacks on ``verify`` found in review (issue #12's refactor).

A results block is compared leaf by leaf by dotted path; a forged top-level key spelled as a
dotted path (``"heldout.bound"``) collides with the nested leaf it names, so the nested value
can be forged while the extra key carries the genuine value. The schema allows extra
properties, so such a report must still fail verify (exit 1 or 3).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from pacbound.cli.main import cli
from pacbound.report.document import results_hash
from tests.report._tiny import gaussian_report, make_task, quantize_report


@pytest.fixture(scope="module")
def reports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    task = make_task(tmp_path_factory.mktemp("review_task"))
    heldout = ("--heldout", str(task / "test.npz"))
    return {
        "gaussian": gaussian_report(task, tmp_path_factory.mktemp("review_g"), *heldout),
        "quantize": quantize_report(task, tmp_path_factory.mktemp("review_q"), *heldout),
    }


def _verify_forged(report: Path, section: str, leaf: str, value: object) -> int:
    doc = json.loads(report.read_text())
    results = doc["results"]
    genuine = results[section][leaf]
    results[section][leaf] = value
    results[f"{section}.{leaf}"] = genuine  # the colliding dotted key keeps the genuine leaf
    doc["results_sha256"] = results_hash(results)
    forged = report.with_name("forged.json")
    forged.write_text(json.dumps(doc))
    result = CliRunner().invoke(cli, ["verify", str(forged), "--root", "/"])
    return result.exit_code


@pytest.mark.parametrize("method", ["gaussian", "quantize"])
def test_forged_heldout_bound_hidden_by_a_dotted_key_fails(
    reports: dict[str, Path], method: str
) -> None:
    assert _verify_forged(reports[method], "heldout", "bound", 0.0) in (1, 3)


def test_forged_checkpoint_bound_hidden_by_a_dotted_key_fails(reports: dict[str, Path]) -> None:
    assert _verify_forged(reports["gaussian"], "checkpoint", "bound", 0.0) in (1, 3)


def test_forged_empirical_risk_hidden_by_a_dotted_key_fails(reports: dict[str, Path]) -> None:
    assert _verify_forged(reports["gaussian"], "empirical_risk", "upper_bound", 0.0) in (1, 3)


def test_an_added_leaf_spelled_like_the_absent_marker_fails(reports: dict[str, Path]) -> None:
    """A forged leaf whose value is the string the comparison shows for a missing leaf
    (``"(absent)"``) must not agree with the recomputed block's missing leaf."""
    doc = json.loads(reports["gaussian"].read_text())
    doc["results"]["verdict"]["certified_against_heldout"] = "(absent)"
    doc["results_sha256"] = results_hash(doc["results"])
    forged = reports["gaussian"].with_name("forged_absent.json")
    forged.write_text(json.dumps(doc))
    result = CliRunner().invoke(cli, ["verify", str(forged), "--root", "/"])
    assert result.exit_code in (1, 3)
