"""``certify --mc-draws per-batch`` end to end: recorded in the report, shown by the terminal,
re-derived by ``verify`` (including against the recorded command line)."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from pacbound.cli.main import cli
from tests.report._tiny import make_task, model_and_data


def test_per_batch_draws_certify_report_and_verify(tmp_path: Path) -> None:
    (tmp_path / "task").mkdir()
    task = make_task(tmp_path / "task")
    report = tmp_path / "report.json"
    args = [
        "certify",
        *model_and_data(task),
        "--method",
        "gaussian",
        "--init",
        str(task / "init.safetensors"),
        "--prior-scales",
        "1e-3:1:61",
        "--mc-passes",
        "2",
        "--batch-size",
        "128",
        "--mc-draws",
        "per-batch",
        "--output",
        str(report),
        "--save-posterior",
        str(tmp_path / "posterior.safetensors"),
    ]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    # n = 400, batch ≤ 128: B = 100, K = 2 → 8 independent draws
    assert "(8 draws, one per batch of 100" in result.output  # the terminal table
    document = json.loads(report.read_text())
    emp = document["results"]["empirical_risk"]
    assert (emp["draws_per"], emp["batch"], emp["draws"]) == ("batch", 100, 8)
    assert document["options"]["mc_draws"] == "per-batch"
    assert any("per-batch Monte-Carlo draws" in w for w in document["warnings"])
    verified = CliRunner().invoke(cli, ["verify", str(report), "--json"])
    assert verified.exit_code == 0, verified.output
    # a report whose options say per-example draws no longer verifies
    document["options"]["mc_draws"] = "per-example"
    forged = tmp_path / "forged.json"
    forged.write_text(json.dumps(document))
    assert CliRunner().invoke(cli, ["verify", str(forged), "--json"]).exit_code != 0
