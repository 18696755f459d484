"""Small frozen result objects: a bound's value with its inputs and named terms."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any


@dataclass(frozen=True)
class BoundResult:
    """An upper bound on a true risk, with everything that went into it.

    Attributes
    ----------
    value:
        The bound, at full float64 precision (already on the conservative side).
    method:
        Which inequality, e.g. ``"pac-bayes-kl"`` or ``"occam-binomial"``.
    empirical_risk:
        The empirical (or Monte-Carlo upper-bounded) risk the bound starts from.
    n:
        The number of examples (or independent draws) the empirical risk averages over.
    delta:
        The failure probability this bound alone spends.
    complexity_nats:
        KL(Q‖P) or the code length × ln 2, in nats (0 for a held-out bound).
    terms:
        Named intermediate quantities (log terms, right-hand sides, grid costs).
    """

    value: float
    method: str
    empirical_risk: float
    n: int
    delta: float
    complexity_nats: float = 0.0
    terms: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not math.isfinite(self.value):
            raise ValueError(f"bound value must be finite, got {self.value!r}")
        object.__setattr__(self, "terms", MappingProxyType(dict(self.terms)))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (plain floats; no NaN can occur since inputs are validated)."""
        return {
            "method": self.method,
            "value": float(self.value),
            "empirical_risk": float(self.empirical_risk),
            "n": int(self.n),
            "delta": float(self.delta),
            "complexity_nats": float(self.complexity_nats),
            "terms": {k: float(v) for k, v in self.terms.items()},
        }

    def __repr__(self) -> str:
        terms = ", ".join(f"{k}={v:.6g}" for k, v in self.terms.items())
        return (
            f"BoundResult(method={self.method!r}, value={self.value:.10g}, "
            f"empirical_risk={self.empirical_risk:.6g}, n={self.n}, delta={self.delta:.6g}, "
            f"complexity_nats={self.complexity_nats:.6g}, terms={{{terms}}})"
        )
