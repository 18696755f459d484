"""CI gates: turn a computed bound into exit code 0 or 1 (and a message saying why)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import click

from pacbound.bounds.validation import check_risk
from pacbound.errors import EXIT_GATE_FAILED, EXIT_OK
from pacbound.verify.fields import FieldCheck

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class GateOutcome:
    """The gate's verdict and the thresholds it was computed with (recorded in the report,
    so ``pacbound verify`` can recompute it from the re-derived bound)."""

    passed: bool
    reasons: tuple[str, ...]
    exit_zero: bool
    max_bound: float | None = None
    fail_if_vacuous: bool = False

    @property
    def exit_code(self) -> int:
        return EXIT_OK if self.passed or self.exit_zero else EXIT_GATE_FAILED

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "reasons": list(self.reasons),
            "exit_zero": self.exit_zero,
            "max_bound": self.max_bound,
            "fail_if_vacuous": self.fail_if_vacuous,
        }


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
    return GateOutcome(not reasons, tuple(reasons), exit_zero, max_bound, fail_if_vacuous)


def _argv_value(argv: list[str], flag: str) -> str | None:
    for i, token in enumerate(argv):
        if token == flag and i + 1 < len(argv):
            return argv[i + 1]
        if token.startswith(flag + "="):
            return token[len(flag) + 1 :]
    return None


def recorded_gate_options(gate: dict[str, Any], argv: list[str]) -> dict[str, Any]:
    """The thresholds a report's gate was computed with: from the ``gate`` block, or for a
    report written before the block recorded them, from its command line."""
    if "max_bound" in gate and "fail_if_vacuous" in gate:
        max_bound = gate["max_bound"]
        fail_if_vacuous = gate["fail_if_vacuous"]
    else:
        text = _argv_value(argv, "--max-bound")
        try:
            max_bound = None if text is None else float(text)
        except ValueError:
            max_bound = None
        fail_if_vacuous = "--fail-if-vacuous" in argv
    return {
        "max_bound": max_bound,
        "fail_if_vacuous": bool(fail_if_vacuous),
        "exit_zero": bool(gate["exit_zero"]),
    }


def recheck_gate(
    gate: dict[str, Any], argv: list[str], bound: float, chance_error: float
) -> tuple[GateOutcome, list[FieldCheck]]:
    """The report's gate recomputed from a re-derived ``bound`` and ``chance_error`` with the
    recorded thresholds: (the recomputed :class:`GateOutcome`, its field checks)."""

    outcome = evaluate_gate(bound, chance_error, **recorded_gate_options(gate, argv))
    checks = [
        FieldCheck("gate.passed", gate["passed"], outcome.passed),
        FieldCheck("gate.reasons", list(gate["reasons"]), list(outcome.reasons)),
    ]
    return outcome, checks


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
