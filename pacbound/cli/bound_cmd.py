"""``pacbound bound``: a bound calculator for people who already have the numbers."""

from __future__ import annotations

import math
from enum import Enum
from typing import Any

import click
from rich.table import Table

from pacbound._version import __version__
from pacbound.bounds import (
    BoundResult,
    bits_to_nats,
    format_up,
    occam_binomial,
    occam_kl,
    pac_bayes_catoni,
    pac_bayes_catoni_grid,
    pac_bayes_classic,
    pac_bayes_kl,
    pac_bayes_kl_xi,
    pac_bayes_lambda,
    pac_bayes_quad,
    test_set_bound,
)
from pacbound.bounds.validation import (
    check_count,
    check_delta,
    check_errors,
    check_kl,
    check_risk,
)
from pacbound.cli.options import FLOAT, INT, digits_option, json_option
from pacbound.cli.terminal import Terminal, emit_json


class BoundMethod(str, Enum):
    KL = "kl"
    KL_XI = "kl-xi"
    CLASSIC = "classic"
    QUAD = "quad"
    LAMBDA = "lambda"
    CATONI = "catoni"
    OCCAM = "occam"
    OCCAM_KL = "occam-kl"
    TEST_SET = "test-set"


DESCRIPTIONS = {
    BoundMethod.KL: "PAC-Bayes-kl, ln(2√n/δ) (Seeger 2002; Maurer 2004)",
    BoundMethod.KL_XI: "PAC-Bayes-kl, exact ln(ξ(n)/δ) (Maurer 2004)",
    BoundMethod.CLASSIC: "PAC-Bayes classic, L̂ + √(B/2) (McAllester 1999)",
    BoundMethod.QUAD: "PAC-Bayes-quadratic (Rivasplata et al.; Pérez-Ortiz et al. 2021)",
    BoundMethod.LAMBDA: "PAC-Bayes-λ (Thiemann et al. 2017)",
    BoundMethod.CATONI: "Catoni (2007, Thm 1.2.6)",
    BoundMethod.OCCAM: "Occam, exact binomial tail (Langford 2005)",
    BoundMethod.OCCAM_KL: "Occam, kl form (Langford 2005)",
    BoundMethod.TEST_SET: "held-out test set, binomial tail (Langford 2005)",
}

EXAMPLES = """\b
Examples:
  pacbound bound --risk 0.02 --kl 5000 --n 60000 --delta 0.025
  pacbound bound --errors 12 --n 1000 --delta 0.05 --method test-set
  pacbound bound --errors 300 --bits 20000 --n 60000 --delta 0.05 --method occam --json
"""


def _compute(
    method: BoundMethod,
    risk: float,
    n: int,
    delta: float,
    nats: float,
    catoni_c: float | None,
    lam: float | None,
) -> BoundResult:
    if method is BoundMethod.TEST_SET:
        return test_set_bound(risk, n=n, delta=delta)
    if method is BoundMethod.LAMBDA:
        assert lam is not None
        return pac_bayes_lambda(risk, kl=nats, n=n, delta=delta, lam=lam)
    if method is BoundMethod.CATONI:
        if catoni_c is None:
            return pac_bayes_catoni_grid(risk, kl=nats, n=n, delta=delta)
        return pac_bayes_catoni(risk, kl=nats, n=n, delta=delta, c=catoni_c)
    func = {
        BoundMethod.KL: pac_bayes_kl,
        BoundMethod.KL_XI: pac_bayes_kl_xi,
        BoundMethod.CLASSIC: pac_bayes_classic,
        BoundMethod.QUAD: pac_bayes_quad,
        BoundMethod.OCCAM: occam_binomial,
        BoundMethod.OCCAM_KL: occam_kl,
    }[method]
    return func(risk, kl=nats, n=n, delta=delta)


def _check_usage(
    method: BoundMethod,
    risk: float | None,
    errors: int | None,
    kl: float | None,
    bits: float | None,
    catoni_c: float | None,
    lam: float | None,
) -> None:
    if (risk is None) == (errors is None):
        raise click.UsageError("give exactly one of --risk or --errors.")
    if kl is not None and bits is not None:
        raise click.UsageError("give at most one of --kl (nats) or --bits.")
    if method is BoundMethod.TEST_SET and (kl is not None or bits is not None):
        raise click.UsageError("--method test-set takes no --kl/--bits: a held-out set needs none.")
    if method is not BoundMethod.TEST_SET and kl is None and bits is None:
        raise click.UsageError(
            f"--method {method.value} needs a complexity: --kl NATS or --bits BITS."
        )
    if catoni_c is not None and method is not BoundMethod.CATONI:
        raise click.UsageError("--catoni-c only applies to --method catoni.")
    if (lam is not None) != (method is BoundMethod.LAMBDA):
        raise click.UsageError("--lam is required by, and only applies to, --method lambda.")


@click.command("bound", epilog=EXAMPLES)
@click.option("--risk", type=FLOAT, help="Empirical risk in [0, 1] (a fraction, not a percent).")
@click.option("--errors", type=INT, help="Number of errors k on the n examples (risk = k/n).")
@click.option(
    "--n", "n", type=INT, required=True, help="Number of examples the risk is measured on."
)
@click.option("--delta", type=FLOAT, required=True, help="Failure probability δ in (0, 1).")
@click.option("--kl", type=FLOAT, help="KL(Q‖P) in nats (or the code length in nats).")
@click.option("--bits", type=FLOAT, help="Code length / complexity in bits (converted to nats).")
@click.option(
    "--method",
    type=click.Choice([m.value for m in BoundMethod]),
    default=BoundMethod.KL.value,
    show_default=True,
    help="Which inequality to evaluate.",
)
@click.option("--catoni-c", type=FLOAT, help="Fixed Catoni C > 0 (default: a 33-point grid, paid).")
@click.option("--lam", type=FLOAT, help="λ ∈ (0, 2) for --method lambda, fixed in advance.")
@digits_option
@json_option
def bound(
    risk: float | None,
    errors: int | None,
    n: int,
    delta: float,
    kl: float | None,
    bits: float | None,
    method: str,
    catoni_c: float | None,
    lam: float | None,
    digits: int,
    as_json: bool,
) -> None:
    """Evaluate one generalization bound from numbers you already have.

    The value is an upper bound on the true risk that holds with probability at least
    1 − δ; it is printed rounded up to --digits decimals.
    """
    chosen = BoundMethod(method)
    _check_usage(chosen, risk, errors, kl, bits, catoni_c, lam)
    n = check_count(n, "--n")
    delta = check_delta(delta, "--delta")
    if errors is not None:
        k = check_errors(errors, n, "--errors")
        empirical = k / n
    else:
        empirical = check_risk(risk, "--risk")
    if bits is not None:
        nats = bits_to_nats(bits, "--bits")
    elif kl is not None:
        nats = check_kl(kl, "--kl")
    else:
        nats = 0.0
    if chosen in (BoundMethod.OCCAM, BoundMethod.TEST_SET) and errors is None:
        from pacbound.bounds.validation import errors_from_risk

        errors_from_risk(empirical, n, "--risk")  # binomial tails need a whole error count
    result = _compute(chosen, empirical, n, delta, nats, catoni_c, lam)
    if as_json:
        emit_json(_document(chosen, result, digits, bits))
    else:
        _render(chosen, result, digits, bits)


def _document(
    method: BoundMethod, result: BoundResult, digits: int, bits: float | None
) -> dict[str, Any]:
    doc: dict[str, Any] = {"tool": "pacbound", "version": __version__, "command": "bound"}
    doc.update(result.to_dict())
    doc["method"] = method.value
    doc["inequality"] = result.method
    doc["value_rounded_up"] = format_up(result.value, digits)
    if bits is not None:
        doc["complexity_bits"] = bits
    return doc


def _render(method: BoundMethod, result: BoundResult, digits: int, bits: float | None) -> None:
    term = Terminal()
    table = Table(title=DESCRIPTIONS[method], show_header=False, title_justify="left")
    table.add_column("quantity", style="bold")
    table.add_column("value", justify="right")
    table.add_row("bound on true risk", format_up(result.value, digits) + "  (rounded up)")
    table.add_row("empirical risk", f"{result.empirical_risk:.6g}")
    table.add_row("n", str(result.n))
    table.add_row("delta", f"{result.delta:g}")
    if method is not BoundMethod.TEST_SET:
        table.add_row("complexity (nats)", f"{result.complexity_nats:.6g}")
    if bits is not None:
        table.add_row("complexity (bits)", f"{bits:.6g}")
    for name, value in result.terms.items():
        if name in {"kl"}:
            continue
        shown = (
            str(int(value))
            if float(value).is_integer() and math.fabs(value) < 1e15
            else f"{value:.6g}"
        )
        table.add_row(name, shown)
    term.table(table)
