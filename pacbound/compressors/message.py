"""The compressed-model message: a prefix-free bitstream whose length is K(h) in the Occam bound.

Layout (MSB first; γ, δ are Elias codes, see :mod:`pacbound.compressors.coding`)::

    header           magic "PBCM" (32 bits), γ(version), γ(compressor kind index + 1)
    architecture     32-bit fingerprint of parameter/buffer names and shapes, δ(D)
    hyperparameters  [subspace only: γ(seed + 1), γ(projector kind index + 1), δ(d)],
                     δ(L), γ(codebook precision index + 1) [format 3: δ(G), G ≥ 2]
    codebook         L levels at the stored precision (big-endian IEEE); format 3: G such
                     codebooks, the i-th for the i-th parameter tensor (direct only)
    symbol_model     0 bits: the adaptive KT model is part of the decoder
    buffers          format 1: δ(number of floating buffer values + 1), each as float32;
                     format 2: integer buffers (factory's or coded exactly) and float
                     buffer groups coded compactly, see :mod:`pacbound.compressors.buffers`
    length_prefix    δ(number of bits of the symbol stream)
    symbols          arithmetic-coded quantized coordinates (d of them, or D for direct)
    padding          zeros up to a whole byte
    integrity        CRC-32 of all the preceding bytes

The "predeclared seed list" is 0, 1, 2, …: seed s costs |γ(s + 1)| bits. Kind, projector and
precision indices follow the order of their enums.

**Versions**: format 2 differs from format 1 only in the buffers part. A message is written
in format 1 when it has nothing there (no floating buffers, every integer buffer the
factory's), so a model without float buffers keeps its format-1 message and code length bit
for bit; format-1 artifacts with float32 buffers (pacbound before issue #13) are still read
and decode as they did. Format 3 is format 2 (buffers always in the format-2 layout) with
one codebook per parameter tensor (``tensor_codebooks``, direct messages only); a message
with one shared codebook is written in format 1 or 2 as before, so its bytes do not change.
The version is part of the prefix-free code, so the formats' codewords together still
satisfy Kraft.

**What is counted**: everything. ``code_length_bits`` is 8 × the byte length of the message,
including the magic, the padding and the CRC (which a decoder does not strictly need, but
counting them keeps K(h) equal to the size of the file anyone can check). The message is
prefix-free (every field is self-delimiting and the CRC has fixed width), so Kraft holds.
``breakdown()`` gives the bits of each part above; they sum to ``code_length_bits``.

Decoding is strict: a wrong CRC, a truncated stream, an out-of-range field, nonzero padding,
trailing bytes or a symbol stream that is not exactly the encoder's output raise
InvalidInputError; a wrong model is never returned.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from enum import Enum
from functools import cached_property
from typing import TypeVar

import numpy as np
from numpy.typing import NDArray

from pacbound.compressors.buffer_codes import BufferCode
from pacbound.compressors.codebooks import Codebook, CodebookPrecision
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
from pacbound.compressors.projectors import ProjectorKind
from pacbound.errors import InvalidInputError

MAGIC = b"PBCM"
#: Format versions this code reads; it writes the lowest that holds the message.
FORMAT_VERSIONS = (1, 2, 3)
#: Refuse headers announcing more parameters than this (a corrupted length, not a model).
MAX_PARAMETERS = 1 << 36
_CRC_BYTES = 4

E = TypeVar("E", bound=Enum)


class CompressorKind(str, Enum):
    """Compressors; the header names one by its index in this order."""

    SUBSPACE = "subspace"
    DIRECT = "direct"


def _index(member: Enum) -> int:
    return list(type(member)).index(member)


def _member(enum: type[E], index: int, what: str) -> E:
    members = list(enum)
    if not 0 <= index < len(members):
        raise InvalidInputError(f"the compressed message is corrupted: unknown {what} #{index}")
    return members[index]


@dataclass(frozen=True, eq=False)
class CompressedMessage:
    """A decodable description of one model. ``symbols`` has length d (subspace) or D (direct).

    ``tensor_codebooks`` (format 3, direct only): one codebook per parameter tensor, G ≥ 2,
    all with ``codebook``'s L and precision, ``codebook`` being the first; empty: ``codebook``
    is shared by every coordinate.
    """

    kind: CompressorKind
    architecture: int
    num_parameters: int
    codebook: Codebook
    symbols: NDArray[np.int64]
    buffers: BufferCode = field(default_factory=BufferCode)
    seed: int | None = None
    projector: ProjectorKind | None = None
    tensor_codebooks: tuple[Codebook, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "tensor_codebooks", tuple(self.tensor_codebooks))
        self._check_tensor_codebooks()
        symbols = np.ascontiguousarray(self.symbols, dtype=np.int64).ravel()
        object.__setattr__(self, "symbols", symbols)
        if not 1 <= self.num_parameters <= MAX_PARAMETERS or not 0 <= self.architecture < 2**32:
            raise InvalidInputError(f"bad message header (D={self.num_parameters})")
        if symbols.size and (symbols.min() < 0 or symbols.max() >= self.codebook.levels):
            raise InvalidInputError(f"symbols must lie in [0, {self.codebook.levels - 1}]")
        if self.kind is CompressorKind.SUBSPACE:
            if self.seed is None or self.seed < 0 or self.projector is None:
                raise InvalidInputError("a subspace message needs a seed ≥ 0 and a projector kind")
            if not 1 <= symbols.size <= self.num_parameters:
                raise InvalidInputError(
                    f"the subspace dimension d={symbols.size} must be in "
                    f"[1, D={self.num_parameters}]"
                )
        elif (
            self.seed is not None
            or self.projector is not None
            or symbols.size != self.num_parameters
        ):
            raise InvalidInputError("a direct message has D symbols and no seed or projector")

    def _check_tensor_codebooks(self) -> None:
        books = self.tensor_codebooks
        if not books:
            return
        if self.kind is not CompressorKind.DIRECT or len(books) < 2:
            raise InvalidInputError("per-tensor codebooks: a direct message with ≥ 2 tensors")
        if books[0] != self.codebook or any(
            (b.levels, b.precision) != (self.codebook.levels, self.codebook.precision)
            for b in books
        ):
            raise InvalidInputError("per-tensor codebooks must share L and the precision")
        if self.buffers.legacy is not None:
            raise InvalidInputError("format-1 buffers cannot go with per-tensor codebooks")

    @property
    def codebooks(self) -> tuple[Codebook, ...]:
        """Every codebook the message holds: the per-tensor ones, or the shared one."""
        return self.tensor_codebooks or (self.codebook,)

    @property
    def format_version(self) -> int:
        return 3 if self.tensor_codebooks else self.buffers.format_version

    @property
    def dimension(self) -> int:
        """d for a subspace message, D for a direct one."""
        return int(self.symbols.size)

    @cached_property
    def _encoded(self) -> tuple[bytes, dict[str, int]]:
        w, parts = BitWriter(), {}

        def mark(name: str, start: int) -> None:
            parts[name] = len(w) - start

        start = len(w)
        w.write_bits(np.unpackbits(np.frombuffer(MAGIC, dtype=np.uint8)).tolist())
        write_gamma(w, self.format_version)
        write_gamma(w, _index(self.kind) + 1)
        mark("header", start)
        start = len(w)
        w.write_uint(self.architecture, 32)
        write_delta(w, self.num_parameters)
        mark("architecture", start)
        start = len(w)
        if self.kind is CompressorKind.SUBSPACE:
            assert self.seed is not None and self.projector is not None
            write_gamma(w, self.seed + 1)
            write_gamma(w, _index(self.projector) + 1)
            write_delta(w, self.dimension)
        write_delta(w, self.codebook.levels)
        write_gamma(w, _index(self.codebook.precision) + 1)
        if self.tensor_codebooks:
            write_delta(w, len(self.tensor_codebooks))
        mark("hyperparameters", start)
        start = len(w)
        for book in self.codebooks:
            w.write_bits(np.unpackbits(np.frombuffer(book.to_bytes(), np.uint8)).tolist())
        mark("codebook", start)
        parts["symbol_model"] = 0
        start = len(w)
        self.buffers.write(w, layout=min(self.format_version, 2))
        mark("buffers", start)
        payload = arithmetic_encode(self.symbols, self.codebook.levels)
        start = len(w)
        write_delta(w, len(payload))
        mark("length_prefix", start)
        w.write_bits(payload)
        parts["symbols"] = len(payload)
        parts["padding"] = -len(w) % 8
        body = w.to_bytes()
        parts["integrity"] = 8 * _CRC_BYTES
        return body + zlib.crc32(body).to_bytes(_CRC_BYTES, "big"), parts

    def to_bytes(self) -> bytes:
        return self._encoded[0]

    @property
    def code_length_bits(self) -> int:
        """K(h): the whole message in bits (8 × its byte length)."""
        return 8 * len(self._encoded[0])

    def breakdown(self) -> dict[str, int]:
        """Bits per part (see the module docstring); the values sum to ``code_length_bits``."""
        return dict(self._encoded[1])

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CompressedMessage):
            return NotImplemented
        return self.to_bytes() == other.to_bytes()

    def __hash__(self) -> int:
        return hash(self.to_bytes())

    def __repr__(self) -> str:
        return (
            f"CompressedMessage(kind={self.kind.value}, D={self.num_parameters}, "
            f"dimension={self.dimension}, levels={self.codebook.levels}, "
            f"code_length_bits={self.code_length_bits})"
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> CompressedMessage:
        """Parse and verify a message; InvalidInputError on any corruption or truncation."""
        if len(data) < len(MAGIC) + _CRC_BYTES:
            raise InvalidInputError(f"the compressed message is truncated ({len(data)} bytes)")
        body, crc = data[:-_CRC_BYTES], int.from_bytes(data[-_CRC_BYTES:], "big")
        if zlib.crc32(body) != crc:
            raise InvalidInputError(
                "the compressed message is corrupted or truncated (CRC-32 mismatch)"
            )
        if body[: len(MAGIC)] != MAGIC:
            raise InvalidInputError("not a pacbound compressed message (bad magic bytes)")
        message = _parse_body(BitReader.from_bytes(body))
        if message.to_bytes() != data:  # canonical: re-encoding reproduces the exact bytes
            raise InvalidInputError("the compressed message is corrupted (it does not re-encode)")
        return message


def _parse_body(r: BitReader) -> CompressedMessage:
    r.pos = 8 * len(MAGIC)
    if (version := read_gamma(r)) not in FORMAT_VERSIONS:
        raise InvalidInputError(
            f"unsupported message format version {version} (this pacbound reads "
            f"{', '.join(map(str, FORMAT_VERSIONS))}): made by a newer pacbound?"
        )
    kind = _member(CompressorKind, read_gamma(r) - 1, "compressor kind")
    architecture = r.read_uint(32)
    num_parameters = read_delta(r)
    if num_parameters > MAX_PARAMETERS:
        raise InvalidInputError(f"the compressed message is corrupted (D={num_parameters})")
    seed, projector, dimension = None, None, num_parameters
    if kind is CompressorKind.SUBSPACE:
        seed = read_gamma(r) - 1
        projector = _member(ProjectorKind, read_gamma(r) - 1, "projector kind")
        dimension = read_delta(r)
        if dimension > num_parameters:
            raise InvalidInputError(f"corrupted message: d={dimension} > D={num_parameters}")
    levels = read_delta(r)
    precision = _member(CodebookPrecision, read_gamma(r) - 1, "codebook precision")
    count = read_delta(r) if version == 3 else 1
    r.require(count * levels * precision.bits)
    books = tuple(
        Codebook.from_bytes(r.read_bytes(levels * precision.bits), precision) for _ in range(count)
    )
    buffers = BufferCode.read(r, version)
    payload_bits = read_delta(r)
    r.require(payload_bits)
    symbols = arithmetic_decode(
        BitReader(r.bits, start=r.pos, end=r.pos + payload_bits), dimension, levels
    )
    return CompressedMessage(
        kind,
        architecture,
        num_parameters,
        books[0],
        symbols,
        buffers,
        seed,
        projector,
        books if version == 3 else (),
    )
