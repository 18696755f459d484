"""``pacbound plot``: the bound along the searched scale and the parts of its slack, as PNG."""

from __future__ import annotations

from pathlib import Path

import click

from pacbound.errors import InvalidInputError
from pacbound.io.files import check_writable, write_atomic
from pacbound.report.validate import load_report

EXAMPLES = """\b
Examples:
  pacbound plot runs/demo/report.json -o bound.png
"""


@click.command("plot", epilog=EXAMPLES)
@click.argument("report", type=click.Path(path_type=Path))
@click.option(
    "--output",
    "-o",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="PNG file to write (atomically).",
)
def plot(report: Path, output: Path) -> None:
    """Plot REPORT: the bound versus the searched scale (σ or code length), and where the
    bound's slack comes from (empirical risk, Monte-Carlo slack, KL or code length, δ).

    Needs matplotlib: pip install 'pacbound[plot]'.
    """
    if output.suffix.lower() != ".png":
        raise InvalidInputError(f"--output {output}: give a .png file name", param="--output")
    document = load_report(report)
    check_writable(output)
    from pacbound.report.plots import plot_png

    write_atomic(output, plot_png(document))
    click.echo(f"wrote {output}", err=True)
