"""`pacbound bound` through click's CliRunner: stdout, JSON fields, exit codes, one-line errors."""

from __future__ import annotations

import json
import math

import pytest
from click.testing import CliRunner, Result

from pacbound.bounds import (
    bits_to_nats,
    occam_binomial,
    pac_bayes_catoni_grid,
    pac_bayes_kl,
    pac_bayes_lambda,
)
from pacbound.bounds import test_set_bound as held_out_bound
from pacbound.cli.main import cli

ROW1 = ["--risk", "0.02", "--kl", "5000", "--n", "60000", "--delta", "0.025"]  # MATH.md §2 row 1


def run(*args: str) -> Result:
    return CliRunner().invoke(cli, ["bound", *args])


def run_json(*args: str) -> dict:
    result = run(*args, "--json")
    assert result.exit_code == 0, result.stderr
    assert result.stderr == ""
    return json.loads(result.stdout)


# ---------------------------------------------------------------------------------------------
# Success
# ---------------------------------------------------------------------------------------------


def test_table_output_for_math_md_row_one() -> None:
    result = run(*ROW1)
    assert result.exit_code == 0
    out = result.stdout
    assert "PAC-Bayes-kl" in out
    assert "0.1344  (rounded up)" in out  # 0.13435194… rounded up to 4 decimals
    assert "60000" in out
    assert "0.025" in out
    assert result.stderr == ""


def test_digits_option_rounds_up() -> None:
    result = run(*ROW1, "--digits", "8")
    assert result.exit_code == 0
    assert "0.13435195  (rounded up)" in result.stdout  # nearest would be 0.13435194


def test_json_document_for_math_md_row_one() -> None:
    doc = run_json(*ROW1)
    assert {"method", "value", "empirical_risk", "n", "delta", "complexity_nats", "terms"} <= set(
        doc
    )
    assert doc["method"] == "kl"
    assert doc["inequality"] == "pac-bayes-kl"
    assert doc["value"] == pytest.approx(0.1343519412, rel=1e-9)  # MATH.md §2 row 1
    assert doc["value"] == pac_bayes_kl(0.02, kl=5000.0, n=60000, delta=0.025).value
    assert doc["empirical_risk"] == 0.02
    assert doc["n"] == 60000
    assert doc["delta"] == 0.025
    assert doc["complexity_nats"] == 5000.0
    assert doc["terms"]["log_term"] == pytest.approx(math.log(2 * math.sqrt(60000) / 0.025))
    assert doc["terms"]["rhs"] == pytest.approx((5000 + doc["terms"]["log_term"]) / 60000)
    assert doc["value_rounded_up"] == "0.1344"
    assert doc["command"] == "bound"


@pytest.mark.parametrize(
    ("method", "inequality", "expected"),
    [
        ("kl", "pac-bayes-kl", 0.3843804304),  # MATH.md §2 row 2
        ("quad", "pac-bayes-quad", 0.5975505277),  # MATH.md §2 row 2
        ("classic", "pac-bayes-classic", 0.4218250745),  # MATH.md §2 row 2
    ],
)
def test_json_reference_values(method: str, inequality: str, expected: float) -> None:
    doc = run_json(
        "--risk", "0.1", "--kl", "200", "--n", "1000", "--delta", "0.05", "--method", method
    )
    assert doc["method"] == method
    assert doc["inequality"] == inequality
    assert doc["value"] == pytest.approx(expected, rel=1e-9)


def test_errors_option_gives_k_over_n() -> None:
    doc = run_json("--errors", "100", "--kl", "200", "--n", "1000", "--delta", "0.05")
    assert doc["empirical_risk"] == 0.1
    assert doc["value"] == pytest.approx(0.3843804304, rel=1e-9)  # MATH.md §2 row 2


def test_test_set_method() -> None:
    doc = run_json("--errors", "5", "--n", "1000", "--delta", "0.05", "--method", "test-set")
    assert doc["method"] == "test-set"
    assert doc["value"] == pytest.approx(0.0104841, abs=0.5e-7)  # MATH.md §7
    assert doc["value"] == held_out_bound(0.005, n=1000, delta=0.05).value
    assert doc["complexity_nats"] == 0.0
    assert doc["terms"]["errors"] == 5
    table = run("--errors", "5", "--n", "1000", "--delta", "0.05", "--method", "test-set")
    assert "0.0105  (rounded up)" in table.stdout
    assert "complexity (nats)" not in table.stdout


def test_test_set_accepts_a_risk_that_is_k_over_n() -> None:
    doc = run_json("--risk", "0.005", "--n", "1000", "--delta", "0.05", "--method", "test-set")
    assert doc["terms"]["errors"] == 5


def test_occam_with_bits() -> None:
    doc = run_json(
        "--errors", "300", "--bits", "20000", "--n", "60000", "--delta", "0.05", "--method", "occam"
    )
    assert doc["method"] == "occam"
    assert doc["inequality"] == "occam-binomial"
    assert doc["complexity_bits"] == 20000
    assert doc["complexity_nats"] == bits_to_nats(20000)
    expected = occam_binomial(0.005, kl=bits_to_nats(20000), n=60000, delta=0.05).value
    assert doc["value"] == expected
    assert doc["terms"]["code_length_bits"] == pytest.approx(20000, rel=1e-14)


def test_occam_kl_form_is_looser_than_binomial() -> None:
    args = ["--errors", "300", "--bits", "20000", "--n", "60000", "--delta", "0.05"]
    binomial = run_json(*args, "--method", "occam")["value"]
    kl_form = run_json(*args, "--method", "occam-kl")["value"]
    assert binomial < kl_form


def test_lambda_method() -> None:
    doc = run_json(*ROW1, "--method", "lambda", "--lam", "1.0")
    assert doc["value"] == pac_bayes_lambda(0.02, kl=5000.0, n=60000, delta=0.025, lam=1.0).value
    assert doc["terms"]["lambda"] == 1.0


def test_catoni_grid_by_default_and_fixed_c() -> None:
    grid = run_json(*ROW1, "--method", "catoni")
    assert grid["inequality"] == "pac-bayes-catoni-grid"
    assert grid["terms"]["grid_size"] == 33
    assert grid["value"] == pac_bayes_catoni_grid(0.02, kl=5000.0, n=60000, delta=0.025).value
    fixed = run_json(*ROW1, "--method", "catoni", "--catoni-c", "1.0")
    assert fixed["inequality"] == "pac-bayes-catoni"
    assert fixed["terms"]["C"] == 1.0


def test_kl_xi_is_tighter_than_kl() -> None:
    xi = run_json(*ROW1, "--method", "kl-xi")
    assert xi["inequality"] == "pac-bayes-kl-xi"
    assert xi["value"] < run_json(*ROW1)["value"]


def test_json_is_strict_and_alone_on_stdout() -> None:
    result = run(*ROW1, "--json")
    json.loads(result.stdout, parse_constant=lambda c: pytest.fail(f"non-strict JSON {c}"))
    assert result.stdout.lstrip().startswith("{")
    assert result.stdout.rstrip().endswith("}")


def test_help_has_examples() -> None:
    result = run("--help")
    assert result.exit_code == 0
    assert "Examples:" in result.stdout
    assert "pacbound bound --risk 0.02 --kl 5000 --n 60000 --delta 0.025" in result.stdout


# ---------------------------------------------------------------------------------------------
# Errors: exit code, exactly one `Error:` line on stderr, nothing on stdout, no traceback
# ---------------------------------------------------------------------------------------------


def assert_one_line_error(result: Result, code: int, fragment: str) -> None:
    assert result.exit_code == code, (result.stdout, result.stderr)
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: ")
    assert fragment in lines[0]
    assert "Traceback" not in result.stderr


BASE = ["--n", "1000", "--delta", "0.05"]


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        pytest.param([*BASE, "--kl", "10"], "give exactly one of --risk or --errors", id="no-risk"),
        pytest.param(
            [*BASE, "--kl", "10", "--risk", "0.1", "--errors", "100"],
            "give exactly one of --risk or --errors",
            id="risk-and-errors",
        ),
        pytest.param(
            [*BASE, "--risk", "0.1", "--kl", "10", "--bits", "10"],
            "give at most one of --kl (nats) or --bits",
            id="kl-and-bits",
        ),
        pytest.param(
            [*BASE, "--errors", "5", "--kl", "10", "--method", "test-set"],
            "--method test-set takes no --kl/--bits",
            id="test-set-with-kl",
        ),
        pytest.param(
            [*BASE, "--errors", "5", "--bits", "10", "--method", "test-set"],
            "--method test-set takes no --kl/--bits",
            id="test-set-with-bits",
        ),
        pytest.param(
            [*BASE, "--risk", "0.1"], "--method kl needs a complexity", id="no-complexity"
        ),
        pytest.param(
            [*BASE, "--risk", "0.1", "--kl", "10", "--catoni-c", "1"],
            "--catoni-c only applies to --method catoni",
            id="catoni-c-without-catoni",
        ),
        pytest.param(
            [*BASE, "--risk", "0.1", "--kl", "10", "--method", "lambda"],
            "--lam is required by, and only applies to, --method lambda",
            id="lambda-without-lam",
        ),
        pytest.param(
            [*BASE, "--risk", "0.1", "--kl", "10", "--lam", "1"],
            "--lam is required by, and only applies to, --method lambda",
            id="lam-without-lambda",
        ),
        pytest.param(
            [*BASE, "--risk", "0.1", "--kl", "10", "--method", "bogus"],
            "Invalid value for '--method'",
            id="unknown-method",
        ),
        pytest.param(
            ["--risk", "0.1", "--kl", "10", "--delta", "0.05"], "Missing option '--n'", id="no-n"
        ),
        pytest.param(
            ["--risk", "0.1", "--kl", "10", "--n", "10"], "Missing option '--delta'", id="no-delta"
        ),
        pytest.param(
            [*BASE, "--risk", "0.1", "--kl", "10", "--frobnicate"], "No such option", id="unknown"
        ),
        pytest.param(
            [*BASE, "--risk", "0.1", "--kl", "10", "--digits", "0"], "--digits", id="digits=0"
        ),
    ],
)
def test_usage_errors_exit_2(args: list[str], fragment: str) -> None:
    assert_one_line_error(run(*args), 2, fragment)


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        pytest.param(
            ["--risk", "0.1", "--kl", "10", "--n", "100", "--delta", "0"],
            "--delta must be in (0, 1) (a failure probability such as 0.05), got 0.0",
            id="delta=0",
        ),
        pytest.param(
            ["--risk", "0.1", "--kl", "10", "--n", "100", "--delta", "1"],
            "--delta must be in (0, 1)",
            id="delta=1",
        ),
        pytest.param(
            ["--risk", "1.5", "--kl", "10", "--n", "100", "--delta", "0.05"],
            "--risk must be in [0, 1] (a fraction of errors, not a percentage), got 1.5",
            id="risk=1.5",
        ),
        pytest.param(
            ["--risk", "0.1", "--kl", "10", "--n", "0", "--delta", "0.05"],
            "--n must be at least 1, got 0",
            id="n=0",
        ),
        pytest.param(
            ["--risk", "0.1", "--kl", "10", "--n", "2.5", "--delta", "0.05"],
            "--n must be an integer, got '2.5'",
            id="n=2.5",
        ),
        pytest.param(
            ["--risk", "0.1", "--kl", "-1", "--n", "100", "--delta", "0.05"],
            "--kl must be ≥ 0 nats",
            id="negative-kl",
        ),
        pytest.param(
            ["--risk", "0.1", "--bits", "-8", "--n", "100", "--delta", "0.05"],
            "--bits must be ≥ 0",
            id="negative-bits",
        ),
        pytest.param(
            ["--risk", "0.1", "--kl", "nan", "--n", "100", "--delta", "0.05"],
            "--kl must be finite, got nan",
            id="kl=nan",
        ),
        pytest.param(
            ["--risk", "nan", "--kl", "1", "--n", "100", "--delta", "0.05"],
            "--risk must be finite, got nan",
            id="risk=nan",
        ),
        pytest.param(
            ["--risk", "0.1", "--kl", "inf", "--n", "100", "--delta", "0.05"],
            "--kl must be finite, got inf",
            id="kl=inf",
        ),
        pytest.param(
            ["--risk", "abc", "--kl", "10", "--n", "100", "--delta", "0.05"],
            "--risk must be a number, got 'abc'",
            id="risk=abc",
        ),
        pytest.param(
            ["--risk", "0.1", "--kl", "10", "--n", "abc", "--delta", "0.05"],
            "--n must be an integer, got 'abc'",
            id="n=abc",
        ),
        pytest.param(
            ["--errors", "101", "--kl", "10", "--n", "100", "--delta", "0.05"],
            "--errors = 101 exceeds the number of examples n = 100",
            id="errors>n",
        ),
        pytest.param(
            ["--errors", "-1", "--kl", "10", "--n", "100", "--delta", "0.05"],
            "--errors must be at least 0",
            id="errors<0",
        ),
        pytest.param(
            [
                "--risk",
                "0.0015",
                "--bits",
                "10",
                "--n",
                "1000",
                "--delta",
                "0.05",
                "--method",
                "occam",
            ],
            "--risk = 0.0015 times n = 1000 is 1.5, not a whole number of errors",
            id="occam-risk-not-k/n",
        ),
        pytest.param(
            ["--risk", "0.0015", "--n", "1000", "--delta", "0.05", "--method", "test-set"],
            "--risk = 0.0015 times n = 1000 is 1.5, not a whole number of errors",
            id="test-set-risk-not-k/n",
        ),
        pytest.param(
            [*BASE, "--risk", "0.1", "--kl", "10", "--method", "lambda", "--lam", "2"],
            "lam must be in (0, 2), got 2.0",
            id="lam=2",
        ),
        pytest.param(
            [*BASE, "--risk", "0.1", "--kl", "10", "--method", "catoni", "--catoni-c", "0"],
            "c must be > 0, got 0.0",
            id="catoni-c=0",
        ),
    ],
)
def test_invalid_values_exit_3(args: list[str], fragment: str) -> None:
    assert_one_line_error(run(*args), 3, fragment)


def test_debug_shows_a_traceback_on_request() -> None:
    # the opt-in counterpart of "no traceback for a user mistake"
    result = CliRunner().invoke(
        cli, ["--debug", "bound", "--risk", "1.5", "--kl", "1", "--n", "10", "--delta", "0.05"]
    )
    assert result.exit_code == 3
    assert "Traceback" in result.stderr
    assert result.stderr.rstrip().splitlines()[-1].startswith("Error: --risk must be in [0, 1]")
