"""CI gates: turn a computed bound into exit code 0 or 1 (and a message saying why)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import click

from pacbound.bounds.validation import check_risk
from pacbound.errors import EXIT_GATE_FAILED, EXIT_OK

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class GateOutcome:
    passed: bool
    reasons: tuple[str, ...]
    exit_zero: bool

    @property
    def exit_code(self) -> int:
        return EXIT_OK if self.passed or self.exit_zero else EXIT_GATE_FAILED

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "reasons": list(self.reasons), "exit_zero": self.exit_zero}


def evaluate_gate(
    bound: float,
    chance_error: float,
    *,
    max_bound: float | None,
    fail_if_vacuous: bool,
    exit_zero: bool,
) -> GateOutcome:
    """Compare the unrounded bound with the thresholds; the reasons print the exact numbers."""
    reasons = []
    if fail_if_vacuous and not bound < chance_error:
        reasons.append(
            f"the bound {bound!r} is vacuous: not below the chance error {chance_error!r}"
        )
    if max_bound is not None and bound > max_bound:
        reasons.append(f"the bound {bound!r} is above --max-bound {max_bound!r}")
    return GateOutcome(not reasons, tuple(reasons), exit_zero)


def gate_options(func: F) -> F:
    """--max-bound, --fail-if-vacuous, --exit-zero."""
    func = click.option(
        "--exit-zero",
        is_flag=True,
        help="Report only: exit 0 even when a gate fails (errors still exit non-zero).",
    )(func)
    func = click.option(
        "--fail-if-vacuous",
        is_flag=True,
        help="Exit 1 when the bound is not below chance error 1 − 1/K.",
    )(func)
    func = click.option(
        "--max-bound",
        type=float,
        default=None,
        callback=lambda ctx, param, value: (
            None if value is None else check_risk(value, "--max-bound")
        ),
        help="Exit 1 when the bound is above this value (compared unrounded).",
    )(func)
    return func
