"""δ accounting as data: a certificate's failure probability, part by part.

Every certificate is a union of events (the PAC-Bayes or Occam inequality, the Monte-Carlo
estimate, each searched grid). The sum of their δ's is the failure probability; a
:class:`DeltaBudget` records the parts and checks that they add up to the stated total.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pacbound.bounds.validation import check_count, check_delta
from pacbound.errors import InvalidInputError

#: Relative tolerance for "the parts sum to the total" (float rounding only).
BUDGET_RTOL = 1e-9


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
        """δ for each alternative of the grid."""
        return self.delta / self.grid_size

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
        spent = math.fsum(p.delta for p in self.parts)
        if abs(spent - self.total) > BUDGET_RTOL * self.total:
            detail = ", ".join(f"{p.name}={p.delta:g}" for p in self.parts)
            raise InvalidInputError(
                f"delta parts ({detail}) sum to {spent:.12g}, not the total delta "
                f"{self.total:g}; make the parts add up to delta",
                param="delta",
            )

    @classmethod
    def split(
        cls,
        total: float,
        weights: Mapping[str, float],
        *,
        grid_sizes: Mapping[str, int] | None = None,
        descriptions: Mapping[str, str] | None = None,
    ) -> DeltaBudget:
        """Split ``total`` in proportion to ``weights`` (any positive numbers)."""
        check_delta(total, "delta")
        if not weights:
            raise InvalidInputError("a delta budget needs at least one part", param="delta")
        for name, w in weights.items():
            if not (isinstance(w, (int, float)) and math.isfinite(w) and w > 0):
                raise InvalidInputError(
                    f"delta weight for {name!r} must be a positive number, got {w!r}",
                    param="delta",
                )
        norm = math.fsum(weights.values())
        grid_sizes = grid_sizes or {}
        descriptions = descriptions or {}
        parts = tuple(
            DeltaPart(name, total * w / norm, grid_sizes.get(name, 1), descriptions.get(name, ""))
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
