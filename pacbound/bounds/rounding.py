"""Display helpers that round bounds **up** (toward +inf), never to nearest."""

from __future__ import annotations

import math
from decimal import ROUND_CEILING, Decimal


def format_up(value: float, digits: int = 4) -> str:
    """``value`` with ``digits`` decimals, rounded toward +inf (exact decimal arithmetic).

    >>> format_up(0.13435194124, 4)
    '0.1344'
    >>> format_up(0.25, 2)
    '0.25'
    >>> format_up(1e-20, 8)
    '0.00000001'
    """
    if not math.isfinite(value):
        raise ValueError(f"cannot format a non-finite bound {value!r}")
    quantum = Decimal(1).scaleb(-digits)
    # format "f", not str(): str() switches to exponent notation below 1e-6 ('1E-7', '0E-7')
    return format(Decimal(value).quantize(quantum, rounding=ROUND_CEILING), "f")


def round_up(value: float, digits: int = 4) -> float:
    """The float nearest above ``value`` among decimals with ``digits`` places.

    >>> round_up(0.13435194124, 4)
    0.1344
    """
    result = float(format_up(value, digits))
    while result < value:  # a decimal's nearest float may sit a hair below it
        result = math.nextafter(result, math.inf)
    return result


def format_percent_up(value: float, digits: int = 2) -> str:
    """A risk as a percentage, rounded up: 0.034512 → '3.46%'."""
    return format_up(100.0 * value, digits) + "%"
