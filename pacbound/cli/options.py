"""Option types and shared option bundles (decorators) for the commands."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import click

from pacbound.errors import InvalidInputError

F = TypeVar("F", bound=Callable[..., Any])


class _Number(click.ParamType):
    """A number whose bad spelling is *bad input* (exit 3), not a usage error (exit 2).

    Range checks happen in the library validators, which name the option.
    """

    def __init__(self, kind: type) -> None:
        self.kind = kind
        self.name = "integer" if kind is int else "float"

    def get_metavar(self, param: click.Parameter, ctx: click.Context | None = None) -> str:
        return "INTEGER" if self.kind is int else "FLOAT"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, self.kind) and not isinstance(value, bool):
            return value
        opt = param.opts[0] if param is not None and param.opts else "value"
        text = str(value).strip()
        try:
            if self.kind is int:
                try:
                    return int(text)  # exact, also beyond 2**53 (seeds)
                except ValueError:
                    pass
                number = float(text)  # "1e3", "10.0"
                if not math.isfinite(number) or number != int(number):
                    raise ValueError
                return int(number)
            return float(text)
        except ValueError:
            kind = "an integer" if self.kind is int else "a number"
            raise InvalidInputError(f"{opt} must be {kind}, got {text!r}", param=opt) from None


FLOAT = _Number(float)
INT = _Number(int)


def json_option(func: F) -> F:
    return click.option(
        "--json",
        "as_json",
        is_flag=True,
        help="Print one JSON document on stdout instead of a table.",
    )(func)


def digits_option(func: F) -> F:
    return click.option(
        "--digits",
        type=click.IntRange(1, 12),
        default=4,
        show_default=True,
        help="Decimals shown in the table (bounds are rounded up).",
    )(func)


def _set_threads(ctx: click.Context, param: click.Parameter, value: int | None) -> int | None:
    if value is None:
        return None
    from pacbound.bounds.validation import check_count

    threads = check_count(value, "--threads")
    if threads > MAX_THREADS:  # torch's thread pool crashes the process far above this
        raise InvalidInputError(
            f"--threads must be at most {MAX_THREADS}, got {threads}", param="--threads"
        )
    import torch

    torch.set_num_threads(threads)
    return threads


#: The most intra-op threads ``--threads`` (or a report's recorded count) may ask for.
MAX_THREADS = 1024


THREADS_HELP = (
    "Torch intra-op CPU threads (default: torch's own choice); certify and compress record it "
    "in the report (training may differ in the last bits with another count)."
)

_VERIFY_THREADS_HELP = (
    "Torch intra-op CPU threads. [default: a REPORT's recorded count (environment."
    "torch_threads), since retraining a data-dependent prior or a posterior reproduces bit "
    "for bit only at the count it was made with; otherwise torch's own choice]"
)


def threads_option(func: F, help: str = THREADS_HELP) -> F:
    """``--threads N``: torch's intra-op threads (``torch.set_num_threads``), set as soon as
    the option is parsed; without it torch's default is left alone. Commands record the value
    in their report's options: the thread count can change the last bits of training."""
    return click.option(
        "--threads",
        type=INT,
        default=None,
        metavar="N",
        callback=_set_threads,
        expose_value=True,
        help=help,
    )(func)


def verify_threads_option(func: F) -> F:
    """``--threads N`` of ``verify``: as :func:`threads_option`; without it a report is
    re-derived at its recorded count (:func:`set_report_threads`)."""
    return threads_option(func, help=_VERIFY_THREADS_HELP)


def set_report_threads(given: int | None, report: Mapping[str, Any]) -> None:
    """Set torch's intra-op threads to the count ``report`` was made with, unless
    ``--threads`` was ``given`` (or the report records none): a data-dependent prior, a
    posterior or a subspace is retrained bit for bit only at that count."""
    from pacbound.report.document import recorded_threads

    if given is None and (threads := recorded_threads(report)) is not None:
        if threads > MAX_THREADS:
            raise InvalidInputError(
                f"the report records torch_threads = {threads}, more than {MAX_THREADS}; "
                "pass --threads N to verify at another count"
            )
        import torch

        torch.set_num_threads(threads)
