"""The model's buffers in a compressed message: floating-point ones coded compactly, integer
ones that the factory does not rebuild coded exactly (MATH.md §6, issue #13).

**Integer (and boolean) buffers**, in ``named_buffers`` order (BatchNorm's
``num_batches_tracked`` excepted: an eval-mode forward never reads it, the decoder keeps the
factory's): one bit each, 0 = the factory's value (costs nothing more), 1 = coded losslessly,
δ(count + 1) then δ(zigzag(v) + 1) per value. A checkpoint whose integer buffers hold data
(a memorised table) is certified, paying for every value, instead of being refused.

**Floating-point buffers**: one bit each, 0 = the factory's value (a fixed table, an
untouched statistic); the others are coded per *group*: the buffers sharing the last component
of their name (``running_mean`` of every BatchNorm, ``running_var`` of every BatchNorm, …), in
order of first appearance. A group whose values are all positive (variances) is coded in the
log₂ domain, otherwise linearly. The precision target is p = :data:`PRECISION_BITS`: max error
2^-p · max|v| (linear) or 2^-p in log₂ v (relative error ≤ 2^-p ln 2). Three codes meet it
(or are exact), and the shortest is written:

* ``fixed``: fixed point with step 2^e (the largest power of two ≤ twice the tolerance);
  the header holds e, the smallest integer q₀ and the width w; then w bits per value;
* ``codebook``: the fewest levels covering the values within the tolerance (greedy on the
  sorted values, which is optimal for a max-error target), the levels paid at float32, the
  level indices arithmetic-coded (adaptive KT, as the weights);
* ``raw``: float32 per value (exact for float32 buffers; wins only for one or two values).

Lossy coding is sound by construction: the certificate is about the decoded model and its
errors are counted on it; the report gives its disagreement with the checkpoint.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum
from typing import TypeVar

import numpy as np
import torch
from numpy.typing import NDArray
from torch import Tensor, nn

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

#: Relative precision of the floating-point buffer codes (see the module docstring): 2^-6,
#: finer than the weights' own quantization (L = 8 levels by default, 2^-3), so
#: the buffers are not what the decoded model loses accuracy to; about p + 1 bits a value.
PRECISION_BITS = 6
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
    LINEAR = "linear"
    LOG2 = "log2"


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

    def values(self) -> NDArray[np.float64]:
        """The decoded values (in the buffers' domain, not log₂)."""
        if self.scheme is FloatScheme.RAW:
            raw = self.symbols.astype(np.uint32).view(np.float32)
            return raw.astype(np.float64)
        if self.scheme is FloatScheme.FIXED:
            u = (self.symbols + self.offset).astype(np.float64) * 2.0**self.exponent
        else:
            assert self.levels is not None
            u = self.levels.astype(np.float64)[self.symbols]
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
        empty = not any(self.coded) and all(v is None for v in self.integers)
        return 1 if self.legacy is not None or empty else 2

    def write(self, w: BitWriter) -> None:
        if self.format_version == 1:
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
            _write_group(w, group)

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


def _write_group(w: BitWriter, g: FloatGroupCode) -> None:
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


# --- which buffers, and how they are coded -------------------------------------------------


def integer_buffers(module: nn.Module) -> list[tuple[str, Tensor]]:
    """The non-floating buffers the message covers (``num_batches_tracked`` excepted)."""
    exempt = {
        f"{name}.num_batches_tracked" if name else "num_batches_tracked"
        for name, mod in module.named_modules()
        if isinstance(mod, nn.modules.batchnorm._BatchNorm)
    }
    return [
        (n, b) for n, b in module.named_buffers() if not b.is_floating_point() and n not in exempt
    ]


def float_buffers(module: nn.Module) -> list[tuple[str, Tensor]]:
    """The floating-point buffers, in ``named_buffers`` order (complex ones refused)."""
    out = []
    for name, buf in module.named_buffers():
        if buf.is_complex():
            raise InvalidInputError(f"buffer {name} is complex; the message cannot code it")
        if buf.is_floating_point():
            out.append((name, buf))
    return out


def float_groups(module: nn.Module, coded: tuple[bool, ...] | None = None) -> list[list[Tensor]]:
    """The (coded) floating-point buffers grouped by the last component of their name."""
    named = float_buffers(module)
    groups: dict[str, list[Tensor]] = {}
    for i, (name, buf) in enumerate(named):
        if coded is None or coded[i]:
            groups.setdefault(name.rsplit(".", 1)[-1], []).append(buf)
    return list(groups.values())


def _group_values(buffers: list[Tensor]) -> NDArray[np.float64]:
    return torch.cat([b.detach().to("cpu", torch.float64).reshape(-1) for b in buffers]).numpy()


def _fixed(u: NDArray[np.float64], tol: float, domain: Domain) -> FloatGroupCode:
    exponent = math.floor(math.log2(2 * tol)) if tol > 0 else 0
    q = np.round(u / 2.0**exponent).astype(np.int64)
    offset = int(q.min())
    width = int(q.max() - offset).bit_length()
    return FloatGroupCode(FloatScheme.FIXED, domain, q - offset, exponent, offset, width)


def _codebook(u: NDArray[np.float64], tol: float, domain: Domain) -> FloatGroupCode | None:
    order = np.sort(u)
    centres, start = [], 0
    while start < order.size:  # greedy cover by intervals of width 2·tol: the fewest levels
        end = int(np.searchsorted(order, order[start] + 2 * tol, side="right"))
        centres.append(0.5 * (order[start] + order[end - 1]))
        start = end
    if len(centres) < 2:
        return None  # one level: the fixed-point code (width 0) is shorter anyway
    levels = np.unique(np.asarray(centres, dtype=np.float32))
    stored = levels.astype(np.float64)
    right = np.clip(np.searchsorted(stored, u), 1, stored.size - 1)
    symbols = np.where(u - stored[right - 1] <= stored[right] - u, right - 1, right)
    return FloatGroupCode(FloatScheme.CODEBOOK, domain, symbols.astype(np.int64), levels=levels)


def code_float_group(
    values: NDArray[np.float64], precision: int = PRECISION_BITS
) -> FloatGroupCode:
    """The shortest of the raw, fixed-point and codebook codes of one group (module docstring)."""
    raw_bits = values.astype(np.float32).view(np.uint32).astype(np.int64)
    candidates = [FloatGroupCode(FloatScheme.RAW, Domain.LINEAR, raw_bits)]
    finite = bool(np.all(np.isfinite(values)))
    if finite and values.size:
        log = bool(np.all(values > 0))
        u = np.log2(values) if log else values
        tol = 2.0**-precision * (1.0 if log else float(np.max(np.abs(values))))
        domain = Domain.LOG2 if log else Domain.LINEAR
        candidates.append(_fixed(u, tol, domain))
        book = _codebook(u, tol, domain) if tol > 0 else None
        if book is not None:
            candidates.append(book)
    return min(candidates, key=_bits)


def _bits(group: FloatGroupCode) -> int:
    w = BitWriter()
    _write_group(w, group)
    return len(w)


def encode_buffers(module: nn.Module, reference: nn.Module) -> BufferCode:
    """The buffers of ``module`` (the checkpoint); ``reference`` is the factory's build."""
    ref = dict(reference.named_buffers())

    def same(name: str, buf: Tensor) -> bool:
        other = ref.get(name)
        return (
            other is not None
            and other.shape == buf.shape
            and other.dtype == buf.dtype
            and torch.equal(other.cpu(), buf.cpu())
        )

    integers = tuple(
        None if same(name, buf) else buf.detach().cpu().to(torch.int64).reshape(-1).numpy()
        for name, buf in integer_buffers(module)
    )
    coded = tuple(not same(name, buf) for name, buf in float_buffers(module))
    floats = tuple(code_float_group(_group_values(g)) for g in float_groups(module, coded))
    return BufferCode(integers, coded, floats)


def decode_buffers(module: nn.Module, code: BufferCode) -> None:
    """Load ``code`` into ``module`` (a fresh factory build) in place; InvalidInputError when
    the code does not fit its buffers."""
    if code.legacy is not None:
        _decode_legacy(module, code.legacy)
        return
    ints, floats = integer_buffers(module), float_buffers(module)
    if len(code.integers) != len(ints) or len(code.coded) != len(floats):
        raise InvalidInputError(
            "this artifact's buffers do not fit the architecture's (another --arch or "
            "--arch-kwargs?)"
        )
    groups = float_groups(module, code.coded)
    sizes = [sum(b.numel() for b in g) for g in groups]
    if [g.symbols.size for g in code.floats] != sizes:
        raise InvalidInputError(
            "this artifact's buffers do not fit the architecture's (another --arch or "
            "--arch-kwargs?)"
        )
    with torch.no_grad():
        for (_, buf), values in zip(ints, code.integers, strict=True):
            if values is not None:
                if values.size != buf.numel():
                    raise InvalidInputError("this artifact's integer buffers do not fit the model")
                buf.copy_(torch.from_numpy(values).view_as(buf).to(buf.device, buf.dtype))
        for group, group_code in zip(groups, code.floats, strict=True):
            flat, offset = torch.from_numpy(group_code.values()), 0
            for buf in group:
                chunk = flat[offset : offset + buf.numel()].view_as(buf)
                buf.copy_(chunk.to(buf.device, buf.dtype))
                offset += buf.numel()


def _decode_legacy(module: nn.Module, raw: NDArray[np.float32]) -> None:
    buffers = [b for _, b in float_buffers(module)]
    if raw.size == 0:
        return  # nothing coded: every buffer is the factory's
    if raw.size != sum(b.numel() for b in buffers):
        raise InvalidInputError(
            "this artifact's buffers do not fit the architecture's (another --arch or "
            "--arch-kwargs?)"
        )
    flat, offset = torch.from_numpy(raw.copy()), 0
    with torch.no_grad():
        for buf in buffers:
            buf.copy_(flat[offset : offset + buf.numel()].view_as(buf).to(buf.device, buf.dtype))
            offset += buf.numel()
