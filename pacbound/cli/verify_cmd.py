"""``pacbound verify``: re-derive a report's certificate and say which fields agree."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from rich.table import Table

from pacbound.cli.options import json_option
from pacbound.cli.terminal import Terminal, emit_json
from pacbound.errors import EXIT_GATE_FAILED, EXIT_OK
from pacbound.report.validate import load_report

EXAMPLES = """\b
Examples:
  pacbound certify final.safetensors --arch mlp --init init.safetensors \\
      --data examples/data/mnist --output report.json --save-posterior posterior.safetensors
  pacbound verify report.json
  pacbound verify report.json --root /path/where/certify/ran --json
"""

HELP = """Re-derive the certificate in REPORT from its saved artifacts and the same data.

Checks that every input file still has the sha256 the report recorded (a changed or missing
file exits 3, naming it), then recomputes the certificate: for the Gaussian method from the
posterior file (KL, σ_p choice, the Monte-Carlo draws replayed with the same seeds, bounds,
held-out bound); for compression methods by decoding the artifact and recounting its errors.
Prints each field with the reported and recomputed value. Exit 0 when every field agrees
exactly, 1 when any disagrees.
"""


@click.command("verify", help=HELP, epilog=EXAMPLES)
@click.argument("report", type=click.Path(path_type=Path))
@click.option(
    "--root",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("."),
    show_default=True,
    help="Folder that relative input paths in the report are relative to (where certify ran).",
)
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda or cuda:N.")
@json_option
def verify(report: Path, root: Path, device: str, as_json: bool) -> None:
    document = load_report(report)
    from pacbound.io import resolve_device
    from pacbound.report.recheck import verify_report

    outcome = verify_report(document, root=root, device=resolve_device(device))
    if as_json:
        emit_json({"report": str(report), **outcome.to_dict()})
    else:
        _render(Terminal(), outcome.checks)
    if not outcome.agree:
        click.echo(
            f"Verification failed: {len(outcome.disagreeing)} field(s) disagree: "
            + ", ".join(outcome.disagreeing),
            err=True,
        )
    click.get_current_context().exit(EXIT_OK if outcome.agree else EXIT_GATE_FAILED)


def _show(value: Any) -> str:
    if isinstance(value, dict):
        return "{…}" if len(str(value)) > 40 else str(value)
    if isinstance(value, float):
        return repr(value)
    return str(value)


def _render(term: Terminal, checks: Any) -> None:
    table = Table(title="pacbound verify", title_justify="left")
    for column in ("field", "report", "recomputed", "agree"):
        table.add_column(column)
    for check in checks:
        table.add_row(
            check.field,
            _show(check.reported),
            _show(check.recomputed),
            "yes" if check.agree else "[red]NO[/red]",
        )
    term.table(table)
