"""`pacbound report`: tables rounded up, LaTeX macros, CSV, mixed methods, bad input."""

from __future__ import annotations

import csv
import io
import json
import os
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner

from pacbound.bounds import format_up
from pacbound.cli.main import cli
from pacbound.report.document import results_hash
from pacbound.report.summary import append_step_summary
from pacbound.report.tables import TableFormat, macro_name, render, rows_of
from tests.report._tiny import gaussian_report, make_task, quantize_report


@pytest.fixture(scope="module")
def reports(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("report")
    task = make_task(root)
    return gaussian_report(task, root / "gauss"), quantize_report(task, root / "quant")


@pytest.fixture(scope="module")
def heldout_report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("report-heldout")
    task = make_task(root)
    return gaussian_report(task, root / "held", "--heldout", str(task / "test.npz"))


def _run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_markdown_rounds_up(reports: tuple[Path, Path]) -> None:
    gauss, _ = reports
    res = json.loads(gauss.read_text())["results"]
    code, out, err = _run("report", str(gauss), "--digits", "3")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("| report | method |")
    row = lines[2].split(" | ")
    assert row[0] == "| gauss"
    bound = format_up(res["bound"], 3)
    assert bound in row
    assert float(bound) >= res["bound"]
    assert format_up(res["empirical_risk"]["upper_bound"], 3) in row


def test_latex_has_booktabs_and_macros(reports: tuple[Path, Path]) -> None:
    gauss, quant = reports
    code, out, err = _run("report", str(gauss), str(quant), "--format", "latex")
    assert code == 0, err
    res_g = json.loads(gauss.read_text())["results"]
    res_q = json.loads(quant.read_text())["results"]
    assert f"\\newcommand{{\\pbBoundGauss}}{{{format_up(res_g['bound'], 4)}}}" in out
    assert f"\\newcommand{{\\pbBoundQuant}}{{{format_up(res_q['bound'], 4)}}}" in out
    assert f"\\newcommand{{\\pbBitsQuant}}{{{res_q['code_length_bits']}}}" in out
    assert f"\\newcommand{{\\pbKLGauss}}{{{format_up(res_g['kl_nats'], 2)}}}" in out
    for rule in ("\\toprule", "\\midrule", "\\bottomrule", "\\begin{tabular}"):
        assert rule in out
    assert "\\pbBoundGauss{} & yes" in out or "\\pbBoundGauss{} & no" in out


def test_csv_mixed_methods(reports: tuple[Path, Path]) -> None:
    gauss, quant = reports
    code, out, err = _run("report", str(gauss), str(quant), "--format", "csv")
    assert code == 0, err
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [r["method"] for r in rows] == ["gaussian", "quantize"]
    assert rows[0]["code_bits"] == "" and rows[1]["kl_nats"] == ""
    for r, path in zip(rows, (gauss, quant), strict=True):
        exact = json.loads(path.read_text())["results"]["bound"]
        assert float(r["bound_exact"]) == exact
        assert float(r["bound"]) >= exact


@pytest.mark.parametrize(("mask", "mode"), [(0o022, 0o644), (0o077, 0o600)])
def test_output_file(reports: tuple[Path, Path], tmp_path: Path, mask: int, mode: int) -> None:
    out = tmp_path / "table.tex"
    saved = os.umask(mask)
    try:
        code, stdout, err = _run("report", str(reports[0]), "--format", "latex", "-o", str(out))
    finally:
        os.umask(saved)
    assert code == 0, err
    assert stdout == ""
    assert "\\newcommand{\\pbBoundGauss}" in out.read_text()
    assert stat.S_IMODE(out.stat().st_mode) == mode  # the umask's, not mkstemp's 0o600


def test_gaussian_rows_name_the_prior_and_the_posterior(reports: tuple[Path, Path]) -> None:
    gauss, quant = reports
    res = json.loads(gauss.read_text())["results"]
    code, out, err = _run("report", str(gauss), str(quant))
    assert code == 0, err
    header, _, g_row, q_row = out.splitlines()
    names = [c.strip() for c in header.strip("|").split("|")]
    assert names[-2:] == ["prior mean", "posterior Q"]  # after the original columns
    g_cells = [c.strip() for c in g_row.strip("|").split("|")]
    q_cells = [c.strip() for c in q_row.strip("|").split("|")]
    assert g_cells[-2:] == [res["prior"]["mean"], f"Gaussian, {res['posterior']['kind']}"]
    assert q_cells[-2:] == ["", ""]  # a compression row has neither
    assert "held-out" not in header  # no report has a held-out set
    code, out, _ = _run("report", str(quant))
    assert code == 0 and "prior mean" not in out and "posterior Q" not in out


def test_heldout_bound_in_every_format(heldout_report: Path, reports: tuple[Path, Path]) -> None:
    res = json.loads(heldout_report.read_text())["results"]
    held = res["heldout"]
    up = format_up(held["bound"], 3)
    assert float(up) >= held["bound"]
    code, out, err = _run("report", str(heldout_report), str(reports[1]), "--digits", "3")
    assert code == 0, err
    header, _, h_row, q_row = out.splitlines()
    assert header.endswith("| held-out bound (rounded up) | held-out δ |")
    assert h_row.endswith(f"| {up} | {held['delta']:g} |")
    assert q_row.endswith("|  |  |")
    code, out, err = _run("report", str(heldout_report), "--format", "csv", "--digits", "3")
    assert code == 0, err
    (row,) = csv.DictReader(io.StringIO(out))
    assert list(row)[-5:] == ["bound_exact", "prior", "posterior", "heldout", "heldout_delta"]
    assert row["heldout"] == up and float(row["heldout_delta"]) == held["delta"]
    assert row["prior"] == "init" and row["posterior"] == "Gaussian, isotropic"
    code, out, err = _run("report", str(heldout_report), "--format", "latex", "--digits", "3")
    assert code == 0, err
    assert f"\\newcommand{{\\pbHeldoutBoundHeld}}{{{up}}}" in out
    assert f"\\newcommand{{\\pbHeldoutDeltaHeld}}{{{held['delta']:g}}}" in out
    assert (
        "held-out $\\delta$" in out and "init & Gaussian, isotropic & \\pbHeldoutBoundHeld{}" in out
    )


def test_heldout_bound_is_rounded_up_not_to_nearest(reports: tuple[Path, Path]) -> None:
    doc = json.loads(reports[0].read_text())
    doc["results"]["heldout"] = {"bound": 0.03120001, "delta": 0.05, "errors": 5, "n": 200}
    (row,) = rows_of([Path("run.json")], [doc])
    for fmt in TableFormat:
        text = render([row], fmt, digits=4)
        assert "0.0313" in text and "0.0312" not in text


def test_macro_names() -> None:
    assert macro_name("run_10") == "RunOneZero"
    assert macro_name("___") == "Report"


def test_edited_report_warns(reports: tuple[Path, Path], tmp_path: Path) -> None:
    doc = json.loads(reports[0].read_text())
    doc["results"]["bound"] = 0.01
    edited = tmp_path / "edited.json"
    edited.write_text(json.dumps(doc))
    code, _, err = _run("report", str(edited))
    assert code == 0
    assert "results_sha256 does not match" in err


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("not json at all", "is not JSON"),
        ('{"schema_version": 1, "command": "cer', "is truncated"),
        ('{"schema_version": 2}', "does not follow report schema v2: command: missing"),
        ('{"schema_version": 1}', "does not follow report schema v2: command: missing"),
        ('{"schema_version": 99}', "schema_version 99, newer than"),
        ("[1, 2]", "not a JSON object"),
        ("", "is empty"),
    ],
)
def test_bad_reports_exit_3(tmp_path: Path, content: str, message: str) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(content)
    code, _, err = _run("report", str(bad))
    assert code == 3
    assert err.count("\n") == 1 and err.startswith("Error: ") and message in err
    assert "Traceback" not in err


def test_bad_macro_prefix(reports: tuple[Path, Path]) -> None:
    code, _, err = _run("report", str(reports[0]), "--format", "latex", "--macro-prefix", "p1")
    assert code == 3 and "letters only" in err


def test_step_summary_appends(reports: tuple[Path, Path], tmp_path: Path) -> None:
    doc = json.loads(reports[0].read_text())
    target = tmp_path / "summary.md"
    target.write_text("previous\n")
    assert append_step_summary(doc, {"GITHUB_STEP_SUMMARY": str(target)})
    assert append_step_summary(doc, {}) is False
    text = target.read_text()
    assert text.startswith("previous\n### pacbound certificate: ✅ gate passed")
    assert f"**{format_up(doc['results']['bound'], 4)}**" in text


def test_certify_writes_step_summary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    task = make_task(tmp_path)
    target = tmp_path / "summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(target))
    report = gaussian_report(task, tmp_path / "run", "--max-bound", "0.001", "--exit-zero")
    text = target.read_text()
    assert "gate failed (report only: --exit-zero)" in text
    assert "above --max-bound" in text
    assert json.loads(report.read_text())["gate"]["passed"] is False


def test_a_v1_report_is_still_tabulated(reports: tuple[Path, Path], tmp_path: Path) -> None:
    """A schema-v1 report (compression risk a bare k/n) is upgraded on reading: the same row,
    and no edited-report warning."""
    _, quant = reports
    doc = json.loads(quant.read_text())
    doc["schema_version"] = 1
    doc["results"]["empirical_risk"] = doc["results"]["empirical_risk"]["estimate"]
    doc["results_sha256"] = results_hash(doc["results"])
    old = tmp_path / "quant.json"
    old.write_text(json.dumps(doc))
    code, out, err = _run("report", str(old), "--format", "csv")
    assert code == 0 and err == ""
    assert out == _run("report", str(quant), "--format", "csv")[1]  # both labelled "quant"
    (row,) = csv.DictReader(io.StringIO(out))
    assert float(row["risk_upper"]) >= doc["results"]["empirical_risk"]
