"""The contract every registered certification method keeps with ``verify``.

Parametrized over :data:`pacbound.certify.registry.METHODS`, so a new method is covered as
soon as it is registered (and fails here until :data:`FAST` says how to certify it quickly):

* certify → save → verify agrees bit for bit, every field;
* a forged value of any certificate field (every leaf of ``results`` but the method's
  ``choice_fields``, with ``results_sha256`` re-fixed by the forger) fails verify;
* a changed hypothesis file (its recorded sha256 re-fixed) or changed training data (its
  sha256 re-fixed) fails verify;
* the method is in every list derived from the registry.
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from pacbound.certify.registry import METHODS
from pacbound.cli.main import cli
from pacbound.report.document import results_hash
from pacbound.report.validate import validation_errors
from pacbound.verify.fields import dotted, is_under, leaves
from tests.report._tiny import make_task, model_and_data

#: How each method certifies the tiny task quickly (beyond model, data, held-out set).
FAST: dict[str, tuple[str, ...]] = {
    "gaussian": (
        "--init",
        "{task}/init.safetensors",
        "--prior-scales",
        "1e-3:1:61",
        "--mc-passes",
        "2",
    ),
    "subspace": ("--d", "20", "--levels", "4", "--subspace-epochs", "2"),
    "quantize": ("--levels", "4,8"),
    # the checkpoint is optional (given here: its held-out error is reported beside Q's); the
    # kernel's depth is read from --arch mlp's one hidden layer; a 2-point grid
    "marginal": ("--sigma-w", "1,2", "--is-samples", "200", "--num-classes", "2"),
}

#: A results field that changed training labels must change (marginal: Q fits S whatever
#: the labels, so its empirical risk is 0; its KL moves instead).
DATA_FIELD = {"marginal": "kl_nats"}


@pytest.fixture(scope="module")
def task(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_task(tmp_path_factory.mktemp("contract"))


def certify(task: Path, out: Path, name: str) -> Path:
    """``pacbound certify --method name`` on the tiny task with a held-out set, saving the
    report and the hypothesis file; returns the report path."""
    out.mkdir(parents=True, exist_ok=True)
    hypothesis = METHODS[name].hypothesis
    args = [
        "certify",
        *model_and_data(task),
        "--method",
        name,
        "--heldout",
        str(task / "test.npz"),
        *(arg.format(task=task) for arg in FAST[name]),
        "--quiet",
        "--output",
        str(out / "report.json"),
        hypothesis.option,
        str(out / f"{hypothesis.key}.bin"),
    ]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    return out / "report.json"


@pytest.fixture(scope="module", params=list(METHODS))
def made(request: pytest.FixtureRequest, task: Path) -> tuple[str, Path]:
    name: str = request.param
    assert name in FAST, f"tell the contract test how to certify {name!r} quickly (FAST)"
    return name, certify(task, task / name, name)


def verify(report: Path) -> tuple[int, dict[str, dict[str, Any]], str]:
    result = CliRunner().invoke(cli, ["verify", str(report), "--json"])
    fields = (
        {} if not result.stdout else {f["field"]: f for f in json.loads(result.stdout)["fields"]}
    )
    return result.exit_code, fields, result.stderr


def save(document: dict[str, Any], path: Path) -> Path:
    path.write_text(json.dumps(document))
    return path


def test_certify_then_verify_agrees_bit_for_bit(made: tuple[str, Path]) -> None:
    name, report = made
    code, fields, err = verify(report)
    assert code == 0, err
    results = json.loads(report.read_text())["results"]
    for path, value in leaves(results):
        field = dotted(path)
        if is_under(path, METHODS[name].choice_fields):
            assert field not in fields
            continue
        check = fields[field]
        assert check["agree"] is True and check["recomputed"] == value, check
        assert type(check["recomputed"]) is type(value), check


def _forged(value: Any) -> Any:
    """Another value of the same kind (so that most forgeries still pass the schema)."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return value / 2 if value > 0 else 0.5
    if isinstance(value, str):
        return value + "!"
    if value == {}:
        return {"forged": 1}
    if value == []:
        return [1]
    return 0  # null


def _set(block: Any, path: tuple[str | int, ...], value: Any) -> None:
    for key in path[:-1]:
        block = block[key]
    block[path[-1]] = value


@pytest.fixture
def rederive_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each method re-derives a given (options, hypothesis) once: the forgeries below edit
    only ``results``, which the re-derivation never reads (a forgery that changed its
    inputs would miss the cache and be re-derived)."""
    for method in METHODS.values():
        cache: dict[tuple[str, str], Any] = {}
        original = method.rederive

        def cached(
            inputs: Any, options: Any, hypothesis: bytes, *, _o: Any = original, _c: Any = cache
        ) -> Any:
            key = (repr(options), hashlib.sha256(hypothesis).hexdigest())
            if key not in _c:
                _c[key] = _o(inputs, options, hypothesis)
            return _c[key]

        monkeypatch.setattr(method, "rederive", cached)


@pytest.mark.usefixtures("rederive_once")
def test_every_forged_certificate_field_fails(made: tuple[str, Path], tmp_path: Path) -> None:
    name, report = made
    document = json.loads(report.read_text())
    forged_leaves = 0
    for path, value in leaves(document["results"]):
        field = dotted(path)
        if is_under(path, METHODS[name].choice_fields):
            continue
        forged = copy.deepcopy(document)
        _set(forged["results"], path, _forged(value))
        forged["results_sha256"] = results_hash(forged["results"])  # a careful forger
        code, fields, err = verify(save(forged, tmp_path / "forged.json"))
        if validation_errors(forged) or field == "method":
            assert code == 3, (field, err)  # not even a valid report of this method
            continue
        assert code == 1, (field, err)
        assert fields["results_sha256"]["agree"] is True
        assert fields[field]["agree"] is False, field
        forged_leaves += 1
    assert forged_leaves > 20


def _flip(path: Path, where: int) -> None:
    data = bytearray(path.read_bytes())
    data[where] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("where", ["middle", "last"])
def test_a_changed_hypothesis_file_fails(
    made: tuple[str, Path], tmp_path: Path, where: str
) -> None:
    """A byte of the posterior file or the artifact changed, its sha256 re-recorded."""
    name, report = made
    document = json.loads(report.read_text())
    record = document["inputs"][METHODS[name].hypothesis.key]
    changed = tmp_path / "hypothesis.bin"
    changed.write_bytes(Path(record["path"]).read_bytes())
    size = changed.stat().st_size
    _flip(changed, size // 2 if where == "middle" else size - 1)
    record["path"] = str(changed)
    record["sha256"] = hashlib.sha256(changed.read_bytes()).hexdigest()
    code, _, err = verify(save(document, tmp_path / "forged.json"))
    assert code in (1, 3), err
    assert err.count("\n") == 1


def test_changed_training_data_fails(made: tuple[str, Path], tmp_path: Path) -> None:
    """Labels of the training sample changed, the file's sha256 re-recorded."""
    name, report = made
    document = json.loads(report.read_text())
    record = document["inputs"]["data"]
    with np.load(record["path"]) as data:
        x, y = data["x"], data["y"].copy()
    y[:40] = 1 - y[:40]
    changed = tmp_path / "train.npz"
    np.savez(changed, x=x, y=y)
    record["path"] = record["files"][0]["path"] = str(changed)
    record["files"][0]["sha256"] = hashlib.sha256(changed.read_bytes()).hexdigest()
    record["files"][0]["bytes"] = changed.stat().st_size
    code, fields, err = verify(save(document, tmp_path / "forged.json"))
    assert code in (1, 3), err
    if code == 1:
        assert fields[DATA_FIELD.get(name, "empirical_risk.estimate")]["agree"] is False


def test_a_v1_report_is_refused_by_verify(made: tuple[str, Path], tmp_path: Path) -> None:
    _, report = made
    document = json.loads(report.read_text())
    document["schema_version"] = 1
    code, _, err = verify(save(document, tmp_path / "old.json"))
    assert code == 3 and "older pacbound" in err and "re-run certify" in err


@pytest.mark.parametrize("name", list(METHODS))
def test_every_method_is_in_every_derived_list(name: str) -> None:
    from pacbound.cli.applicability import method_condition
    from pacbound.cli.certify_cmd import certify as certify_cmd
    from pacbound.cli.compress_cmd import compress
    from pacbound.harness.experiments import experiments_by_method
    from pacbound.report.validate import schema

    method = METHODS[name]

    def choices(command: Any) -> list[str]:
        (option,) = [p for p in command.params if p.name == "method"]
        return list(option.type.choices)

    assert name in choices(certify_cmd)
    assert (name in choices(compress)) is (method.hypothesis.key == "artifact")
    loaded = schema()
    assert name in loaded["$defs"]["method"]["enum"]
    assert f"{name}_results" in loaded["$defs"], "give the method's results a schema rule"
    declared = {p.name for p in certify_cmd.params}
    for option in method.parameters:
        assert option in declared, option
        condition = method_condition(option)
        assert condition is not None and name in condition.needs, option
    assert experiments_by_method()[name], "give the method a coverage experiment"
