"""The exceptions pacbound raises, and the exit code each one maps to in the CLI.

Library code raises these; the CLI (``pacbound.cli.main``) turns them into one line
``Error: …`` on stderr and the documented exit code. Every message should name the file or
option at fault and say how to fix it.

Exit codes (the user-facing contract):

====  ============================================================================
code  meaning
====  ============================================================================
0     success, or the gate passed
1     computed, but the gate failed (vacuous bound, or above ``--max-bound``)
2     usage error (unknown option, missing, contradictory or inapplicable options)
3     bad input (checkpoint, architecture, data, invalid option values)
4     numerical failure (NaN, non-convergence)
5     internal error (a bug: please report it, rerun with ``--debug``)
130   interrupted (Ctrl-C)
143   terminated: SIGTERM, or, in a distributed run, this rank stopped because another rank
      failed, was killed, never joined or timed out (that rank's own line and exit code say
      why; torchrun sends SIGTERM to the other ranks then anyway)
====  ============================================================================
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_GATE_FAILED = 1
EXIT_USAGE = 2
EXIT_BAD_INPUT = 3
EXIT_NUMERICAL = 4
EXIT_INTERNAL = 5
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143


class PacboundError(Exception):
    """Base class of every error pacbound raises on purpose."""

    exit_code: int = EXIT_INTERNAL


class InvalidInputError(PacboundError, ValueError):
    """A value, file, checkpoint, architecture or data set the user gave is not acceptable.

    ``param`` names the argument or option at fault when there is one.
    """

    exit_code = EXIT_BAD_INPUT

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class UsageError(PacboundError):
    """Options that cannot go together: one that does not apply to the chosen method, prior,
    posterior or data format, or one that is missing (exit 2, like click's usage errors).

    ``param`` names the option at fault.
    """

    exit_code = EXIT_USAGE

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class NumericalError(PacboundError, ArithmeticError):
    """A computation did not converge or produced NaN/Inf where a number was required."""

    exit_code = EXIT_NUMERICAL
