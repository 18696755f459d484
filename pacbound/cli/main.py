"""Entry point: the click group and the single place where errors become exit codes."""

from __future__ import annotations

import sys
import traceback
from collections.abc import Sequence
from typing import Any, NoReturn

import click

from pacbound._version import __version__
from pacbound.errors import (
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    PacboundError,
)

EPILOG = """\b
Exit codes:
  0    success, or the gate passed
  1    computed, but the gate failed (vacuous, or above --max-bound)
  2    usage error (unknown, missing or contradictory options)
  3    bad input (checkpoint, architecture, data, invalid values)
  4    numerical failure (NaN, non-convergence)
  5    internal error (a bug: rerun with --debug and report it)
  130  interrupted
"""


def _one_line(message: object) -> str:
    return " ".join(str(message).split())


def _fail(code: int, message: str, *, debug: bool) -> NoReturn:
    if debug:
        traceback.print_exc()
    click.echo(f"Error: {_one_line(message)}", err=True)
    sys.exit(code)


class PacboundGroup(click.Group):
    """A click group that turns every failure into one ``Error:`` line and an exit code.

    This is the only place that catches broad exceptions. It also runs under
    ``click.testing.CliRunner``, so tests see the same exit codes as users.
    """

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> NoReturn:
        argv = list(sys.argv[1:] if args is None else args)
        debug = "--debug" in argv
        try:
            rv = super().main(
                args=argv,
                prog_name=prog_name or "pacbound",
                complete_var=complete_var,
                standalone_mode=False,
                **extra,
            )
        except (click.exceptions.Abort, KeyboardInterrupt):
            _fail(EXIT_INTERRUPTED, "interrupted; no report was written.", debug=debug)
        except click.UsageError as exc:
            hint = ""
            if exc.ctx is not None:
                hint = f" See '{exc.ctx.command_path} --help'."
            _fail(EXIT_USAGE, exc.format_message() + hint, debug=debug)
        except click.ClickException as exc:
            _fail(exc.exit_code or EXIT_USAGE, exc.format_message(), debug=debug)
        except PacboundError as exc:
            _fail(exc.exit_code, str(exc), debug=debug)
        except Exception as exc:
            _fail(
                EXIT_INTERNAL,
                f"internal error ({type(exc).__name__}: {_one_line(exc)}). This is a bug in "
                "pacbound: rerun with --debug and report the traceback.",
                debug=debug,
            )
        sys.exit(rv if isinstance(rv, int) else EXIT_OK)


@click.group(
    cls=PacboundGroup,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    epilog=EPILOG,
)
@click.version_option(__version__, "--version", prog_name="pacbound")
@click.option("--debug", is_flag=True, help="Show full tracebacks on errors.")
def cli(debug: bool) -> None:
    """Certify how well a trained PyTorch model will do on unseen data.

    PAC-Bayes bounds for a Gaussian posterior around the weights, and compression (Occam)
    bounds for a compressed model. Every bound printed is rounded up, never to nearest.
    """


def _register_commands() -> None:
    from pacbound.cli.bound_cmd import bound
    from pacbound.cli.inspect_cmd import inspect

    cli.add_command(bound)
    cli.add_command(inspect)


_register_commands()


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """The console-script entry point."""
    cli.main(args=argv, prog_name="pacbound")
