"""Schema v2 and a marginal report: no checkpoint (``inputs.model`` required only for the
methods that certify one), the marginal results rule, the table row and the summary."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from pacbound.cli.main import cli
from pacbound.report.summary import summary_markdown
from pacbound.report.tables import rows_of
from pacbound.report.validate import validation_errors
from tests.report._tiny import quantize_report

pytest.importorskip("pacbound.marginal")


@pytest.fixture(scope="module")
def marginal(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("marginal_schema")
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 30)
    x = rng.normal(size=(30, 4)) + 1.5 * (2 * y[:, None] - 1)
    np.savez(root / "d.npz", x=x.astype(np.float32), y=y)
    args = ["certify", "--method", "marginal", "--data", str(root / "d.npz")]
    args += ["--kernel", "erf", "--kernel-depth", "1", "--is-samples", "100", "--json"]
    args += ["--num-classes", "2"]  # C fixed before the labels are read
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    return dict(json.loads(result.stdout))


def test_a_marginal_report_without_a_checkpoint_validates(marginal: dict) -> None:
    assert "model" not in marginal["inputs"]
    assert validation_errors(marginal) == []


def test_other_methods_still_need_their_checkpoint(tmp_path: Path) -> None:
    from tests.report._tiny import make_task

    task = make_task(tmp_path)
    document = json.loads(quantize_report(task, tmp_path / "q").read_text())
    del document["inputs"]["model"]
    assert validation_errors(document) == ["inputs.model: missing"]


@pytest.mark.parametrize(
    ("path", "value", "error"),
    [
        (("kl_nats",), -1.0, "results.kl_nats: -1.0 is below the minimum 0"),
        (("empirical_risk", "estimate"), 0.5, "results.empirical_risk.estimate: must be 0.0"),
        (("kernel", "name"), "tanh", "results.kernel.name: must be one of"),
        (("ep", "log_z"), 0.5, "results.ep.log_z: 0.5 is above the maximum 0"),
        (("heldout",), 3, "results.heldout: expected object or null"),
    ],
)
def test_the_marginal_rule_is_applied(
    marginal: dict, path: tuple[str, ...], value: object, error: str
) -> None:
    document = copy.deepcopy(marginal)
    block = document["results"]
    for key in path[:-1]:
        block = block[key]
    block[path[-1]] = value
    assert any(e.startswith(error) for e in validation_errors(document)), validation_errors(
        document
    )
    del document["results"]["log_orthant"]
    assert "results.log_orthant: missing" in validation_errors(document)


def test_table_row_and_summary(marginal: dict) -> None:
    (row,) = rows_of([Path("m.json")], [marginal])
    res = marginal["results"]
    assert row.method == "marginal" and row.empirical_risk == 0.0
    assert row.kl_nats == res["kl_nats"] and row.code_length_bits is None
    assert row.qualifiers == {"kernel": "erf, depth 1, weight std 1.41421, bias std 0"}
    assert row.heldout_bound is None
    from pacbound.bounds import format_up

    text = summary_markdown(marginal)
    assert f"**{format_up(res['bound'], 4)}**" in text and "GP prior conditioned on S" in text


def test_slack_parts_split_the_kl_at_eps_value(marginal: dict) -> None:
    from pacbound.certify.registry import METHODS
    from pacbound.report.plots import slack_parts

    res = marginal["results"]
    parts = {p.name: p.value for p in slack_parts(res)}
    assert sum(parts.values()) == pytest.approx(res["bound"], rel=1e-12)
    facts = dict(METHODS["marginal"].facts(res).complexity_parts)
    ep, gap = facts["−ln P(U), EP approximation"], facts["certification gap (IS, ln 1/δ_IS)"]
    assert ep == pytest.approx(-res["ep"]["log_z"]) and ep + gap == pytest.approx(res["kl_nats"])
    assert gap == pytest.approx(res["gap_nats"])
