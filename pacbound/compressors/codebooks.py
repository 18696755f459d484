"""Scalar quantization: codebooks with L levels, nearest-level symbols, and QAT fine-tuning.

A codebook is stored at an explicit precision (float16, float32 or float64), and that stored
value *is* the level: :func:`dequantize` returns exactly the stored numbers, so the decoded model
is the one the message describes and the codebook costs ``L × precision bits`` in the code
length (MATH.md §6). :class:`TensorCodebooks` gives each parameter tensor its own codebook
(tensors of very different scales, e.g. a stem convolution, 3×3 convolutions and BatchNorm's
γ ≈ 1, share no levels); :func:`quantize`, :func:`dequantize` and the straight-through
functions take either.

>>> book = uniform_codebook(np.array([-1.0, 0.2, 1.0]), 3)
>>> book.values, quantize(np.array([-0.9, 0.4, 0.6]), book).tolist()
((-1.0, 0.0, 1.0), [0, 1, 2])
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import TypeVar

import numpy as np
import torch
from numpy.typing import ArrayLike, NDArray
from torch import Tensor

from pacbound.errors import InvalidInputError

#: The most levels a codebook may have (the message and the coder handle any L; this only
#: catches a typo before a 10⁹-entry codebook is allocated).
MAX_LEVELS = 1 << 24

E = TypeVar("E", bound=Enum)


class CodebookPrecision(str, Enum):
    """How each codebook entry is stored; the header names it by its index in this order."""

    FLOAT16 = "float16"
    FLOAT32 = "float32"
    FLOAT64 = "float64"

    @property
    def bits(self) -> int:
        return np.dtype(self.value).itemsize * 8

    @property
    def dtype(self) -> np.dtype[np.floating]:
        return np.dtype(self.value).newbyteorder(">")


class CodebookKind(str, Enum):
    UNIFORM = "uniform"
    KMEANS = "kmeans"


def parse_enum(enum: type[E], value: object, name: str) -> E:
    """``value`` as a member of ``enum``; an unknown choice lists the valid ones."""
    try:
        return enum(value)
    except ValueError:
        valid = ", ".join(str(m.value) for m in enum)
        raise InvalidInputError(
            f"{name} must be one of {valid}; got {value!r}", param=name
        ) from None


def check_levels(levels: int) -> int:
    if isinstance(levels, bool) or not isinstance(levels, int) or not 2 <= levels <= MAX_LEVELS:
        raise InvalidInputError(
            f"levels must be an integer in [2, {MAX_LEVELS}] (one level carries no "
            f"information to fit), got {levels!r}",
            param="levels",
        )
    return levels


@dataclass(frozen=True)
class Codebook:
    """L levels in ascending order, each exactly representable at ``precision``."""

    values: tuple[float, ...]
    precision: CodebookPrecision = CodebookPrecision.FLOAT32

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "precision", parse_enum(CodebookPrecision, self.precision, "precision")
        )
        check_levels(len(self.values))
        stored = self.to_array()
        if not np.all(np.isfinite(stored)):
            raise InvalidInputError(
                f"codebook levels must be finite at {self.precision.value}; use a wider "
                "precision or rescale the weights",
                param="precision",
            )
        if np.any(np.diff(stored) < 0):
            raise InvalidInputError("codebook levels must be in ascending order")
        object.__setattr__(self, "values", tuple(float(v) for v in stored))

    @classmethod
    def from_floats(cls, values: ArrayLike, precision: CodebookPrecision) -> Codebook:
        """Round float64 levels to ``precision`` and sort them."""
        with np.errstate(over="ignore"):  # overflow becomes ±inf, refused in __post_init__
            rounded = np.asarray(values, dtype=np.float64).astype(precision.value)
        rounded = rounded.astype(np.float64)
        return cls(tuple(np.sort(rounded).tolist()), precision)

    @property
    def levels(self) -> int:
        return len(self.values)

    @property
    def bits(self) -> int:
        """The stored size: L × precision bits."""
        return self.levels * self.precision.bits

    def to_array(self) -> NDArray[np.float64]:
        """The levels after a round trip through the stored precision, as float64."""
        return (
            np.asarray(self.values, dtype=np.float64)
            .astype(self.precision.value)
            .astype(np.float64)
        )

    def to_bytes(self) -> bytes:
        return np.asarray(self.values, dtype=self.precision.dtype).tobytes()

    @classmethod
    def from_bytes(cls, data: bytes, precision: CodebookPrecision) -> Codebook:
        stored = np.frombuffer(data, dtype=precision.dtype).astype(np.float64)
        return cls(tuple(stored.tolist()), precision)


@dataclass(frozen=True)
class TensorCodebooks:
    """One codebook per consecutive segment of a flat vector: ``books[i]`` quantizes the
    ``sizes[i]`` values of parameter tensor i. The sizes come from the architecture (the
    message holds only the books); every book has the same L and precision.

    >>> one, two = Codebook((0.0, 1.0)), Codebook((-10.0, 10.0))
    >>> quantize([0.2, 0.9, -3.0], TensorCodebooks((one, two), (2, 1))).tolist()
    [0, 1, 0]
    """

    books: tuple[Codebook, ...]
    sizes: tuple[int, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "books", tuple(self.books))
        object.__setattr__(self, "sizes", tuple(int(s) for s in self.sizes))
        if not self.books or len(self.books) != len(self.sizes) or min(self.sizes) < 1:
            raise InvalidInputError(
                f"need one codebook per tensor of ≥ 1 values; got {len(self.books)} codebooks "
                f"for sizes {self.sizes}"
            )
        if len({(b.levels, b.precision) for b in self.books}) != 1:
            raise InvalidInputError("per-tensor codebooks must share L and the precision")

    @property
    def levels(self) -> int:
        return self.books[0].levels

    @property
    def precision(self) -> CodebookPrecision:
        return self.books[0].precision

    @property
    def bits(self) -> int:
        """The stored size: G × L × precision bits."""
        return sum(b.bits for b in self.books)


AnyCodebook = Codebook | TensorCodebooks


def _pieces(codebook: AnyCodebook, size: int) -> list[tuple[Codebook, slice]]:
    """(codebook, slice of the flat vector) pairs covering ``size`` values."""
    if isinstance(codebook, Codebook):
        return [(codebook, slice(0, size))]
    if sum(codebook.sizes) != size:
        raise InvalidInputError(
            f"the per-tensor codebooks cover {sum(codebook.sizes)} values, not {size}"
        )
    stops = np.cumsum(codebook.sizes).tolist()
    return [
        (book, slice(stop - n, stop))
        for book, n, stop in zip(codebook.books, codebook.sizes, stops, strict=True)
    ]


def _as_float64(values: ArrayLike | Tensor) -> NDArray[np.float64]:
    if isinstance(values, Tensor):
        values = values.detach().to("cpu", torch.float64).numpy()
    array = np.asarray(values, dtype=np.float64).ravel()
    if array.size == 0:
        raise InvalidInputError("cannot fit a codebook to an empty vector")
    if not np.all(np.isfinite(array)):
        raise InvalidInputError("cannot quantize NaN or infinite weights")
    return array


def uniform_codebook(
    values: ArrayLike | Tensor,
    levels: int,
    *,
    precision: CodebookPrecision | str = CodebookPrecision.FLOAT32,
) -> Codebook:
    """L equally spaced levels from min(values) to max(values)."""
    array, levels = _as_float64(values), check_levels(levels)
    prec = parse_enum(CodebookPrecision, precision, "precision")
    return Codebook.from_floats(np.linspace(array.min(), array.max(), levels), prec)


def kmeans_codebook(
    values: ArrayLike | Tensor,
    levels: int,
    *,
    seed: int = 0,
    iters: int = 50,
    max_samples: int = 1 << 20,
    precision: CodebookPrecision | str = CodebookPrecision.FLOAT32,
) -> Codebook:
    """1-D k-means (Lloyd) in float64: levels minimising Σ (v − nearest level)².

    Deterministic: starts from the quantiles (i + ½)/L, and when there are more than
    ``max_samples`` values fits on a subsample drawn with ``seed``. In 1-D the clusters are
    intervals, so each iteration is a sort-free ``searchsorted`` plus prefix sums. An empty
    cluster keeps its level. Stops early when no level moves.
    """
    array, levels = _as_float64(values), check_levels(levels)
    prec = parse_enum(CodebookPrecision, precision, "precision")
    if array.size > max_samples:
        array = np.random.default_rng(seed).choice(array, size=max_samples, replace=False)
    data = np.sort(array)
    prefix = np.concatenate([[0.0], np.cumsum(data)])
    centers = np.quantile(data, (np.arange(levels) + 0.5) / levels)
    for _ in range(iters):
        cuts = np.searchsorted(data, (centers[1:] + centers[:-1]) / 2, side="right")
        starts, stops = np.concatenate([[0], cuts]), np.concatenate([cuts, [data.size]])
        sizes = stops - starts
        sums = prefix[stops] - prefix[starts]
        updated = np.where(sizes > 0, sums / np.maximum(sizes, 1), centers)
        if np.array_equal(updated, centers):
            break
        centers = np.sort(updated)
    return Codebook.from_floats(centers, prec)


def quantize(values: ArrayLike | Tensor, codebook: AnyCodebook) -> NDArray[np.int64]:
    """The index of the nearest level for each value (ties go to the lower level)."""
    array = _as_float64(values)
    out = np.empty(array.size, dtype=np.int64)
    for book, part in _pieces(codebook, array.size):
        stored = book.to_array()
        out[part] = np.searchsorted((stored[1:] + stored[:-1]) / 2, array[part], side="left")
    return out


def dequantize(symbols: ArrayLike, codebook: AnyCodebook) -> NDArray[np.float64]:
    """The stored level of each symbol (exact: the values the message holds)."""
    index = np.asarray(symbols, dtype=np.int64)
    if index.size and (index.min() < 0 or index.max() >= codebook.levels):
        raise InvalidInputError(f"symbols must lie in [0, {codebook.levels - 1}]")
    flat, out = index.ravel(), np.empty(index.size, dtype=np.float64)
    for book, part in _pieces(codebook, flat.size):
        out[part] = book.to_array()[flat[part]]
    return out.reshape(index.shape)


def straight_through(w: Tensor, codebook: AnyCodebook) -> Tensor:
    """Nearest-level rounding whose gradient is the identity (the straight-through estimator)."""
    parts = []
    for book, part in _pieces(codebook, w.numel()):
        levels = torch.as_tensor(book.to_array(), dtype=w.dtype, device=w.device)
        piece = w.reshape(-1)[part]
        index = torch.bucketize(piece.detach(), (levels[1:] + levels[:-1]) / 2, right=False)
        parts.append(levels[index])
    rounded = torch.cat(parts).view_as(w)
    return w + (rounded - w).detach()


def quantization_aware_finetune(
    w: Tensor,
    loss: Callable[[Tensor], Tensor],
    codebook: AnyCodebook,
    *,
    steps: int = 200,
    lr: float = 1e-3,
) -> Tensor:
    """Fine-tune ``w`` so that its *quantized* version has low loss (Adam, straight-through).

    Each step evaluates ``loss(q(w))`` where q rounds to the nearest level in the forward pass
    and passes gradients through unchanged (Bengio et al. 2013). The codebook is held fixed, so
    quantize the result with the same codebook. STE iterates oscillate, so this returns the
    iterate (the start included) whose quantized loss was the lowest: it is never worse than
    ``w`` after quantization.
    """
    if steps < 0 or not lr > 0:
        raise InvalidInputError(f"need steps ≥ 0 and lr > 0, got steps={steps}, lr={lr}")
    param = w.detach().clone().requires_grad_(True)
    optimizer = torch.optim.Adam([param], lr=lr)
    best, best_value = param.detach().clone(), float("inf")
    for step in range(steps + 1):
        optimizer.zero_grad()
        value = loss(straight_through(param, codebook))
        if float(value.detach()) < best_value:
            best, best_value = param.detach().clone(), float(value.detach())
        if step == steps:
            break
        value.backward()
        optimizer.step()
    return best
