"""Codebooks and quantization: stored precision, nearest levels, k-means vs uniform, QAT."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pacbound.compressors import (
    Codebook,
    CodebookPrecision,
    dequantize,
    kmeans_codebook,
    quantization_aware_finetune,
    quantize,
    uniform_codebook,
)
from pacbound.errors import InvalidInputError


def _distortion(values: np.ndarray, book: Codebook) -> float:
    return float(np.mean((values - dequantize(quantize(values, book), book)) ** 2))


@pytest.mark.parametrize("levels", [1, 0, -3])
def test_fewer_than_two_levels_are_refused(levels: int) -> None:
    values = np.linspace(-1, 1, 10)
    with pytest.raises(InvalidInputError, match="levels must be an integer in"):
        uniform_codebook(values, levels)
    with pytest.raises(InvalidInputError, match="levels must be an integer in"):
        kmeans_codebook(values, levels)
    with pytest.raises(InvalidInputError, match="levels must be an integer in"):
        Codebook((0.5,) * max(levels, 0))


def test_kmeans_beats_uniform_on_gaussian_data() -> None:
    values = np.random.default_rng(0).standard_normal(20_000)
    for levels in (4, 8, 16):
        uniform = _distortion(values, uniform_codebook(values, levels))
        kmeans = _distortion(values, kmeans_codebook(values, levels, seed=0))
        assert kmeans < 0.7 * uniform


def test_kmeans_matches_the_lloyd_max_quantizer_for_a_gaussian() -> None:
    # Max (1960), Table I: the optimal 4-level quantizer of N(0, 1) has distortion 0.1175.
    values = np.random.default_rng(1).standard_normal(200_000)
    book = kmeans_codebook(values, 4, seed=0, iters=200)
    assert _distortion(values, book) == pytest.approx(0.1175, abs=0.003)
    np.testing.assert_allclose(book.values, [-1.510, -0.4528, 0.4528, 1.510], atol=0.03)


def test_kmeans_is_deterministic_for_a_seed() -> None:
    values = np.random.default_rng(2).standard_normal(5000)
    a = kmeans_codebook(values, 8, seed=3, max_samples=1000)
    assert a == kmeans_codebook(values, 8, seed=3, max_samples=1000)
    assert a != kmeans_codebook(values, 8, seed=4, max_samples=1000)


def test_quantize_picks_the_nearest_level() -> None:
    values = np.random.default_rng(3).uniform(-2, 2, 1000)
    book = kmeans_codebook(values, 7)
    brute = np.argmin(np.abs(values[:, None] - book.to_array()[None, :]), axis=1)
    np.testing.assert_array_equal(quantize(values, book), brute)
    np.testing.assert_array_equal(quantize(torch.from_numpy(values), book), brute)


@pytest.mark.parametrize("precision", list(CodebookPrecision))
def test_levels_are_the_stored_values(precision: CodebookPrecision) -> None:
    book = uniform_codebook(np.array([0.0, 1.0 / 3.0]), 5, precision=precision)
    stored = np.linspace(0, 1 / 3, 5).astype(precision.value).astype(np.float64)
    np.testing.assert_array_equal(book.to_array(), stored)
    assert Codebook.from_bytes(book.to_bytes(), precision) == book
    assert len(book.to_bytes()) * 8 == book.bits == 5 * precision.bits
    np.testing.assert_array_equal(dequantize([4, 0], book), stored[[4, 0]])


def test_bad_codebooks_are_refused() -> None:
    with pytest.raises(InvalidInputError, match="finite at float16"):
        uniform_codebook(np.array([0.0, 1e6]), 4, precision="float16")
    with pytest.raises(InvalidInputError, match="precision must be one of float16"):
        uniform_codebook(np.array([0.0, 1.0]), 4, precision="bfloat16")
    with pytest.raises(InvalidInputError, match="NaN"):
        kmeans_codebook(np.array([0.0, np.nan]), 2)
    with pytest.raises(InvalidInputError, match="symbols must lie in"):
        dequantize([4], uniform_codebook(np.array([0.0, 1.0]), 4))


def test_quantization_aware_finetuning_lowers_the_quantized_loss() -> None:
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(200, 40, generator=generator, dtype=torch.float64)
    w_true = torch.randn(40, generator=generator, dtype=torch.float64)
    b = a @ w_true + 0.1 * torch.randn(200, generator=generator, dtype=torch.float64)
    w0 = torch.linalg.lstsq(a, b).solution

    def loss(w: torch.Tensor) -> torch.Tensor:
        return (a @ w - b).square().mean()

    book = uniform_codebook(w0, 4)

    def quantized_loss(w: torch.Tensor) -> float:
        return float(loss(torch.from_numpy(dequantize(quantize(w, book), book))))

    tuned = quantization_aware_finetune(w0, loss, book, steps=300, lr=1e-3)
    assert quantized_loss(tuned) < 0.9 * quantized_loss(w0)  # 6.18 → 5.02
