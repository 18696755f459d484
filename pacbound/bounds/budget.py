"""δ accounting as data: a certificate's failure probability, part by part.

Every certificate is a union of events (the PAC-Bayes or Occam inequality, the Monte-Carlo
estimate, each searched grid). The sum of their δ's is the failure probability; a
:class:`DeltaBudget` records the parts and checks that they add up to the stated total.

The sum is compared **exactly** (as rationals, :class:`fractions.Fraction`): parts that add up
to more than the total by any amount, even one ulp, are refused, since the certificate would
then hold with probability below 1 − δ. A sum *below* the total by float rounding only
(:data:`BUDGET_RTOL`) is accepted: it spends less than stated, which is safe. Code that
divides δ therefore rounds each part **down** (:meth:`DeltaBudget.split`,
:func:`remaining_delta`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from pacbound.bounds.validation import check_count, check_delta
from pacbound.errors import InvalidInputError

#: How far *below* the total the parts may sum (float rounding only); above it, nothing.
BUDGET_RTOL = 1e-9


def _float_at_most(value: Fraction) -> float:
    """The largest float not above ``value``."""
    x = float(value)  # correctly rounded: at most one ulp above
    return math.nextafter(x, -math.inf) if Fraction(x) > value else x


def remaining_delta(total: float, *spent: float) -> float:
    """What is left of ``total`` after the ``spent`` parts, rounded down so that the parts
    and the remainder sum to at most ``total`` exactly.

    >>> remaining_delta(0.07842546823972447, 0.015685093647944896)  # plain − rounds up here
    0.06274037459177957
    """
    return _float_at_most(Fraction(total) - sum(map(Fraction, spent), Fraction(0)))


@dataclass(frozen=True)
class DeltaPart:
    """One spent part of δ.

    ``grid_size`` > 1 means the part is shared by a union bound over that many alternatives
    (a prior-scale grid, say): each alternative gets ``delta / grid_size``, and the cost of
    the search is ln(grid_size) nats on top of ln(1/delta).
    """

    name: str
    delta: float
    grid_size: int = 1
    description: str = ""

    def __post_init__(self) -> None:
        check_delta(self.delta, f"delta part {self.name!r}")
        check_count(self.grid_size, f"grid size of delta part {self.name!r}")

    @property
    def per_choice(self) -> float:
        """δ for each alternative of the grid, rounded down, so that the grid_size shares
        sum to at most ``delta`` exactly (δ/G rounded to nearest can sum above it: δ = 0.05,
        G = 7)."""
        return _float_at_most(Fraction(self.delta) / self.grid_size)

    @property
    def union_cost_nats(self) -> float:
        """ln(grid_size): what the search over the grid costs, in nats."""
        return math.log(self.grid_size)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "delta": self.delta,
            "grid_size": self.grid_size,
            "per_choice": self.per_choice,
            "description": self.description,
        }


@dataclass(frozen=True)
class DeltaBudget:
    """A total δ and the named parts it is spent on; the parts must sum to the total.

    >>> b = DeltaBudget.split(0.05, {"pac-bayes": 0.9, "monte-carlo": 0.1})
    >>> b.part("monte-carlo").delta
    0.005
    >>> round(b.spent, 12)
    0.05
    """

    total: float
    parts: tuple[DeltaPart, ...]

    def __post_init__(self) -> None:
        check_delta(self.total, "delta")
        object.__setattr__(self, "parts", tuple(self.parts))
        if not self.parts:
            raise InvalidInputError("a delta budget needs at least one part", param="delta")
        names = [p.name for p in self.parts]
        if len(set(names)) != len(names):
            raise InvalidInputError(f"delta parts must have unique names, got {names}")
        gap = Fraction(self.total) - sum((Fraction(p.delta) for p in self.parts), Fraction(0))
        if gap < 0 or float(gap) > BUDGET_RTOL * self.total:
            detail = ", ".join(f"{p.name}={p.delta!r}" for p in self.parts)
            if gap < 0:
                problem = f"sum to more than the total delta {self.total!r} (by {-float(gap):.3g})"
                fix = "round the parts down so that they add up to at most delta"
            else:
                problem = f"sum to {self.total - float(gap)!r}, not the total delta {self.total!r}"
                fix = "make the parts add up to delta"
            raise InvalidInputError(f"delta parts ({detail}) {problem}; {fix}", param="delta")

    @classmethod
    def split(
        cls,
        total: float,
        weights: Mapping[str, float],
        *,
        grid_sizes: Mapping[str, int] | None = None,
        descriptions: Mapping[str, str] | None = None,
    ) -> DeltaBudget:
        """Split ``total`` in proportion to ``weights`` (any positive numbers).

        Each part is its exact share rounded down, so the parts never sum above ``total``.
        """
        check_delta(total, "delta")
        if not weights:
            raise InvalidInputError("a delta budget needs at least one part", param="delta")
        for name, w in weights.items():
            if not (isinstance(w, (int, float)) and math.isfinite(w) and w > 0):
                raise InvalidInputError(
                    f"delta weight for {name!r} must be a positive number, got {w!r}",
                    param="delta",
                )
        norm = sum((Fraction(w) for w in weights.values()), Fraction(0))
        grid_sizes = grid_sizes or {}
        descriptions = descriptions or {}
        parts = tuple(
            DeltaPart(
                name,
                _float_at_most(Fraction(total) * Fraction(w) / norm),
                grid_sizes.get(name, 1),
                descriptions.get(name, ""),
            )
            for name, w in weights.items()
        )
        return cls(total, parts)

    @property
    def spent(self) -> float:
        return math.fsum(p.delta for p in self.parts)

    def part(self, name: str) -> DeltaPart:
        for p in self.parts:
            if p.name == name:
                return p
        valid = ", ".join(p.name for p in self.parts)
        raise KeyError(f"no delta part named {name!r}; the parts are: {valid}")

    def to_dict(self) -> dict[str, Any]:
        return {"total": self.total, "parts": [p.to_dict() for p in self.parts]}
