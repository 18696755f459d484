"""The bits of the buffers part of a compressed message (see :mod:`pacbound.compressors.buffers`
for what is coded and why).

Format 1: δ(number of floating values + 1), each as float32. Format 2 (and 3, whose buffers
part is format 2's): δ(number of integer
buffers + 1), per integer buffer a bit (1 = coded) and, when coded, δ(count + 1) and
δ(zigzag(v) + 1) per value; δ(number of floating buffers + 1) and a bit each (1 = coded);
δ(number of groups + 1) and per group δ(count + 1), γ(scheme + 1) and
raw: 32 bits a value | fixed: γ(domain + 1), δ(zigzag(e) + 1), δ(zigzag(q₀) + 1), γ(w + 1),
w bits a value | codebook: γ(domain + 1), δ(L), L float32 levels, δ(payload bits), the
arithmetic-coded indices.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import TypeVar

import numpy as np
from numpy.typing import NDArray

from pacbound.compressors.coding import (
    BitReader,
    BitWriter,
    arithmetic_decode,
    arithmetic_encode,
    read_delta,
    read_gamma,
    write_delta,
    write_gamma,
)
from pacbound.errors import InvalidInputError

#: Refuse a header announcing more buffer values than this (a corrupted count).
MAX_VALUES = 1 << 36

E = TypeVar("E", bound=Enum)
_INT64 = 2**63 - 1


class FloatScheme(str, Enum):
    """Codes of a float group; the message names one by its index in this order."""

    RAW = "raw"
    FIXED = "fixed"
    CODEBOOK = "codebook"


class Domain(str, Enum):
    """What the fixed-point or codebook values u code: v itself, log₂ v, or v / s with s a
    per-value scale the decoder knows (a BatchNorm mean over its channel's decoded std)."""

    LINEAR = "linear"
    LOG2 = "log2"
    STANDARD = "standard"


@dataclass(frozen=True, eq=False)
class FloatGroupCode:
    """One float group as coded. ``symbols`` are the fixed-point integers minus q₀ (fixed),
    the level indices (codebook) or the float32 bit patterns (raw)."""

    scheme: FloatScheme
    domain: Domain
    symbols: NDArray[np.int64]
    exponent: int = 0
    offset: int = 0
    width: int = 0
    levels: NDArray[np.float32] | None = None

    def values(self, scale: NDArray[np.float64] | None = None) -> NDArray[np.float64]:
        """The decoded values (in the buffers' domain, not log₂ or standardized); a
        ``standard`` group needs the ``scale`` it was coded with."""
        if self.scheme is FloatScheme.RAW:
            raw = self.symbols.astype(np.uint32).view(np.float32)
            return raw.astype(np.float64)
        if self.scheme is FloatScheme.FIXED:
            u = (self.symbols + self.offset).astype(np.float64) * 2.0**self.exponent
        else:
            assert self.levels is not None
            u = self.levels.astype(np.float64)[self.symbols]
        if self.domain is Domain.STANDARD:
            if scale is None or scale.size != u.size:
                raise InvalidInputError(
                    "the compressed message is corrupted (a standardized buffer group where "
                    "the architecture has no BatchNorm variance to scale it)"
                )
            return u * scale
        return np.exp2(u) if self.domain is Domain.LOG2 else u


@dataclass(frozen=True, eq=False)
class BufferCode:
    """The buffers part of a message: ``integers`` (None = the factory's value),
    ``coded`` (per floating buffer: False = the factory's value) and ``floats`` (one code per
    group of the coded ones); or, read from a format-1 message, ``legacy``: every floating
    buffer value as float32 (or none: all the factory's; integer buffers the factory's)."""

    integers: tuple[NDArray[np.int64] | None, ...] = ()
    coded: tuple[bool, ...] = ()
    floats: tuple[FloatGroupCode, ...] = ()
    legacy: NDArray[np.float32] | None = None

    @property
    def format_version(self) -> int:
        """1 (float32 values, written only when there is nothing else to code, so a model
        without float buffers keeps its format-1 message bit for bit) or 2."""
        empty = not any(self.coded) and not self.floats and all(v is None for v in self.integers)
        return 1 if self.legacy is not None or empty else 2

    def write(self, w: BitWriter, layout: int | None = None) -> None:
        """Write the buffers part in ``layout`` 1 or 2 (default: :attr:`format_version`; a
        format-3 message writes its buffers in layout 2 even when they are empty)."""
        layout = self.format_version if layout is None else layout
        if layout == 2 and self.legacy is not None:
            raise InvalidInputError("format-1 (legacy) buffers cannot be written in layout 2")
        if layout == 1:
            legacy = np.zeros(0, np.float32) if self.legacy is None else self.legacy
            write_delta(w, legacy.size + 1)
            w.write_bits(np.unpackbits(legacy.astype(">f4").view(np.uint8)).tolist())
            return
        write_delta(w, len(self.integers) + 1)
        for values in self.integers:
            w.write_bit(values is not None)
            if values is not None:
                write_delta(w, values.size + 1)
                for v in values.tolist():
                    write_delta(w, _zigzag(v) + 1)
        write_delta(w, len(self.coded) + 1)
        w.write_bits(int(c) for c in self.coded)
        write_delta(w, len(self.floats) + 1)
        for group in self.floats:
            write_group(w, group)

    @classmethod
    def read(cls, r: BitReader, version: int) -> BufferCode:
        if version == 1:
            count = _count(r)
            raw = np.frombuffer(r.read_bytes(32 * count), dtype=">f4").astype(np.float32)
            return cls(legacy=raw)
        integers: list[NDArray[np.int64] | None] = []
        for _ in range(_count(r)):
            if r.read_bit():
                size = _count(r)
                values = [_unzigzag(read_delta(r) - 1) for _ in range(size)]
                if any(abs(v) > _INT64 for v in values):
                    raise InvalidInputError("the compressed message is corrupted (an integer)")
                integers.append(np.array(values, dtype=np.int64))
            else:
                integers.append(None)
        coded = tuple(bool(r.read_bit()) for _ in range(_count(r)))
        floats = tuple(_read_group(r) for _ in range(_count(r)))
        return cls(tuple(integers), coded, floats)


def _count(r: BitReader) -> int:
    n = read_delta(r) - 1
    if n > MAX_VALUES:
        raise InvalidInputError(f"the compressed message is corrupted (count {n})")
    return n


def _zigzag(v: int) -> int:
    return 2 * v if v >= 0 else -2 * v - 1


def _unzigzag(z: int) -> int:
    return z // 2 if z % 2 == 0 else -(z + 1) // 2


def write_group(w: BitWriter, g: FloatGroupCode) -> None:
    write_delta(w, g.symbols.size + 1)
    write_gamma(w, list(FloatScheme).index(g.scheme) + 1)
    if g.scheme is FloatScheme.RAW:
        for s in g.symbols.tolist():
            w.write_uint(s, 32)
        return
    write_gamma(w, list(Domain).index(g.domain) + 1)
    if g.scheme is FloatScheme.FIXED:
        write_delta(w, _zigzag(g.exponent) + 1)
        write_delta(w, _zigzag(g.offset) + 1)
        write_gamma(w, g.width + 1)
        for s in g.symbols.tolist():
            w.write_uint(s, g.width)
        return
    assert g.levels is not None
    write_delta(w, g.levels.size)
    for s in g.levels.view(np.uint32).tolist():
        w.write_uint(s, 32)
    payload = arithmetic_encode(g.symbols, g.levels.size)
    write_delta(w, len(payload))
    w.write_bits(payload)


def _member(enum: type[E], index: int) -> E:
    members = list(enum)
    if not 0 <= index < len(members):
        raise InvalidInputError(
            f"the compressed message is corrupted: unknown buffer code #{index}"
        )
    return members[index]


def _read_group(r: BitReader) -> FloatGroupCode:
    size = _count(r)
    scheme = _member(FloatScheme, read_gamma(r) - 1)
    if scheme is FloatScheme.RAW:
        raw = np.array([r.read_uint(32) for _ in range(size)], dtype=np.int64)
        return FloatGroupCode(scheme, Domain.LINEAR, raw)
    domain = _member(Domain, read_gamma(r) - 1)
    if scheme is FloatScheme.FIXED:
        exponent = _unzigzag(read_delta(r) - 1)
        offset = _unzigzag(read_delta(r) - 1)
        width = read_gamma(r) - 1
        if width > 62 or abs(exponent) > 1000 or abs(offset) > 2**62:
            raise InvalidInputError("the compressed message is corrupted (fixed-point width)")
        symbols = np.array([r.read_uint(width) for _ in range(size)], dtype=np.int64)
        return FloatGroupCode(scheme, domain, symbols, exponent, offset, width)
    count = read_delta(r)
    r.require(32 * count)
    levels = np.array([r.read_uint(32) for _ in range(count)], dtype=np.uint32).view(np.float32)
    payload_bits = read_delta(r)
    r.require(payload_bits)
    symbols = arithmetic_decode(
        BitReader(r.bits, start=r.pos, end=r.pos + payload_bits), size, count
    )
    r.pos += payload_bits
    return FloatGroupCode(scheme, domain, symbols, levels=levels)


def group_bits(group: FloatGroupCode) -> int:
    """The bits :func:`write_group` writes for ``group``."""
    w = BitWriter()
    write_group(w, group)
    return len(w)
