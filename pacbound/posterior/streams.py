"""Counter-based random streams: every draw is keyed by what it is, never by how it is run.

The noise of a per-example weight draw is a function of **(seed, purpose, pass, example
index, tensors)** only: not of the batch size, the memory budget (``--max-memory``), the
number of processes or the rank that evaluates the example. A Monte-Carlo error count is
then the same integer however the examples are batched, chunked or sharded (issue #14).

How (MATH.md §3, §10): the examples are cut into fixed aligned blocks, block ``b`` holding
examples ``[b·a, (b+1)·a)``. The noise of one group of tensors (a layer's weight and bias,
drawn together) for block ``b`` is drawn at once, shape ``(a, *shape)`` per tensor in the
group's order, from a generator whose whole state is derived from a hash of
``(seed, purpose, pass, "block", b, group)``; an evaluation that needs some rows of a block
draws the whole block and keeps its rows (a block split between two batches is drawn twice,
identically). ``a`` is the largest power of two ≤ :data:`BLOCK_EXAMPLES` whose block holds
at most :data:`NOISE_BLOCK_ELEMENTS` elements, a constant of the group; batches (and the
processes' shards of whole batches) whose size is a multiple of :data:`BLOCK_EXAMPLES` hold
whole blocks, so no block is drawn twice. Per-batch draws (one θ per batch of B examples)
are keyed by the batch index (:meth:`DrawKey.batch_noise`).

Distinct keys give independent standard normal streams: on CUDA the 64-bit Philox seed is
the key's hash; on the CPU the whole 19968-bit state of the Mersenne Twister is derived from
a 128-bit hash (a plain ``manual_seed`` keeps 32 bits only, which would make two of the
~10⁵–10⁶ keys of a large run collide).
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from dataclasses import dataclass, replace
from math import prod

import numpy as np
import torch
from torch import Tensor

#: Examples per noise block (a power of two); batches of a multiple of it hold whole blocks.
BLOCK_EXAMPLES = 64

#: A noise block holds at most this many elements (fewer examples per block for a group
#: whose draws are larger than ``NOISE_BLOCK_ELEMENTS // BLOCK_EXAMPLES``).
NOISE_BLOCK_ELEMENTS = 1 << 24

Shape = Sequence[int]


def block_rows(elements: int) -> int:
    """Examples per noise block of a group of ``elements`` noise elements per example: the
    largest power of two ≤ :data:`BLOCK_EXAMPLES` whose block holds at most
    :data:`NOISE_BLOCK_ELEMENTS` elements (at least 1)."""
    rows = BLOCK_EXAMPLES
    while rows > 1 and rows * elements > NOISE_BLOCK_ELEMENTS:
        rows //= 2
    return rows


def _digest(parts: tuple[int | str, ...]) -> bytes:
    for part in parts:
        if not isinstance(part, (int, str)) or isinstance(part, bool):
            raise TypeError(f"a draw key holds ints and strings, not {part!r}")
    return hashlib.blake2b(repr(parts).encode(), digest_size=16).digest()


#: Byte offset and count of the Mersenne Twister words in a CPU generator's state
#: (``CPUGeneratorImplState``: seed, left, seeded, next, then 624 words stored as uint64).
_MT_OFFSET, _MT_WORDS = 24, 624


def _cpu_template() -> np.ndarray | None:
    """A fresh CPU generator state whose word layout is the one described above (``None``
    if this torch lays it out otherwise: the noise is then drawn with NumPy)."""
    state = torch.Generator().manual_seed(0).get_state().numpy().copy()
    if state.size < _MT_OFFSET + 8 * _MT_WORDS:
        return None
    words = state[_MT_OFFSET : _MT_OFFSET + 8 * _MT_WORDS].view(np.uint64)
    # MT19937's initialisation from seed 0: x₀ = 0, x₁ = 1, x₂ = 1812433253·(1 ⊕ 0) + 2
    if (int(words[0]), int(words[1]), int(words[2])) != (0, 1, 1812433255):
        return None
    return state


_CPU_TEMPLATE = _cpu_template()


def keyed_generator(parts: tuple[int | str, ...], device: torch.device) -> torch.Generator | None:
    """A generator whose state is a function of ``parts`` only (``None`` on a CPU whose
    generator state cannot be set word by word: use :func:`keyed_normals`)."""
    digest = _digest(parts)
    if device.type != "cpu":
        return torch.Generator(device=device).manual_seed(int.from_bytes(digest[:8], "little"))
    if _CPU_TEMPLATE is None:
        return None
    words = random.Random(int.from_bytes(digest, "little")).getrandbits(32 * _MT_WORDS)
    state = _CPU_TEMPLATE.copy()
    mt = state[_MT_OFFSET : _MT_OFFSET + 8 * _MT_WORDS].view(np.uint64)
    mt[:] = np.frombuffer(words.to_bytes(4 * _MT_WORDS, "little"), dtype=np.uint32)
    generator = torch.Generator()
    generator.set_state(torch.from_numpy(state))
    return generator


def keyed_normals(
    parts: tuple[int | str, ...],
    shapes: Sequence[Shape],
    like: Tensor,
    out: Sequence[Tensor] | None = None,
) -> list[Tensor]:
    """Standard normal tensors of ``shapes`` (in this order), on ``like``'s device and dtype,
    from the stream keyed by ``parts`` (written into ``out`` when given)."""
    generator = keyed_generator(parts, like.device)
    if generator is None:  # NumPy's PCG64 from the 128-bit key
        rng = np.random.Generator(np.random.PCG64(int.from_bytes(_digest(parts), "little")))
        values = [torch.from_numpy(rng.standard_normal(tuple(s))) for s in shapes]
        drawn = [v.to(device=like.device, dtype=like.dtype) for v in values]
        if out is not None:
            for target, value in zip(out, drawn, strict=True):
                target.copy_(value)
            return list(out)
        return drawn
    if out is not None:
        for target in out:
            torch.randn(target.shape, generator=generator, out=target)
        return list(out)
    return [
        torch.randn(tuple(s), generator=generator, device=like.device, dtype=like.dtype)
        for s in shapes
    ]


@dataclass(frozen=True)
class DrawKey:
    """Where one evaluation's draws come from: the stream (``seed``, ``purpose``), the pass
    over the data, and the index of the batch's first example in the data set."""

    seed: int
    purpose: str
    pass_index: int = 0
    first_example: int = 0

    def at(self, first_example: int) -> DrawKey:
        """The same pass, for a batch that starts at example ``first_example``."""
        return replace(self, first_example=first_example)

    def _parts(self, *rest: int | str) -> tuple[int | str, ...]:
        return (self.seed, self.purpose, self.pass_index, *rest)

    def example_noise(
        self, group: str, shapes: Sequence[Shape], first: int, rows: int, like: Tensor
    ) -> list[Tensor]:
        """Noise ``(rows, *shape)`` per shape for examples ``first … first + rows − 1`` of
        the data set (global indices): the rows of their aligned blocks (module doc)."""
        a = block_rows(sum(prod(s) for s in shapes))
        outs = [torch.empty((rows, *s), device=like.device, dtype=like.dtype) for s in shapes]
        last = first + rows
        for block in range(first // a, -(-last // a)):
            lo, hi = max(first, block * a), min(last, (block + 1) * a)
            part = self._parts("block", block, group)
            targets = [o[lo - first : hi - first] for o in outs]
            if hi - lo == a:  # a whole block: drawn in place
                keyed_normals(part, [(a, *s) for s in shapes], like, out=targets)
                continue
            drawn = keyed_normals(part, [(a, *s) for s in shapes], like)
            for target, noise in zip(targets, drawn, strict=True):
                target.copy_(noise[lo - block * a : hi - block * a])
        return outs

    def batch_noise(self, batch: int, label: str, shape: Shape, like: Tensor) -> Tensor:
        """The noise of tensor ``label`` for the per-batch draw of batch ``batch``."""
        return keyed_normals(self._parts("batch", batch, label), [shape], like)[0]


class DrawStream:
    """The stream of one purpose of a run (``seed``, ``purpose``): each pass over data takes
    the next pass index (:meth:`next_pass`), as a generator would advance."""

    def __init__(self, seed: int, purpose: str) -> None:
        self.seed = int(seed)
        self.purpose = purpose
        self.passes = 0

    def next_pass(self) -> DrawKey:
        key = DrawKey(self.seed, self.purpose, self.passes)
        self.passes += 1
        return key

    @classmethod
    def from_generator(cls, generator: torch.Generator | None, purpose: str) -> DrawStream:
        """A fresh stream seeded by one draw of ``generator`` (``None``: torch's global one),
        for callers that hold a sequential generator."""
        device = generator.device if generator is not None else torch.device("cpu")
        seed = torch.randint(0, 1 << 62, (1,), generator=generator, device=device)
        return cls(int(seed), purpose)

    def __repr__(self) -> str:
        return f"DrawStream(seed={self.seed}, purpose={self.purpose!r}, passes={self.passes})"
