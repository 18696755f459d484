"""Checks at the public boundary: each names the argument and quotes the bad value.

``name`` is what the user typed (``"delta"`` in the library, ``"--delta"`` in the CLI), so the
same checks give actionable messages in both places.
"""

from __future__ import annotations

import math
import numbers

import numpy as np

from pacbound.errors import InvalidInputError


def _as_float(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InvalidInputError(f"{name} must be a real number, got {value!r}", param=name)
    x = float(value)
    if not math.isfinite(x):
        raise InvalidInputError(f"{name} must be finite, got {x!r}", param=name)
    return x


def check_delta(value: object, name: str = "delta") -> float:
    """δ ∈ (0, 1): the probability that the certificate is wrong."""
    x = _as_float(value, name)
    if not 0.0 < x < 1.0:
        raise InvalidInputError(
            f"{name} must be in (0, 1) (a failure probability such as 0.05), got {x!r}",
            param=name,
        )
    return x


def check_risk(value: object, name: str = "empirical_risk") -> float:
    """An empirical risk of a [0, 1]-valued loss: in [0, 1]."""
    x = _as_float(value, name)
    if not 0.0 <= x <= 1.0:
        raise InvalidInputError(
            f"{name} must be in [0, 1] (a fraction of errors, not a percentage), got {x!r}",
            param=name,
        )
    return x


def check_count(value: object, name: str = "n", *, minimum: int = 1) -> int:
    """A whole number ≥ ``minimum`` (sample sizes, draws, grid sizes)."""
    if isinstance(value, bool):
        raise InvalidInputError(f"{name} must be an integer, got {value!r}", param=name)
    if isinstance(value, numbers.Integral):
        k = int(value)
    elif isinstance(value, numbers.Real) and math.isfinite(x := float(value)) and x % 1 == 0:
        k = int(x)
    else:
        raise InvalidInputError(f"{name} must be an integer, got {value!r}", param=name)
    if k < minimum:
        raise InvalidInputError(f"{name} must be at least {minimum}, got {k}", param=name)
    return k


def check_kl(value: object, name: str = "kl") -> float:
    """A complexity term in nats (KL divergence or code length × ln 2): finite and ≥ 0."""
    x = _as_float(value, name)
    if x < 0.0:
        raise InvalidInputError(
            f"{name} must be ≥ 0 nats (a KL divergence is never negative), got {x!r}",
            param=name,
        )
    return x


def check_open_interval(value: object, name: str, low: float, high: float) -> float:
    """A parameter strictly between ``low`` and ``high`` (e.g. λ ∈ (0, 2))."""
    x = _as_float(value, name)
    if not low < x < high:
        raise InvalidInputError(f"{name} must be in ({low:g}, {high:g}), got {x!r}", param=name)
    return x


def check_positive(value: object, name: str) -> float:
    """A finite real number > 0."""
    x = _as_float(value, name)
    if x <= 0.0:
        raise InvalidInputError(f"{name} must be > 0, got {x!r}", param=name)
    return x


def check_errors(errors: object, n: int, name: str = "errors") -> int:
    """A number of errors k with 0 ≤ k ≤ n."""
    k = check_count(errors, name, minimum=0)
    if k > n:
        raise InvalidInputError(f"{name} = {k} exceeds the number of examples n = {n}", param=name)
    return k


def errors_from_risk(risk: float, n: int, name: str = "empirical_risk") -> int:
    """The whole number of errors k with k/n = risk; refuse a risk that is not such a fraction.

    Binomial-tail bounds need the count itself. A risk that is not k/n to within float
    rounding did not come from counting 0-1 errors on n examples.
    """
    k_float = risk * n
    k = round(k_float)
    if abs(k_float - k) > 1e-9 * max(1.0, k_float):
        raise InvalidInputError(
            f"{name} = {risk!r} times n = {n} is {k_float!r}, not a whole number of errors; "
            "pass the error count instead",
            param=name,
        )
    return int(k)


def check_array_in_unit_interval(values: np.ndarray, name: str) -> None:
    """Every entry finite and in [0, 1]."""
    if not np.all(np.isfinite(values)):
        raise InvalidInputError(f"{name} must be finite", param=name)
    if np.any(values < 0.0) or np.any(values > 1.0):
        raise InvalidInputError(f"{name} must be in [0, 1]", param=name)


def check_array_nonnegative(values: np.ndarray, name: str) -> None:
    """Every entry finite and ≥ 0."""
    if not np.all(np.isfinite(values)):
        raise InvalidInputError(f"{name} must be finite", param=name)
    if np.any(values < 0.0):
        raise InvalidInputError(f"{name} must be ≥ 0", param=name)
