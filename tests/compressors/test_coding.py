"""Elias codes against known codewords; the arithmetic coder round-trips and is near-ideal."""

from __future__ import annotations

import time

import numpy as np
import pytest

from pacbound.compressors.coding import (
    BitReader,
    BitWriter,
    arithmetic_decode,
    arithmetic_encode,
    delta_length,
    gamma_length,
    ideal_adaptive_bits,
    read_delta,
    read_gamma,
    write_delta,
    write_gamma,
)
from pacbound.errors import InvalidInputError

# Elias (1975), Table 1 / the usual textbook tables.
GAMMA = {1: "1", 2: "010", 3: "011", 4: "00100", 9: "0001001", 17: "000010001"}
DELTA = {1: "1", 2: "0100", 3: "0101", 4: "01100", 10: "00100010", 17: "001010001"}


@pytest.mark.parametrize(("n", "code"), GAMMA.items())
def test_gamma_codewords(n: int, code: str) -> None:
    w = BitWriter()
    write_gamma(w, n)
    assert w.to_string() == code
    assert gamma_length(n) == len(code)


@pytest.mark.parametrize(("n", "code"), DELTA.items())
def test_delta_codewords(n: int, code: str) -> None:
    w = BitWriter()
    write_delta(w, n)
    assert w.to_string() == code
    assert delta_length(n) == len(code)


def test_elias_round_trip_back_to_back() -> None:
    numbers = [*range(1, 300), 2**40 + 5, 2**63 - 1]
    w = BitWriter()
    for n in numbers:
        write_gamma(w, n)
        write_delta(w, n)
    r = BitReader.from_bytes(w.to_bytes())
    assert [(read_gamma(r), read_delta(r)) for _ in numbers] == [(n, n) for n in numbers]
    with pytest.raises(ValueError, match="≥ 1"):
        write_gamma(w, 0)


def test_reading_past_the_end_is_refused() -> None:
    w = BitWriter()
    write_delta(w, 1000)
    with pytest.raises(InvalidInputError, match="truncated"):
        read_delta(BitReader(w.bits[:-1]))
    with pytest.raises(InvalidInputError, match="too long"):
        read_gamma(BitReader([0] * 100))


def _round_trip(symbols: np.ndarray, levels: int) -> list[int]:
    bits = arithmetic_encode(symbols, levels)
    np.testing.assert_array_equal(arithmetic_decode(BitReader(bits), len(symbols), levels), symbols)
    ideal = ideal_adaptive_bits(symbols, levels)
    assert ideal - 1e-9 <= len(bits) <= ideal + 2 + 1e-6
    return bits


@pytest.mark.parametrize("levels", [1, 2, 3, 17, 256])
@pytest.mark.parametrize("n", [0, 1, 2, 100, 3000])
def test_random_symbols_round_trip_near_the_ideal_length(levels: int, n: int) -> None:
    rng = np.random.default_rng(levels * 1000 + n)
    _round_trip(rng.integers(0, levels, n), levels)
    skewed = rng.choice(levels, size=n, p=rng.dirichlet(np.full(levels, 0.3)))
    _round_trip(skewed, levels)


def test_edge_cases() -> None:
    assert len(_round_trip(np.zeros(0, dtype=np.int64), 5)) == 2
    repeated = _round_trip(np.full(10_000, 3), 8)
    assert len(repeated) < 50  # KT: about (L−1)/2 · log₂ n bits
    _round_trip(np.arange(300), 300)
    _round_trip(np.repeat(np.arange(4), 500), 4)


def test_the_code_is_prefix_free_any_continuation_decodes() -> None:
    symbols = np.random.default_rng(5).integers(0, 6, 500)
    bits = arithmetic_encode(symbols, 6)
    for tail in ([1] * 70, [0, 1] * 35):
        decoded = arithmetic_decode(BitReader(bits + tail), len(symbols), 6)
        np.testing.assert_array_equal(decoded, symbols)


def test_out_of_range_symbols_are_refused() -> None:
    with pytest.raises(InvalidInputError, match=r"symbols must lie in \[0, 3\]"):
        arithmetic_encode(np.array([0, 4]), 4)


@pytest.mark.slow
def test_a_hundred_thousand_symbols_take_seconds() -> None:
    rng = np.random.default_rng(6)
    symbols = rng.choice(64, size=100_000, p=rng.dirichlet(np.ones(64)))
    start = time.perf_counter()
    _round_trip(symbols, 64)
    assert time.perf_counter() - start < 30.0
