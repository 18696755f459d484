"""Option types and shared option bundles (decorators) for the commands."""

from __future__ import annotations

import math
from collections.abc import Callable
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
                number = float(text)
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
