"""The one place where bits become nats (KL is in nats everywhere else)."""

from __future__ import annotations

import math

from pacbound.bounds.validation import check_kl

LN2 = math.log(2.0)


def bits_to_nats(bits: float, name: str = "bits") -> float:
    """A code length in bits as nats: K·ln 2, rounded up by one ulp.

    >>> round(bits_to_nats(1.0), 12)
    0.69314718056
    """
    k = check_kl(bits, name)
    return math.nextafter(k * LN2, math.inf) if k > 0 else 0.0


def nats_to_bits(nats: float) -> float:
    """Nats as bits, for display only."""
    return nats / LN2
