"""Schema v2: real reports validate; the validator catches what the schema forbids; v1
reports are upgraded for reading; the method names come from the registry."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

import pytest

from pacbound.errors import InvalidInputError
from pacbound.report.document import results_hash
from pacbound.report.validate import (
    SUPPORTED,
    hash_agrees,
    load_report,
    schema,
    validation_errors,
)
from tests.report._tiny import gaussian_report, make_task, quantize_report


@pytest.fixture(scope="module")
def reports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("schema")
    task = make_task(root)
    return {
        "gaussian": gaussian_report(task, root / "g", "--heldout", str(task / "test.npz")),
        "gaussian-data-diagonal": gaussian_report(
            task,
            root / "d",
            "--prior",
            "data",
            "--posterior",
            "diagonal",
            "--posterior-epochs",
            "1",
            "--prior-epochs",
            "1",
        ),
        "quantize": quantize_report(task, root / "q"),
    }


def _numbers(node: Any) -> list[float]:
    if isinstance(node, dict):
        return [v for child in node.values() for v in _numbers(child)]
    if isinstance(node, list):
        return [v for child in node for v in _numbers(child)]
    return [node] if isinstance(node, float) else []


def _reject(name: str) -> Any:
    raise AssertionError(f"{name} in a report")


@pytest.mark.parametrize("kind", ["gaussian", "gaussian-data-diagonal", "quantize"])
def test_real_reports_validate(reports: dict[str, Path], kind: str) -> None:
    text = reports[kind].read_text()
    document = json.loads(text, parse_constant=_reject)  # no NaN / Infinity tokens
    assert validation_errors(document) == []
    assert load_report(reports[kind]) == document
    assert all(math.isfinite(v) for v in _numbers(document))
    assert document["results_sha256"] == results_hash(document["results"])
    assert hash_agrees(document)
    assert document["schema_version"] == 2
    risk = document["results"]["empirical_risk"]
    assert 0.0 <= risk["estimate"] <= risk["upper_bound"] <= document["results"]["bound"]
    assert 0.0 <= document["results"]["bound"] <= 1.0


def test_data_prior_report_records_split_hash(reports: dict[str, Path]) -> None:
    document = load_report(reports["gaussian-data-diagonal"])
    split = document["results"]["prior"]["split"]
    assert split["n_prior"] + split["n_bound"] == 400
    assert document["results"]["n"] == split["n_bound"]
    assert len(split["indices_sha256"]) == 64


def test_schema_uses_only_supported_keywords() -> None:
    def keywords(node: Any, inside_properties: bool = False) -> set[str]:
        if not isinstance(node, dict):
            return set()
        found = set() if inside_properties else set(node)
        for key, value in node.items():
            if key in ("properties", "$defs"):
                for sub in value.values():
                    found |= keywords(sub)
            elif key in ("allOf",):
                for sub in value:
                    found |= keywords(sub)
            elif isinstance(value, dict) and key not in ("const",):
                found |= keywords(value)
        return found

    assert keywords(schema()) <= SUPPORTED
    assert schema()["$schema"] == "https://json-schema.org/draft/2020-12/schema"


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d["results"].pop("kl_nats"), "results.kl_nats: missing"),
        (lambda d: d["results"].__setitem__("bound", 1.5), "results.bound: 1.5 is above"),
        (lambda d: d["results"].__setitem__("n", 2.5), "results.n: expected integer"),
        (lambda d: d["results"].__setitem__("n", True), "results.n: expected integer"),
        (lambda d: d.__setitem__("results_sha256", "abc"), "results_sha256: 'abc' does not"),
        (lambda d: d["options"].__setitem__("method", "magic"), "options.method: must be one"),
        (lambda d: d["environment"].__setitem__("git_commit", 7), "git_commit: expected"),
        (
            lambda d: d["inputs"]["data"]["files"][0].__setitem__("sha256", "x" * 64),
            "inputs.data.files[0].sha256",
        ),
        (lambda d: d["results"]["empirical_risk"].__setitem__("draws", 0), "draws: 0 is below"),
        (lambda d: d["timings_seconds"].__setitem__("total", -1.0), "total: -1.0 is below"),
        (lambda d: d.__setitem__("schema_version", 1), "schema_version: must be 2"),
        (lambda d: d["gate"].__setitem__("max_bound", 1.5), "gate.max_bound: 1.5 is above"),
        (
            lambda d: d["results"]["prior"]["grid"].__setitem__("kind", "cubic"),
            "results.prior.grid.kind: must be one of",
        ),
    ],
)
def test_validator_reports_each_violation(
    reports: dict[str, Path], edit: Any, message: str
) -> None:
    document = json.loads(reports["gaussian"].read_text())
    broken = copy.deepcopy(document)
    edit(broken)
    errors = validation_errors(broken)
    assert any(message in e for e in errors), errors


def test_max_length_is_checked() -> None:
    from pacbound.report.validate import iter_errors

    node = {"type": "string", "maxLength": 1}
    assert list(iter_errors(",", node, node)) == []
    assert list(iter_errors(",;", node, node)) == ["(top): at most 1 character(s), got 2"]


def test_compression_results_need_their_fields(reports: dict[str, Path]) -> None:
    document = json.loads(reports["quantize"].read_text())
    del document["results"]["code_length_bits"]
    assert validation_errors(document) == ["results.code_length_bits: missing"]


def test_nan_is_refused(reports: dict[str, Path], tmp_path: Path) -> None:
    text = reports["gaussian"].read_text()
    bad = tmp_path / "nan.json"
    bad.write_text(text.replace('"kl_nats": ', '"kl_nats": NaN, "x": ', 1))
    with pytest.raises(InvalidInputError, match="NaN is not valid JSON"):
        load_report(bad)


def test_method_names_and_rules_come_from_the_registry() -> None:
    from pacbound.certify.registry import METHODS

    loaded = schema()
    assert loaded["$defs"]["method"]["enum"] == list(METHODS)
    ruled = [
        rule["if"]["properties"]["method"]["const"]
        for rule in loaded["properties"]["results"]["allOf"]
    ]
    assert ruled == list(METHODS)  # every registered method has its results rule
    for rule in loaded["properties"]["results"]["allOf"]:
        name = rule["then"]["$ref"].rsplit("/", 1)[1]
        assert name in loaded["$defs"]


def test_compression_risk_is_an_object_with_its_count(reports: dict[str, Path]) -> None:
    res = load_report(reports["quantize"])["results"]
    assert res["empirical_risk"] == {
        "estimate": res["errors"] / res["n"],
        "upper_bound": res["errors"] / res["n"],
        "errors": res["errors"],
        "draws": res["n"],
    }


def _as_v1(document: dict[str, Any]) -> dict[str, Any]:
    """A current report written back in the v1 layout (compression risk a bare k/n)."""
    old = copy.deepcopy(document)
    old["schema_version"] = 1
    risk = old["results"]["empirical_risk"]
    if "mc_passes" not in risk:
        old["results"]["empirical_risk"] = risk["estimate"]
    old["results_sha256"] = results_hash(old["results"])
    return old


@pytest.mark.parametrize("kind", ["gaussian", "quantize"])
def test_v1_reports_are_upgraded_for_reading(
    reports: dict[str, Path], tmp_path: Path, kind: str
) -> None:
    document = json.loads(reports[kind].read_text())
    old = tmp_path / "old.json"
    old.write_text(json.dumps(_as_v1(document)))
    assert load_report(old) == document  # the same document, hash and all
    with pytest.raises(InvalidInputError, match=r"older pacbound .*schema v1.*re-run certify"):
        load_report(old, upgrade=False)


def test_an_edited_v1_report_still_reads_as_edited(
    reports: dict[str, Path], tmp_path: Path
) -> None:
    old_doc = _as_v1(json.loads(reports["quantize"].read_text()))
    old_doc["results"]["bound"] = 0.001
    old = tmp_path / "old.json"
    old.write_text(json.dumps(old_doc))
    assert not hash_agrees(load_report(old))
