"""Random projectors P (D × d) for θ = θ₀ + P·w, regenerated from a seed and never stored.

Li et al. (2018), "Measuring the intrinsic dimension of objective landscapes"; Lotfi et al.
(2022), "PAC-Bayes compression bounds so tight that they can explain generalization" (the
Kronecker projector). Every entry of P is a deterministic function of (kind, D, d, seed):
random numbers are drawn on the CPU from ``torch.Generator`` objects whose seeds are derived
by SHA-256 from (seed, label, block index), in float64 for the Kronecker factors, and only then
moved to the target device. Thread count and device do not change P.

Columns have unit (expected) norm, so ‖P w‖ ≈ ‖w‖ for every kind.

>>> p = make_projector("kronecker", D=10, d=3, seed=0)
>>> w, g = torch.randn(3, dtype=torch.float64), torch.randn(10, dtype=torch.float64)
>>> bool(torch.isclose(p.matvec(w).double() @ g, w @ p.rmatvec(g).double(), atol=1e-5))
True
"""

from __future__ import annotations

import hashlib
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from enum import Enum
from typing import ClassVar

import torch
from torch import Tensor

from pacbound.compressors.codebooks import parse_enum
from pacbound.errors import InvalidInputError

#: Elements of P generated at once by the dense projector (4 MiB in float32).
DENSE_CHUNK_ELEMENTS = 1 << 20
#: Columns per generator block of the sparse projector.
SPARSE_COLUMN_BLOCK = 1 << 16


class ProjectorKind(str, Enum):
    """Projector kinds; the message header names one by its index in this order."""

    KRONECKER = "kronecker"
    DENSE = "dense"
    SPARSE = "sparse"


def derive_seed(seed: int, *labels: int | str) -> int:
    """A 63-bit seed from (seed, labels…): SHA-256, identical on every platform."""
    digest = hashlib.sha256(repr((int(seed), *labels)).encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def cpu_generator(seed: int, *labels: int | str) -> torch.Generator:
    generator = torch.Generator(device="cpu")
    generator.manual_seed(derive_seed(seed, *labels))
    return generator


def check_dimensions(D: int, d: int) -> tuple[int, int]:
    for name, value in (("D", D), ("d", d)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InvalidInputError(f"{name} must be a positive integer, got {value!r}", param=name)
    if d > D:
        raise InvalidInputError(
            f"the subspace dimension d={d} exceeds the number of parameters D={D}; choose d ≤ D",
            param="d",
        )
    return D, d


@dataclass(frozen=True)
class ProjectorSpec:
    """Everything that determines P."""

    kind: ProjectorKind
    D: int
    d: int
    seed: int

    def to_dict(self) -> dict[str, object]:
        return {"kind": self.kind.value, "D": self.D, "d": self.d, "seed": self.seed}


class Projector(ABC):
    """A D × d linear map θ − θ₀ = P w with its exact transpose."""

    kind: ClassVar[ProjectorKind]

    def __init__(
        self,
        D: int,
        d: int,
        seed: int,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        self.D, self.d = check_dimensions(D, d)
        self.seed = int(seed)
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.dtype = dtype

    @abstractmethod
    def matvec(self, w: Tensor) -> Tensor:
        """P w: a length-D vector (differentiable in w)."""

    @abstractmethod
    def rmatvec(self, g: Tensor) -> Tensor:
        """Pᵀ g: a length-d vector."""

    @property
    @abstractmethod
    def memory_bytes(self) -> int:
        """Bytes held by the projector itself (not counting a matvec's output)."""

    def to_spec(self) -> ProjectorSpec:
        return ProjectorSpec(self.kind, self.D, self.d, self.seed)

    def materialize(self) -> Tensor:
        """The dense D × d matrix (for tests and small problems only)."""
        eye = torch.eye(self.d, dtype=self.dtype, device=self.device)
        return torch.stack([self.matvec(eye[j]) for j in range(self.d)], dim=1)

    def as_vector(self, vector: Tensor, length: int, name: str) -> Tensor:
        if vector.ndim != 1 or vector.shape[0] != length:
            raise InvalidInputError(
                f"{name} must be a vector of length {length}, got shape {tuple(vector.shape)}"
            )
        return vector.to(self.device, self.dtype)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(D={self.D}, d={self.d}, seed={self.seed})"


class DenseGaussianProjector(Projector):
    """P_ij ~ N(0, 1/D) i.i.d., generated block of rows by block of rows, never stored.

    Block c holds rows [c·r, (c+1)·r) with r = max(1, 2²⁰ // d) and is drawn from its own
    generator seeded with (seed, "dense", c). Memory O(max(d, 2²⁰)), time O(D d) per product.
    """

    kind = ProjectorKind.DENSE

    @property
    def rows_per_chunk(self) -> int:
        return max(1, DENSE_CHUNK_ELEMENTS // self.d)

    def _chunks(self) -> list[tuple[int, int]]:
        r = self.rows_per_chunk
        return [(start, min(start + r, self.D)) for start in range(0, self.D, r)]

    def _block(self, index: int, start: int, stop: int) -> Tensor:
        gen = cpu_generator(self.seed, "dense", index)
        block = torch.randn(stop - start, self.d, generator=gen, dtype=torch.float32)
        return (block / math.sqrt(self.D)).to(self.device, self.dtype)

    def matvec(self, w: Tensor) -> Tensor:
        w = self.as_vector(w, self.d, "w")
        parts = [self._block(i, a, b) @ w for i, (a, b) in enumerate(self._chunks())]
        return torch.cat(parts)

    def rmatvec(self, g: Tensor) -> Tensor:
        g = self.as_vector(g, self.D, "g")
        out = torch.zeros(self.d, dtype=self.dtype, device=self.device)
        for i, (a, b) in enumerate(self._chunks()):
            out = out + self._block(i, a, b).T @ g[a:b]
        return out

    @property
    def memory_bytes(self) -> int:
        return 0


class SparseProjector(Projector):
    """s nonzeros ±1/√s per column, rows drawn uniformly (with replacement): unit column norm.

    A sparse Johnson–Lindenstrauss matrix (Kane & Nelson 2014 style). Row indices and signs for
    columns [c·B, (c+1)·B) come from the generator (seed, "sparse", c), B = 2¹⁶. Stored as
    index/sign arrays: memory O(s d), time O(s d) per product.
    """

    kind = ProjectorKind.SPARSE

    def __init__(
        self,
        D: int,
        d: int,
        seed: int,
        *,
        nonzeros: int = 8,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__(D, d, seed, device=device, dtype=dtype)
        self.nonzeros = s = min(nonzeros, D)
        rows, signs = [], []
        for block, start in enumerate(range(0, d, SPARSE_COLUMN_BLOCK)):
            width = min(SPARSE_COLUMN_BLOCK, d - start)
            gen = cpu_generator(self.seed, "sparse", block)
            rows.append(torch.randint(0, D, (width, s), generator=gen))
            signs.append(torch.randint(0, 2, (width, s), generator=gen))
        self.rows = torch.cat(rows).to(self.device)
        values = (torch.cat(signs).to(torch.float64) * 2 - 1) / math.sqrt(s)
        self.values = values.to(self.device, dtype)

    def matvec(self, w: Tensor) -> Tensor:
        w = self.as_vector(w, self.d, "w")
        out = torch.zeros(self.D, dtype=self.dtype, device=self.device)
        return out.index_add(0, self.rows.reshape(-1), (self.values * w[:, None]).reshape(-1))

    def rmatvec(self, g: Tensor) -> Tensor:
        g = self.as_vector(g, self.D, "g")
        return (g[self.rows] * self.values).sum(dim=1)

    @property
    def memory_bytes(self) -> int:
        return self.rows.numel() * self.rows.element_size() + self.values.numel() * 4


def kronecker_shapes(D: int, d: int) -> tuple[int, int, int, int]:
    """Factor shapes (D_a, d_a, D_b, d_b) with D_a D_b ≥ D, d_a d_b ≥ d, d_a ≤ D_a, d_b ≤ D_b.

    D_a = ⌈√D⌉, D_b = ⌈D / D_a⌉, and likewise for d, so D_a d_a + D_b d_b ≤ 2(√D + 1)(√d + 1).
    """
    D, d = check_dimensions(D, d)
    big_a = math.isqrt(D - 1) + 1
    small_a = math.isqrt(d - 1) + 1
    big_b, small_b = -(-D // big_a), -(-d // small_a)
    if small_b > big_b:  # cannot happen for d ≤ D (checked over all D ≤ 3000 in the tests)
        raise AssertionError(f"no Kronecker shapes for D={D}, d={d}")
    return big_a, small_a, big_b, small_b


def _orthonormal(rows: int, cols: int, generator: torch.Generator) -> Tensor:
    """Haar-distributed orthonormal columns: QR of a Gaussian in float64, signs fixed by diag R."""
    q, r = torch.linalg.qr(torch.randn(rows, cols, generator=generator, dtype=torch.float64))
    return q * torch.where(torch.diagonal(r) < 0, -1.0, 1.0)


class KroneckerProjector(Projector):
    """P = first D rows and first d columns of A ⊗ B, with A, B orthonormal (D_a×d_a, D_b×d_b).

    With w zero-padded to d_a d_b and reshaped (row-major) to X ∈ R^{d_a×d_b},
    P w = vec(A X Bᵀ) truncated to its first D entries; Pᵀ g = vec(Aᵀ G B) truncated to d, with
    g zero-padded to G ∈ R^{D_a×D_b}. Truncating rows and padding columns are each other's
    transpose, so ``rmatvec`` is the exact transpose of ``matvec``. Columns have norm ≤ 1 (exactly
    1 before the row truncation). Memory O(√(D d)); time O(D √d + d √D) per product.
    """

    kind = ProjectorKind.KRONECKER

    def __init__(
        self,
        D: int,
        d: int,
        seed: int,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__(D, d, seed, device=device, dtype=dtype)
        self.shapes = big_a, small_a, big_b, small_b = kronecker_shapes(D, d)
        self.a = _orthonormal(big_a, small_a, cpu_generator(self.seed, "kronecker", "a"))
        self.b = _orthonormal(big_b, small_b, cpu_generator(self.seed, "kronecker", "b"))
        self.a = self.a.to(dtype).to(self.device)
        self.b = self.b.to(dtype).to(self.device)

    def matvec(self, w: Tensor) -> Tensor:
        w = self.as_vector(w, self.d, "w")
        _, small_a, _, small_b = self.shapes
        x = torch.nn.functional.pad(w, (0, small_a * small_b - self.d)).reshape(small_a, small_b)
        return ((self.a @ x) @ self.b.T).reshape(-1)[: self.D]

    def rmatvec(self, g: Tensor) -> Tensor:
        g = self.as_vector(g, self.D, "g")
        big_a, _, big_b, _ = self.shapes
        grid = torch.nn.functional.pad(g, (0, big_a * big_b - self.D)).reshape(big_a, big_b)
        return ((self.a.T @ grid) @ self.b).reshape(-1)[: self.d]

    def materialize(self) -> Tensor:
        """(A ⊗ B)[:D, :d], formed explicitly (small problems only)."""
        return torch.kron(self.a, self.b)[: self.D, : self.d]

    @property
    def memory_bytes(self) -> int:
        return (self.a.numel() + self.b.numel()) * self.a.element_size()


_KINDS: dict[ProjectorKind, type[Projector]] = {
    ProjectorKind.DENSE: DenseGaussianProjector,
    ProjectorKind.SPARSE: SparseProjector,
    ProjectorKind.KRONECKER: KroneckerProjector,
}


def make_projector(
    kind: ProjectorKind | str,
    *,
    D: int,
    d: int,
    seed: int,
    device: torch.device | str | None = None,
) -> Projector:
    """The projector of ``kind`` ("kronecker", "dense" or "sparse") for (D, d, seed)."""
    return _KINDS[parse_enum(ProjectorKind, kind, "projector")](D, d, seed, device=device)
