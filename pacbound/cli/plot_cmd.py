"""``pacbound plot``: the bound along the searched scale and the parts of its slack, or the
bound against n across reports, as PNG."""

from __future__ import annotations

from pathlib import Path

import click

from pacbound.errors import InvalidInputError
from pacbound.io.files import check_writable, write_atomic
from pacbound.report.validate import load_report

EXAMPLES = """\b
Examples:
  pacbound plot runs/demo/report.json -o bound.png
  # Several reports: the certified bound against n (approximations such as the
  # marginal method's EP value dashed):
  pacbound plot runs/marginal_n*/report.json -o bound_vs_n.png
"""


@click.command("plot", epilog=EXAMPLES)
@click.argument("reports", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--output",
    "-o",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="PNG file to write (atomically).",
)
def plot(reports: tuple[Path, ...], output: Path) -> None:
    """Plot REPORTS. One report: the bound versus the searched scale (σ, code length or the
    kernel grid), and where the bound's slack comes from (empirical risk, Monte-Carlo slack,
    KL or code length, δ). Several: the certified bound against n, one line per method and
    setting, with each method's approximations (not bounds) dashed.

    Needs matplotlib: pip install 'pacbound[plot]'.
    """
    if output.suffix.lower() != ".png":
        raise InvalidInputError(f"--output {output}: give a .png file name", param="--output")
    documents = [load_report(path) for path in reports]
    check_writable(output)
    from pacbound.report.plots import plot_png

    write_atomic(output, plot_png(documents))
    click.echo(f"wrote {output}", err=True)
