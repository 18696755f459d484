"""Entry point: the click group and the single place where errors become exit codes."""

from __future__ import annotations

import contextlib
import importlib
import os
import signal
import sys
import traceback
from collections.abc import Sequence
from types import FrameType
from typing import Any, NoReturn

import click

from pacbound._version import __version__
from pacbound.errors import (
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_TERMINATED,
    EXIT_USAGE,
    PacboundError,
)

EPILOG = """\b
Exit codes:
  0    success, or the gate passed
  1    computed, but the gate failed (vacuous, or above --max-bound)
  2    usage error (unknown, missing, contradictory or inapplicable options)
  3    bad input (checkpoint, architecture, data, invalid values)
  4    numerical failure (NaN, non-convergence)
  5    internal error (a bug: rerun with --debug and report it)
  130  interrupted
  143  terminated (SIGTERM; under torchrun also a rank stopped because another failed)
"""


def _one_line(message: object) -> str:
    return " ".join(str(message).split())


#: The variables torchrun sets for every worker (pacbound.parallel.world reads the same ones;
#: that module imports torch, which ``pacbound bound`` never loads).
_TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def _place() -> tuple[int, int, int] | None:
    """(rank, world size, local rank) of a process started by torchrun, else ``None``."""
    if not all(name in os.environ for name in _TORCHRUN_VARIABLES):
        return None
    try:
        return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"])
    except ValueError:
        return None


def _fail(code: int, message: str, *, debug: bool, shown_by: str = "every rank") -> NoReturn:
    """Print one ``Error:`` line and exit with ``code``. Under torchrun, ``shown_by`` says
    which ranks print it: ``"every rank"`` (a failure of this rank alone; ranks other than 0
    add ``[rank r of N]``), ``"rank 0"`` (the ranks agreed on it) or ``"each node"`` (a
    command-line error: the first rank of every node)."""
    place = _place()
    rank, size, local = place or (0, 1, 0)
    show = {"every rank": True, "rank 0": rank == 0, "each node": local == 0}[shown_by]
    if debug and show:
        traceback.print_exc()
    if show:
        where = f" [rank {rank} of {size}]" if rank and shown_by != "rank 0" else ""
        click.echo(f"Error: {_one_line(message)}{where}", err=True)
    if place is not None:
        # The code is decided: the SIGTERM torchrun now sends the other ranks must not
        # replace it (its agent kills a rank that does not end within its own timeout).
        with contextlib.suppress(ValueError):
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
    sys.exit(code)


def _leave_process_group() -> None:
    """Leave torchrun's process group, if this process joined one (errors included: a
    process that keeps its group can hang at exit)."""
    world = sys.modules.get("pacbound.parallel.world")
    if world is not None:
        with contextlib.suppress(Exception):  # best effort on the way out: the code stands
            world.shutdown()


def _peer_failure(exc: Exception) -> str | None:
    """The message of a collective broken by another rank (under torchrun), else ``None``."""
    failures = sys.modules.get("pacbound.parallel.failures")
    place = _place()
    if failures is None or place is None or not failures.is_peer_failure(exc):
        return None
    return str(failures.peer_failed(exc, place[0], "a collective"))


#: Commands are imported only when used, so that ``pacbound bound`` never loads torch.
LAZY_COMMANDS = {
    "bound": "pacbound.cli.bound_cmd:bound",
    "certify": "pacbound.cli.certify_cmd:certify",
    "compress": "pacbound.cli.compress_cmd:compress",
    "inspect": "pacbound.cli.inspect_cmd:inspect",
    "plot": "pacbound.cli.plot_cmd:plot",
    "report": "pacbound.cli.report_cmd:report",
    "verify": "pacbound.cli.verify_cmd:verify",
}


#: Commands that run in one process; the others join torchrun's process group when there is one.
ONE_PROCESS_COMMANDS = frozenset({"bound", "inspect", "plot", "report"})


class Terminated(BaseException):
    """Raised by the SIGTERM handler so that clean-up runs and the exit code is 143."""


class Interrupted(KeyboardInterrupt):
    """Raised by the SIGINT handler instead of KeyboardInterrupt.

    CPython remembers a KeyboardInterrupt that escapes any ``exec``/``eval`` of source text
    (libraries do that at run time) and, under ``python -m pacbound``, then ends the process
    by SIGINT at exit whatever exit code was asked for (seen as a flaky exit of -2 instead of
    130); CPython checks for exactly KeyboardInterrupt, so this subclass keeps the documented
    exit code 130 while code that cleans up on KeyboardInterrupt still sees it.
    """


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise Terminated()


def _on_sigint(signum: int, frame: FrameType | None) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not break clean-up
    raise Interrupted()


_HANDLERS = {signal.SIGTERM: _on_sigterm, signal.SIGINT: _on_sigint}


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
        previous: dict[int, Any] = {}
        try:
            for signum, handler in _HANDLERS.items():
                previous[signum] = signal.getsignal(signum)
                signal.signal(signum, handler)
        except ValueError:  # not the main thread: leave the signals alone
            previous = {}
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
        except Terminated:
            why = ", from torchrun: a rank failed or torchrun was stopped" if _place() else ""
            _fail(
                EXIT_TERMINATED, f"terminated (SIGTERM{why}); no report was written.", debug=debug
            )
        except click.UsageError as exc:
            hint = ""
            if exc.ctx is not None:
                hint = f" See '{exc.ctx.command_path} --help'."
            _fail(EXIT_USAGE, exc.format_message() + hint, debug=debug, shown_by="each node")
        except click.ClickException as exc:
            code = exc.exit_code or EXIT_USAGE
            _fail(code, exc.format_message(), debug=debug, shown_by="each node")
        except PacboundError as exc:
            shared = type(exc).__name__ == "SharedError"
            _fail(
                exc.exit_code, str(exc), debug=debug, shown_by="rank 0" if shared else "every rank"
            )
        except Exception as exc:
            if (peer := _peer_failure(exc)) is not None:
                _fail(EXIT_TERMINATED, peer, debug=debug)
            _fail(
                EXIT_INTERNAL,
                f"internal error ({type(exc).__name__}: {_one_line(exc)}). This is a bug in "
                "pacbound: rerun with --debug and report the traceback.",
                debug=debug,
            )
        finally:
            _leave_process_group()
            if _place() is None:  # a torchrun worker is on its way out: keep SIGTERM ignored
                for restored, handler in previous.items():
                    signal.signal(restored, handler)
        sys.exit(rv if isinstance(rv, int) else EXIT_OK)

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        """Under torchrun, a command that does not distribute (``bound``, ``inspect``,
        ``plot``, ``report``) runs on rank 0 only: the other ranks exit 0 at once."""
        name, command, rest = super().resolve_command(ctx, args)
        place = _place()
        if name in ONE_PROCESS_COMMANDS and place is not None and place[0] != 0:
            return name, click.Command(name or "", callback=lambda: None), []
        return name, command, rest

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *LAZY_COMMANDS})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in LAZY_COMMANDS:
            module_name, attr = LAZY_COMMANDS[cmd_name].split(":")
            command: click.Command = getattr(importlib.import_module(module_name), attr)
            return command
        return super().get_command(ctx, cmd_name)


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


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """The console-script entry point."""
    cli.main(args=argv, prog_name="pacbound")
