"""Bits: a bit writer/reader, Elias γ/δ integer codes and an adaptive arithmetic coder.

Everything a compressed model's message contains is written through these (MATH.md §6):
hyperparameters as prefix-free Elias codes, raw fixed-width fields (the codebook at its stored
precision), and the quantized coordinates arithmetic-coded under an adaptive
Krichevsky–Trofimov (KT) model,

    p_t(x) = (c_t(x) + 1/2) / (t + L/2)          (c_t(x): occurrences of x among the first t),

which the decoder rebuilds from the symbols it has already decoded: the model costs no bits.
The coder is the integer arithmetic coder of Witten, Neal & Cleary (1987) with 62-bit registers
and underflow ("pending bit") handling; its output is at most 2 bits longer than the ideal
adaptive code length −Σ_t log₂ p_t(x_t), plus a rounding loss below 2⁻⁵⁰ bit per symbol.
Its codewords are prefix-free for a known symbol count: any continuation of a codeword decodes
to the same symbols.

>>> w = BitWriter()
>>> write_gamma(w, 2); write_delta(w, 10); w.to_string()
'01000100010'
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np
from numpy.typing import NDArray

from pacbound.errors import InvalidInputError

#: Register width of the arithmetic coder (Python integers, so no overflow can occur).
PRECISION = 62
_FULL = (1 << PRECISION) - 1
_HALF = 1 << (PRECISION - 1)
_QUARTER = 1 << (PRECISION - 2)
_THREE_QUARTERS = _HALF + _QUARTER
#: The longest Elias-coded integer a reader accepts (a corrupted run of zeros stops here).
MAX_INTEGER_BITS = 64


class BitWriter:
    """An append-only sequence of bits, most significant bit first within each field."""

    def __init__(self) -> None:
        self.bits: list[int] = []

    def __len__(self) -> int:
        return len(self.bits)

    def write_bit(self, bit: int) -> None:
        self.bits.append(bit & 1)

    def write_uint(self, value: int, width: int) -> None:
        """``value`` as exactly ``width`` bits (0 ≤ value < 2^width)."""
        if not 0 <= value < (1 << width) or width < 0:
            raise ValueError(f"{value} does not fit in {width} bits")
        self.bits.extend((value >> i) & 1 for i in range(width - 1, -1, -1))

    def write_bits(self, bits: Iterable[int]) -> None:
        self.bits.extend(int(b) & 1 for b in bits)

    def to_bytes(self) -> bytes:
        """The bits packed into bytes, the last one padded with zeros."""
        return np.packbits(np.asarray(self.bits, dtype=np.uint8)).tobytes()

    def to_string(self) -> str:
        return "".join(map(str, self.bits))


class BitReader:
    """Reads bits from ``bits[start:end]``; reading past the end raises InvalidInputError."""

    def __init__(self, bits: Sequence[int], *, start: int = 0, end: int | None = None) -> None:
        self.bits = bits
        self.pos = start
        self.end = len(bits) if end is None else end

    @classmethod
    def from_bytes(cls, data: bytes) -> BitReader:
        return cls(np.unpackbits(np.frombuffer(data, dtype=np.uint8)).tolist())

    @property
    def remaining(self) -> int:
        return self.end - self.pos

    def require(self, count: int) -> None:
        if count > self.remaining:
            raise InvalidInputError(
                f"the compressed message is truncated: needed {count} more bits at bit "
                f"{self.pos}, only {self.remaining} left"
            )

    def read_bit(self) -> int:
        self.require(1)
        bit = self.bits[self.pos]
        self.pos += 1
        return bit

    def read_bytes(self, nbits: int) -> bytes:
        """The next ``nbits`` bits (a multiple of 8 in practice) packed into bytes."""
        self.require(nbits)
        chunk = np.asarray(self.bits[self.pos : self.pos + nbits], dtype=np.uint8)
        self.pos += nbits
        return np.packbits(chunk).tobytes()

    def read_uint(self, width: int) -> int:
        self.require(width)
        value = 0
        for bit in self.bits[self.pos : self.pos + width]:
            value = (value << 1) | bit
        self.pos += width
        return value


def write_gamma(writer: BitWriter, n: int) -> None:
    """Elias γ code of n ≥ 1: ⌊log₂ n⌋ zeros, then n in binary (γ(1)='1', γ(2)='010')."""
    if n < 1:
        raise ValueError(f"Elias codes need an integer ≥ 1, got {n}")
    width = n.bit_length()
    writer.write_uint(0, width - 1)
    writer.write_uint(n, width)


def read_gamma(reader: BitReader) -> int:
    zeros = 0
    while reader.read_bit() == 0:
        zeros += 1
        if zeros >= MAX_INTEGER_BITS:
            raise InvalidInputError("the compressed message is corrupted: an integer is too long")
    return (1 << zeros) | reader.read_uint(zeros)


def write_delta(writer: BitWriter, n: int) -> None:
    """Elias δ code of n ≥ 1: γ(bit length of n), then n without its leading 1 bit."""
    if n < 1:
        raise ValueError(f"Elias codes need an integer ≥ 1, got {n}")
    width = n.bit_length()
    write_gamma(writer, width)
    writer.write_uint(n - (1 << (width - 1)), width - 1)


def read_delta(reader: BitReader) -> int:
    width = read_gamma(reader)
    if width > MAX_INTEGER_BITS:
        raise InvalidInputError("the compressed message is corrupted: an integer is too long")
    return (1 << (width - 1)) | reader.read_uint(width - 1)


def gamma_length(n: int) -> int:
    """|γ(n)| = 2⌊log₂ n⌋ + 1 bits."""
    return 2 * n.bit_length() - 1


def delta_length(n: int) -> int:
    """|δ(n)| = |γ(⌊log₂ n⌋ + 1)| + ⌊log₂ n⌋ bits."""
    return gamma_length(n.bit_length()) + n.bit_length() - 1


class _KTModel:
    """Adaptive KT counts in integers: weight(x) = 2c(x) + 1, total = 2t + L (a Fenwick tree)."""

    def __init__(self, levels: int) -> None:
        self.levels = levels
        self.weights = [1] * levels
        self.total = levels
        self.tree = [0] * (levels + 1)
        for i in range(1, levels + 1):  # O(L) build: each node holds its own range's sum
            self.tree[i] += 1
            parent = i + (i & -i)
            if parent <= levels:
                self.tree[parent] += self.tree[i]
        self.top = 1 << (levels.bit_length() - 1)

    def cumulative(self, x: int) -> int:
        """Σ weight(y) over y < x."""
        total, i = 0, x
        while i > 0:
            total += self.tree[i]
            i -= i & -i
        return total

    def find(self, target: int) -> tuple[int, int]:
        """The symbol x with cumulative(x) ≤ target < cumulative(x + 1), and cumulative(x)."""
        pos, rest, step = 0, target, self.top
        while step:
            nxt = pos + step
            if nxt <= self.levels and self.tree[nxt] <= rest:
                pos = nxt
                rest -= self.tree[nxt]
            step >>= 1
        return pos, target - rest

    def update(self, x: int) -> None:
        self.weights[x] += 2
        self.total += 2
        i = x + 1
        while i <= self.levels:
            self.tree[i] += 2
            i += i & -i


def _check_levels(levels: int) -> None:
    if levels < 1:
        raise InvalidInputError(f"the alphabet needs at least one symbol, got {levels}")


def arithmetic_encode(symbols: Sequence[int] | NDArray[np.integer], levels: int) -> list[int]:
    """The bits of the KT-adaptive arithmetic code of ``symbols`` ∈ {0, …, levels−1}."""
    _check_levels(levels)
    values = np.asarray(symbols, dtype=np.int64)
    if values.size and (values.min() < 0 or values.max() >= levels):
        raise InvalidInputError(f"symbols must lie in [0, {levels - 1}]")
    model, out = _KTModel(levels), []
    low, high, pending = 0, _FULL, 0
    for x in values.tolist():
        span, total = high - low + 1, model.total
        cum = model.cumulative(x)
        high = low + span * (cum + model.weights[x]) // total - 1
        low = low + span * cum // total
        while True:
            if high < _HALF:
                out.append(0)
                out.extend([1] * pending)
                pending = 0
            elif low >= _HALF:
                out.append(1)
                out.extend([0] * pending)
                pending = 0
                low -= _HALF
                high -= _HALF
            elif low >= _QUARTER and high < _THREE_QUARTERS:
                pending += 1
                low -= _QUARTER
                high -= _QUARTER
            else:
                break
            low, high = 2 * low, 2 * high + 1
        model.update(x)
    first = (
        0 if low < _QUARTER else 1
    )  # two bits (plus pending) select a quarter inside [low, high]
    out.append(first)
    out.extend([1 - first] * (pending + 1))
    return out


def arithmetic_decode(reader: BitReader, count: int, levels: int) -> NDArray[np.int64]:
    """Decode ``count`` symbols; bits past the reader's end read as zeros (any continuation works).

    Raises InvalidInputError when the bits cannot be a codeword (a corrupted stream).
    """
    _check_levels(levels)
    model = _KTModel(levels)
    bits, pos, end = reader.bits, reader.pos, reader.end

    def next_bit() -> int:
        nonlocal pos
        pos += 1
        return bits[pos - 1] if pos <= end else 0

    value = 0
    for _ in range(PRECISION):
        value = (value << 1) | next_bit()
    low, high = 0, _FULL
    out = np.empty(count, dtype=np.int64)
    for t in range(count):
        span, total = high - low + 1, model.total
        target = ((value - low + 1) * total - 1) // span
        if not 0 <= target < total:
            raise InvalidInputError("the compressed message is corrupted: bad symbol stream")
        x, cum = model.find(target)
        high = low + span * (cum + model.weights[x]) // total - 1
        low = low + span * cum // total
        while True:
            if high < _HALF:
                pass
            elif low >= _HALF:
                low, high, value = low - _HALF, high - _HALF, value - _HALF
            elif low >= _QUARTER and high < _THREE_QUARTERS:
                low, high, value = low - _QUARTER, high - _QUARTER, value - _QUARTER
            else:
                break
            low, high, value = 2 * low, 2 * high + 1, 2 * value + next_bit()
        model.update(x)
        out[t] = x
    return out


def ideal_adaptive_bits(symbols: Sequence[int] | NDArray[np.integer], levels: int) -> float:
    """−Σ_t log₂ p_t(x_t) under the KT model: the length the arithmetic coder approaches."""
    counts = np.zeros(levels, dtype=np.int64)
    total = 0.0
    for t, x in enumerate(np.asarray(symbols, dtype=np.int64).tolist()):
        total -= math.log2((2 * counts[x] + 1) / (2 * t + levels))
        counts[x] += 1
    return total
