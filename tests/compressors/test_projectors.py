"""Projectors: exact transposes, bit-identical regeneration, unit columns, √(Dd) memory."""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest
import torch

from pacbound.compressors import KroneckerProjector, ProjectorKind, make_projector
from pacbound.compressors import projectors as projectors_module
from pacbound.compressors.projectors import kronecker_shapes
from pacbound.errors import InvalidInputError

KINDS = list(ProjectorKind)


@pytest.fixture
def restore_threads() -> Iterator[None]:
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("D", "d"), [(1, 1), (37, 11), (120, 120), (1000, 29)])
def test_rmatvec_is_the_exact_transpose(kind: ProjectorKind, D: int, d: int) -> None:
    p = make_projector(kind, D=D, d=d, seed=5)
    generator = torch.Generator().manual_seed(0)
    w, g = torch.randn(d, generator=generator), torch.randn(D, generator=generator)
    dense = p.materialize().double()
    torch.testing.assert_close(p.matvec(w).double(), dense @ w.double(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(p.rmatvec(g).double(), dense.T @ g.double(), atol=1e-5, rtol=1e-5)
    lhs, rhs = float(p.matvec(w).double() @ g.double()), float(w.double() @ p.rmatvec(g).double())
    assert lhs == pytest.approx(rhs, rel=1e-5, abs=1e-5)


def test_dense_chunks_join_seamlessly(monkeypatch: pytest.MonkeyPatch) -> None:
    whole = make_projector("dense", D=50, d=7, seed=1).materialize()
    monkeypatch.setattr(projectors_module, "DENSE_CHUNK_ELEMENTS", 20)  # 2 rows per chunk
    p = make_projector("dense", D=50, d=7, seed=1)
    assert len(p._chunks()) == 25  # type: ignore[attr-defined]
    w, g = torch.randn(7, dtype=torch.float64), torch.randn(50, dtype=torch.float64)
    chunked = p.materialize()
    assert chunked.shape == whole.shape
    assert float(p.matvec(w).double() @ g) == pytest.approx(float(w @ p.rmatvec(g).double()))


@pytest.mark.parametrize("kind", KINDS)
def test_same_seed_gives_bit_identical_P_for_any_thread_count(
    kind: ProjectorKind, restore_threads: None
) -> None:
    w = torch.randn(64, generator=torch.Generator().manual_seed(1))
    torch.set_num_threads(1)
    one = make_projector(kind, D=5000, d=64, seed=7)
    p1, y1 = one.materialize(), one.matvec(w)
    torch.set_num_threads(2)
    two = make_projector(kind, D=5000, d=64, seed=7)
    assert torch.equal(p1, two.materialize())
    assert torch.equal(y1, two.matvec(w))
    assert not torch.equal(p1, make_projector(kind, D=5000, d=64, seed=8).materialize())


@pytest.mark.parametrize("kind", KINDS)
def test_columns_have_unit_expected_norm(kind: ProjectorKind) -> None:
    norms = make_projector(kind, D=4096, d=64, seed=2).materialize().double().norm(dim=0)
    assert float(norms.square().mean()) == pytest.approx(1.0, abs=0.05)


def test_kronecker_columns_are_orthonormal_without_truncation() -> None:
    p = KroneckerProjector(D=100, d=9, seed=0)  # 10 × 10 rows, 3 × 3 columns: no padding
    gram = p.materialize().double().T @ p.materialize().double()
    torch.testing.assert_close(gram, torch.eye(9, dtype=torch.float64), atol=1e-6, rtol=0)


def test_kronecker_shapes_exist_for_every_d_up_to_D() -> None:
    for D in range(1, 301):
        for d in range(1, D + 1):
            big_a, small_a, big_b, small_b = kronecker_shapes(D, d)
            assert big_a * big_b >= D and small_a * small_b >= d
            assert small_a <= big_a and small_b <= big_b


@pytest.mark.parametrize(("D", "d"), [(10**4, 10**2), (10**6, 10**4), (10**7, 10**5)])
def test_kronecker_memory_grows_like_sqrt_Dd(D: int, d: int) -> None:
    big_a, small_a, big_b, small_b = kronecker_shapes(D, d)
    assert big_a * small_a + big_b * small_b <= 2 * (math.sqrt(D) + 1) * (math.sqrt(d) + 1)
    if D <= 10**6:
        p = KroneckerProjector(D, d, seed=0)
        assert p.memory_bytes == 4 * (big_a * small_a + big_b * small_b)


def test_bad_dimensions_are_refused() -> None:
    with pytest.raises(InvalidInputError, match=r"d=11 exceeds .* D=10"):
        make_projector("kronecker", D=10, d=11, seed=0)
    with pytest.raises(InvalidInputError, match="d must be a positive integer"):
        make_projector("dense", D=10, d=0, seed=0)
    with pytest.raises(InvalidInputError, match="projector must be one of kronecker, dense"):
        make_projector("gaussian", D=10, d=1, seed=0)
    with pytest.raises(InvalidInputError, match="length 3"):
        make_projector("sparse", D=10, d=3, seed=0).matvec(torch.zeros(4))
