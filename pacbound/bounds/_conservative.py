"""Tiny helpers that push a computed float to the safe side."""

from __future__ import annotations

import math


def up(x: float, ulps: int = 4) -> float:
    """``x`` moved ``ulps`` floats toward +inf (absorbs the rounding of a few operations)."""
    for _ in range(ulps):
        x = math.nextafter(x, math.inf)
    return x


def clip_unit(x: float) -> float:
    """A risk bound never needs to exceed 1 (the trivial bound)."""
    return min(x, 1.0)
