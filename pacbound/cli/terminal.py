"""The one place rich is used: diagnostics and progress on stderr, results on stdout.

JSON never goes through rich (it wraps long lines); :func:`emit_json` writes it with
``json.dumps(allow_nan=False)`` straight to stdout.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import click
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

if TYPE_CHECKING:
    from pacbound.certify.method import Method


class Terminal:
    """Writes results to stdout and diagnostics/progress to stderr.

    ``quiet`` silences diagnostics and progress; progress is also off when stderr is not a
    terminal (rich's own detection), so logs in CI stay clean. ``mute`` silences everything,
    warnings and results included: the ranks other than 0 of a distributed run (errors still
    reach stderr through the CLI's error handler).
    """

    def __init__(self, *, quiet: bool = False, progress: bool = True, mute: bool = False) -> None:
        self.quiet = quiet or mute
        self.mute = mute
        # No file= given: rich looks sys.stdout/sys.stderr up at each write, so click's
        # CliRunner (which swaps them) captures the output.
        self.out = Console(highlight=False, soft_wrap=True)
        self.err = Console(stderr=True, highlight=False, soft_wrap=True)
        self.show_progress = progress and not self.quiet and self.err.is_terminal

    def info(self, message: str) -> None:
        if not self.quiet:
            self.err.print(message)

    def warn(self, message: str) -> None:
        # Warnings are shown even with --quiet: they concern validity.
        if not self.mute:
            self.err.print(f"[yellow]Warning:[/yellow] {message}")

    def table(self, table: Table) -> None:
        if not self.mute:
            self.out.print(table)

    def line(self, text: str = "") -> None:
        if not self.mute:
            self.out.print(text)

    @contextmanager
    def progress(self) -> Iterator[Progress | None]:
        """A rich progress display on stderr, or ``None`` when progress is off."""
        if not self.show_progress:
            yield None
            return
        bar = Progress(
            TextColumn("[progress.description]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=self.err,
            transient=True,
        )
        with bar:
            yield bar

    @contextmanager
    def progress_callbacks(self) -> Iterator[Callable[[str, int], Callable[[int], None]]]:
        """``(description, total) ↦ advance`` callbacks for the library's progress hooks, each
        drawing one task on :meth:`progress` (no-ops when progress is off)."""
        with self.progress() as bar:
            if bar is None:
                yield lambda description, total: lambda advance: None
                return

            def factory(description: str, total: int) -> Callable[[int], None]:
                task = bar.add_task(description, total=total)
                return lambda advance: bar.advance(task, advance)

            yield factory


def render_certificate(term: Terminal, method: Method, res: Mapping[str, Any]) -> None:
    """The certificate table: what is certified, the bound (rounded up) and the verdict,
    then the rows the method contributes (:meth:`~pacbound.certify.method.Method.facts`)."""
    from pacbound.bounds import format_up

    facts = method.facts(res)
    verdict = res["verdict"]
    title = facts.title or f"pacbound certificate ({res['inequality']}, {facts.classifier})"
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column("quantity", style="bold")
    table.add_column("value")
    table.add_row("certified classifier", res["certified_classifier"])
    table.add_row("bound on true 0-1 error", f"{format_up(res['bound'], 4)}  (rounded up)")
    table.add_row(
        "verdict",
        ("NON-VACUOUS" if verdict["non_vacuous"] else "VACUOUS")
        + f" (chance error 1 − 1/{verdict['num_classes']} = {verdict['chance_error']:.4g})",
    )
    for label, text in facts.rows:
        table.add_row(label, text)
    term.table(table)


def dumps_json(document: Any) -> str:
    """Serialize a report: no NaN/Infinity allowed, stable key order, trailing newline."""
    return json.dumps(document, allow_nan=False, indent=2, sort_keys=False) + "\n"


def emit_json(document: Any) -> None:
    """Write one JSON document to stdout (never through rich)."""
    click.echo(dumps_json(document), nl=False)
