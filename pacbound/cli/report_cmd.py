"""``pacbound report``: one table row per report, as Markdown, LaTeX or CSV."""

from __future__ import annotations

from pathlib import Path

import click

from pacbound.report.tables import TableFormat, render, rows_of
from pacbound.report.validate import hash_agrees, load_report

EXAMPLES = """\b
Examples:
  pacbound report runs/*/report.json --format markdown
  pacbound report a.json b.json --format latex --digits 3 -o table.tex
  pacbound report a.json --format csv > bounds.csv
"""


@click.command("report", epilog=EXAMPLES)
@click.argument("reports", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--format",
    "fmt",
    type=click.Choice([f.value for f in TableFormat]),
    default=TableFormat.MARKDOWN.value,
    show_default=True,
    help="markdown; latex (booktabs table plus a \\newcommand per number); csv.",
)
@click.option(
    "--digits",
    type=click.IntRange(1, 12),
    default=4,
    show_default=True,
    help="Decimals of risks and bounds (rounded up, never to nearest).",
)
@click.option(
    "--macro-prefix",
    default="pb",
    show_default=True,
    help="latex: prefix of the macro names (letters only), e.g. \\pbBoundRun.",
)
@click.option(
    "--output",
    "-o",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write the table to this file (atomically) instead of stdout.",
)
def report(
    reports: tuple[Path, ...], fmt: str, digits: int, macro_prefix: str, output: Path | None
) -> None:
    """Tabulate the certificates of one or more REPORTS (JSON files from certify).

    One row per report: method, certified classifier, n, empirical risk (its upper bound),
    KL or code length, δ, the bound and whether it is non-vacuous; then, where any report has
    them, the prior mean and posterior family (Gaussian) and the held-out bound with its δ.
    Every bound is rounded up.
    """
    documents = [load_report(path) for path in reports]
    for path, document in zip(reports, documents, strict=True):
        if not hash_agrees(document):
            click.echo(
                f"Warning: {path}: results_sha256 does not match the results block (the "
                "report was edited); check it with pacbound verify",
                err=True,
            )
    text = render(
        rows_of(list(reports), documents), TableFormat(fmt), digits=digits, prefix=macro_prefix
    )
    if output is None:
        click.echo(text, nl=False)
        return
    from pacbound.io.files import check_writable, write_atomic

    check_writable(output)
    write_atomic(output, text.encode())
